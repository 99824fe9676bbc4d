// Locking a safetensors file in two streaming passes (formats/safetensors/safetensors_lock.h): pass
// 1 hashes every tensor and finds each group's selection rule, pass 2 writes the locked file and
// the key.
#include <fnmatch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "formats/safetensors/safetensors_lock.h"
#include "formats/safetensors/st_lock_internal.h"
#include "formats/safetensors/st_select.h"
#include "formats/safetensors/st_stream.h"
#include "util/checked.h"
#include "util/error.h"

namespace corelocker {
namespace st_detail {

DType key_dtype(const std::string& st) {
  if (st == "F32") return DType::kF32;
  if (st == "F64") return DType::kF64;
  if (st == "F16") return DType::kF16;
  if (st == "BF16") return DType::kBF16;
  throw Error("dtype " + st + " has no key dtype");
}

}  // namespace st_detail

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The units of the chunk in a ring slot that its group's rule picks (chunk-relative indices).
struct Picked {
  std::vector<uint64_t> units;
  size_t count = 0;
};

uint64_t units_at_ratio(uint64_t n, double ratio) {
  return std::min<uint64_t>(n, static_cast<uint64_t>(std::llround(ratio * static_cast<double>(n))));
}

}  // namespace

using st_detail::BackgroundHasher;
using st_detail::ChunkRing;
using st_detail::combine;
using st_detail::kChunk;
using st_detail::key_dtype;
using st_detail::kKeepSampled;
using st_detail::kRelease;
using st_detail::kRing;
using st_detail::KthKey;
using st_detail::kWindow;
using st_detail::layer_salt;
using st_detail::locked_header_text;
using st_detail::random_keys;
using st_detail::resolve_threads;
using st_detail::Rule;
using st_detail::RuleSink;
using st_detail::sample_threshold;
using st_detail::score_chunk;
using st_detail::tensor_digest;
using st_detail::TensorHasher;

std::vector<StLayer> st_layers(const StHeader& header, bool include_io) {
  std::vector<StLayer> layers;
  for (const auto& t : header.tensors) {
    if (!st_is_float(t.dtype) || !ends_with(t.name, "weight") || t.numel() == 0) continue;
    if (t.shape.size() == 4) {
      layers.push_back(
          {t.name, StLayerKind::kConv, t.shape[2] * t.shape[3], t.shape[0] * t.shape[1], true});
    } else if (t.shape.size() == 2) {
      layers.push_back({t.name, StLayerKind::kLinear, 1, t.numel(), true});
    }
  }
  if (include_io || layers.empty()) return layers;
  auto first_of = [&](StLayerKind k) {
    for (size_t i = 0; i < layers.size(); ++i)
      if (layers[i].kind == k) return static_cast<std::ptrdiff_t>(i);
    return std::ptrdiff_t{-1};
  };
  auto last_of = [&](StLayerKind k) {
    for (size_t i = layers.size(); i-- > 0;)
      if (layers[i].kind == k) return static_cast<std::ptrdiff_t>(i);
    return std::ptrdiff_t{-1};
  };
  std::ptrdiff_t first = first_of(StLayerKind::kConv);
  if (first < 0) first = first_of(StLayerKind::kLinear);
  std::ptrdiff_t last = last_of(StLayerKind::kLinear);
  if (last < 0) last = last_of(StLayerKind::kConv);
  layers[static_cast<size_t>(first)].eligible = false;
  layers[static_cast<size_t>(last)].eligible = false;
  return layers;
}

std::vector<std::pair<std::string, std::string>> st_lock_metadata(const StHeader& header) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [k, v] : header.metadata) {
    if (k.rfind(kStLockPrefix, 0) == 0) out.emplace_back(k, v);
  }
  return out;
}

StLockOutcome lock_safetensors(const std::string& in, const std::string& out,
                               const StLockOptions& options,
                               const std::function<void(const KeyFile&)>& before_commit) {
  if (!(options.ratio >= 0.0 && options.ratio <= 1.0)) {
    throw UsageError("ratio " + std::to_string(options.ratio) + " is outside [0, 1]");
  }
  if (options.criterion != Criterion::kL1 && options.criterion != Criterion::kRandom) {
    throw UsageError(std::string("safetensors lock: criterion ") + to_string(options.criterion) +
                     " (l1 or random)");
  }
  const bool random = options.criterion == Criterion::kRandom;
  const StFile file(in);
  const StHeader& h = file.header;
  const std::string what = "safetensors file '" + in + "'";
  if (h.metadata.count("corelocker.key_id") != 0) {
    throw UsageError(what + " is already locked (key id " + h.metadata.at("corelocker.key_id") +
                     "); unlock it first");
  }
  StLockOutcome outcome;
  std::vector<StLayer> layers = st_layers(h, options.include_io);
  std::vector<bool> kept(layers.size(), false);
  for (const auto& pattern : options.keep) {
    bool matched = false;
    for (size_t i = 0; i < layers.size(); ++i) {
      if (::fnmatch(pattern.c_str(), layers[i].tensor.c_str(), 0) != 0) continue;
      matched = true;
      kept[i] = true;
    }
    if (!matched) {
      throw UsageError("--keep '" + pattern + "' matches no layer of " + what + " (" +
                       std::to_string(layers.size()) +
                       " 4-D or 2-D float '*weight' tensors; `inspect` lists them)");
    }
  }
  std::map<std::string, size_t> layer_of;  // tensor name -> index into layers
  for (size_t i = 0; i < layers.size(); ++i) {
    if (kept[i]) {
      layers[i].eligible = false;
      outcome.kept.push_back(layers[i].tensor);
    } else if (layers[i].eligible) {
      layer_of[layers[i].tensor] = i;
    } else {
      outcome.excluded.push_back(layers[i].tensor);
    }
  }
  if (layer_of.empty()) {
    throw UsageError(what + ": no eligible layer (" + std::to_string(layers.size()) +
                     " 4-D or 2-D float '*weight' tensors" +
                     (options.include_io ? "" : ", first and last excluded") +
                     (options.keep.empty()
                          ? ""
                          : ", --keep left " + std::to_string(outcome.kept.size()) + " alone") +
                     ")");
  }

  // groups: one per layer (scope layer) or one per kind of unit (scope global)
  std::vector<int> group_of(layers.size(), -1);
  std::vector<uint64_t> group_units;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!layers[i].eligible) continue;
    if (options.scope == Scope::kLayer) {
      group_of[i] = static_cast<int>(group_units.size());
      group_units.push_back(0);
    } else {
      group_of[i] = layers[i].kind == StLayerKind::kConv ? 0 : 1;
      if (group_units.empty()) group_units.assign(2, 0);
    }
    group_units[static_cast<size_t>(group_of[i])] += layers[i].units;
    outcome.candidates += layers[i].units;
  }
  // Scope layer: one selector reused layer after layer; scope global: one per kind of unit.
  std::vector<KthKey> selectors(options.scope == Scope::kLayer ? 1 : 2);
  if (options.scope == Scope::kGlobal) {
    for (size_t g = 0; g < 2; ++g)
      selectors[g].reset(units_at_ratio(group_units[g], options.ratio));
  }
  // by layer, or by group; declared before the helper, whose jobs count their ties down
  std::vector<Rule> rules(options.scope == Scope::kLayer ? layers.size() : 2);
  auto rule_of = [&](size_t layer) -> Rule& {
    return rules[options.scope == Scope::kLayer ? layer : static_cast<size_t>(group_of[layer])];
  };
  // The hashers, the copy buffers and the map outlive the helper thread that may still read them
  // when an exception unwinds (its destructor waits for what is queued).
  const StFingerprintScheme scheme = kStFingerprintCurrent;
  std::deque<TensorHasher> hashers;
  ChunkRing ring;
  std::vector<Picked> picked(kRing);  // by ring slot (the helper's, then this thread's)
  BackgroundHasher background(resolve_threads(options.threads) >= 2);

  // pass 1: hash every tensor, score every unit of the eligible layers (hashing on the helper)
  std::map<std::string, Digest> digests;
  for (const auto& t : h.tensors) {
    if (st_is_float(t.dtype)) outcome.elements += t.numel();
    auto li = layer_of.find(t.name);
    if (li == layer_of.end()) {
      digests[t.name] = tensor_digest(file, t, scheme);
      continue;
    }
    const StLayer& layer = layers[li->second];
    KthKey& sel =
        selectors[options.scope == Scope::kLayer ? 0 : static_cast<size_t>(group_of[li->second])];
    const uint32_t lid = static_cast<uint32_t>(li->second);
    const DType dt = key_dtype(t.dtype);
    const uint64_t unit_bytes = layer.unit_size * dtype_size(dt);
    const uint64_t window_units = std::max<uint64_t>(1, kWindow / unit_bytes);
    const uint8_t* p = file.tensor_data(t);
    // Pass 1's keys of units [u0, u1) of this layer: l1 scores, or the seeded draw.
    const uint64_t salt = layer_salt(t.name);
    auto keys_of = [&](uint64_t u0, uint64_t u1) {
      if (random)
        random_keys(options.seed, salt, u0, u1, 0, lid, sel);
      else
        score_chunk(dt, p, u0, u1, layer.unit_size, lid, sel);
    };
    if (options.scope == Scope::kLayer) {
      sel.reset(units_at_ratio(layer.units, options.ratio));
      uint32_t guess = 0;
      if (!random && sample_threshold(dt, p, layer.units, layer.unit_size, sel.k(), guess)) {
        sel.prime(guess);
        // The sample touched pages all over the layer. A large layer gives them back (the windows
        // map them again); a smaller one keeps them for its windows, which give them back as they
        // pass (1 GiB of 64 MiB layers: 0.04 s less, at most one layer more resident).
        if (t.nbytes() > kKeepSampled) file.map.release(h.data_start + t.begin, t.nbytes());
      }
    }
    TensorHasher& hasher = hashers.emplace_back(scheme);
    for (uint64_t u0 = 0; u0 < layer.units; u0 += window_units) {
      const uint64_t u1 = std::min(layer.units, u0 + window_units);
      const uint64_t n = (u1 - u0) * unit_bytes;
      const uint64_t ticket = background.update(hasher, p + u0 * unit_bytes, n);
      keys_of(u0, u1);
      background.wait(ticket);
      file.map.release(h.data_start + t.begin + u0 * unit_bytes, n);
    }
    digests[t.name] = hasher.finish();
    if (options.scope == Scope::kLayer && !sel.finish(rule_of(li->second))) {
      // the guess was above the k-th key: select again without it
      sel.reset(sel.k());
      keys_of(0, layer.units);
      file.map.release(h.data_start + t.begin, t.nbytes());
      if (!sel.finish(rule_of(li->second)))
        throw Error("safetensors lock: selection of '" + t.name + "' failed");
    }
  }
  if (options.scope == Scope::kGlobal) {
    for (size_t g = 0; g < 2; ++g) selectors[g].finish(rules[g]);
  }

  // the key's header (the locked fingerprint follows after pass 2)
  KeyFile& key = outcome.key;
  key.header.original_fingerprint = combine(h, digests, scheme);
  random_bytes(key.header.key_id.data(), key.header.key_id.size());
  key.header.criterion = options.criterion;
  key.header.seed = random ? options.seed : 0;
  key.header.scope = options.scope;
  key.header.fill = Fill::kZero;
  key.header.include_io = options.include_io;
  key.header.ratio = options.ratio;
  key.header.ratio_after = 0.0;

  // pass 2: the locked file; the rules pick the units again as each chunk is copied
  const std::string header_text =
      locked_header_text(h, key, to_string(options.scope), options.ratio);
  StWriter writer(out, header_text, h.data_size);
  for (const auto& t : h.tensors) {
    const uint8_t* p = file.tensor_data(t);
    auto li = layer_of.find(t.name);
    if (li == layer_of.end() || rule_of(li->second).k == 0) {  // unchanged: its digest is pass 1's
      for (uint64_t at = 0; at < t.nbytes(); at += kRelease) {
        const uint64_t n = std::min(kRelease, t.nbytes() - at);
        writer.write(p + at, n);
        file.map.release(h.data_start + t.begin + at, n);
      }
      continue;
    }
    const StLayer& layer = layers[li->second];
    Rule& rule = rule_of(li->second);
    const DType dt = key_dtype(t.dtype);
    const uint64_t unit_bytes = layer.unit_size * dtype_size(dt);
    KeyEntry entry;
    entry.tensor = t.name;
    entry.dtype = dt;
    entry.shape = t.shape;
    entry.unit_size = layer.unit_size;
    if (options.scope == Scope::kLayer) {  // exactly k units
      entry.units.reserve(rule.k);
      entry.values.reserve(checked_mul(rule.k, unit_bytes, "key entry '" + t.name + "'"));
    }
    const uint64_t chunk_units = std::max<uint64_t>(1, kChunk / unit_bytes);
    TensorHasher& hasher = hashers.emplace_back(scheme);
    // The helper copies chunk i + 1 out of the map and picks its units (in chunk order, so ties
    // go to the earliest) while this thread moves the picked values of chunk i into the key,
    // zeroes them and writes the chunk; then the helper hashes chunk i.
    auto queue_pick = [&](uint64_t u0, size_t& slot) {
      const uint64_t units = std::min(layer.units, u0 + chunk_units) - u0;
      slot = ring.take(background, units * unit_bytes);
      picked[slot].units.resize(chunk_units);
      // by value, or declared before the helper: a job may still run while an exception unwinds
      const uint64_t ticket = background.call(
          [&ring, &picked, &rule, slot, units, dt, unit_bytes, u0, random, seed = options.seed,
           salt = layer_salt(t.name), unit_size = layer.unit_size, src = p + u0 * unit_bytes] {
            uint8_t* b = ring.data(slot);
            std::memcpy(b, src, units * unit_bytes);
            RuleSink sink{rule, picked[slot].units.data()};
            if (random)
              random_keys(seed, salt, u0, u0 + units, u0, 0, sink);
            else
              score_chunk(dt, b, 0, units, unit_size, 0, sink);
            picked[slot].count = sink.count;
          });
      ring.hand_over(slot, ticket);
      return ticket;
    };
    size_t next_slot = 0;
    uint64_t next_pick = queue_pick(0, next_slot);
    for (uint64_t u0 = 0; u0 < layer.units; u0 += chunk_units) {
      const uint64_t u1 = std::min(layer.units, u0 + chunk_units);
      const uint64_t n = (u1 - u0) * unit_bytes;
      const size_t slot = next_slot;
      uint8_t* b = ring.data(slot);
      background.wait(next_pick);
      file.map.release(h.data_start + t.begin + u0 * unit_bytes, n);
      if (u1 < layer.units) next_pick = queue_pick(u1, next_slot);
      const Picked& got = picked[slot];
      const size_t old_bytes = entry.values.size();
      entry.values.resize(old_bytes + got.count * unit_bytes);
      uint8_t* v = entry.values.data() + old_bytes;
      for (size_t i = 0; i < got.count; ++i, v += unit_bytes) {
        entry.units.push_back(u0 + got.units[i]);
        uint8_t* up = b + got.units[i] * unit_bytes;
        if (unit_bytes == 4) {  // single F32 weights: plain moves instead of calls
          std::memcpy(v, up, 4);
          std::memset(up, 0, 4);
        } else {
          std::memcpy(v, up, unit_bytes);
          std::memset(up, 0, unit_bytes);  // +0.0 in every float dtype
        }
      }
      ring.hand_over(slot, background.update(hasher, b, n));
      writer.write(b, n);
    }
    background.wait_all();
    digests[t.name] = hasher.finish();
    if (entry.units.empty()) continue;  // a layer of a global group that gave up nothing
    outcome.units += entry.units.size();
    outcome.values += entry.units.size() * layer.unit_size;
    key.entries.push_back(std::move(entry));
  }
  key.header.locked_fingerprint = combine(h, digests, scheme);
  key.header.units = outcome.units;
  // The locked file's flush to disk (0.3 s for 1 GiB here) runs beside the key's writing.
  std::exception_ptr sync_error;
  std::thread syncer;
  if (resolve_threads(options.threads) >= 2) {
    syncer = std::thread([&] {
      try {
        writer.sync();
      } catch (...) {
        sync_error = std::current_exception();
      }
    });
  }
  try {
    before_commit(key);
  } catch (...) {
    if (syncer.joinable()) syncer.join();
    throw;
  }
  if (syncer.joinable()) syncer.join();
  if (sync_error) std::rethrow_exception(sync_error);
  writer.commit();
  return outcome;
}

}  // namespace corelocker
