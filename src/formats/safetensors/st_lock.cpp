// Locking a safetensors file in two streaming passes (formats/safetensors/safetensors_lock.h): pass
// 1 hashes every tensor and finds each group's selection rule, pass 2 writes the locked file and
// the keys (one, or one a tier with the states between them fingerprinted on the way).
#include <algorithm>
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
#include "locking/tiers.h"
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

// The units of the chunk in a ring slot that pass 2 takes (chunk-relative indices), their keys
// (tiers: to find each unit's tier) and each one's tier (the index of the smallest ratio that
// takes it).
struct Picked {
  std::vector<uint64_t> units;
  std::vector<uint32_t> keys;
  std::vector<uint16_t> tier;
  size_t count = 0;
};

// Picks the units of a rule tensor's chunk [u0, u0 + units) whose bytes start at b (chunk-relative
// indices, in chunk order so that ties go to the earliest) by the largest ratio's rule, and gives
// each its tier: the first of the smaller ratios' rules that also takes it (each counts its ties
// down in file order on the units the largest took, which hold every unit a smaller one takes).
// pk's arrays hold at least `units` entries.
void pick_by_rule(st_detail::Rule& rule, const std::vector<st_detail::Rule*>& smaller, bool random,
                  uint64_t seed, uint64_t salt, DType dt, const uint8_t* b, uint64_t u0,
                  uint64_t units, uint64_t unit_size, bool tiered, Picked& pk) {
  st_detail::RuleSink sink{rule, pk.units.data(), tiered ? pk.keys.data() : nullptr};
  if (random)
    st_detail::random_keys(seed, salt, u0, u0 + units, u0, 0, sink);
  else
    st_detail::score_chunk(dt, b, 0, units, unit_size, 0, sink);
  pk.count = sink.count;
  for (size_t i = 0; i < pk.count && tiered; ++i) {
    pk.tier[i] = static_cast<uint16_t>(smaller.size());
    for (size_t r = 0; r < smaller.size(); ++r) {
      if (st_detail::RuleSink::takes(*smaller[r], pk.keys[i]) && pk.tier[i] == smaller.size())
        pk.tier[i] = static_cast<uint16_t>(r);
    }
  }
}

// The ratios of a lock, ascending: its tiers, or its one ratio. Throws UsageError.
std::vector<double> lock_ratios(const StLockOptions& options) {
  if (options.tiers.empty()) {
    if (!(options.ratio >= 0.0 && options.ratio <= 1.0))
      throw UsageError("ratio " + std::to_string(options.ratio) + " is outside [0, 1]");
    return {options.ratio};
  }
  return sorted_tier_ratios(options.tiers);
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
using st_detail::ListedUnits;
using st_detail::locked_header_text;
using st_detail::random_keys;
using st_detail::resolve_threads;
using st_detail::Rule;
using st_detail::sample_threshold;
using st_detail::score_chunk;
using st_detail::tensor_digest;
using st_detail::TensorHasher;
using st_detail::units_at_ratio;

StLockOutcome lock_safetensors(const std::string& in, const std::string& out,
                               const StLockOptions& options,
                               const std::function<void(const KeyFile&)>& before_commit) {
  const std::vector<double> ratios = lock_ratios(options);
  const size_t n_ratios = ratios.size();
  const bool tiered = !options.tiers.empty();
  const bool random = options.criterion == Criterion::kRandom;
  const StFile file(in);
  const StHeader& h = file.header;
  const std::string what = "safetensors file '" + in + "'";
  if (h.metadata.count("corelocker.key_id") != 0) {
    throw UsageError(what + " is already locked (key id " + h.metadata.at("corelocker.key_id") +
                     "); unlock it first");
  }
  const bool decoys = options.fill != Fill::kZero;
  if (decoys && !options.decoys) {
    throw UsageError("--fill " + std::string(to_string(options.fill)) + " of " + what +
                     ": decoys are drawn with LibTorch, which this binary lacks (corelocker-torch "
                     "has it)");
  }
  st_detail::LockPlan plan = st_detail::plan_lock(file, options, ratios, what);
  if (tiered) check_tier_units(ratios, plan.units);
  const std::vector<StLayer>& layers = plan.layers;
  const auto& layer_of = plan.layer_of;
  StLockOutcome outcome;
  outcome.excluded = plan.excluded;
  outcome.kept = plan.kept;
  outcome.candidates = plan.candidates;
  outcome.units = plan.units.back();

  // Scope layer: one selector reused layer after layer; scope global: one per kind of unit. Each
  // selects the largest ratio's units; the smaller ratios' rules come from the same keys.
  const bool by_layer = options.scope == Scope::kLayer;
  std::vector<KthKey> selectors(by_layer ? 1 : 2);
  if (!by_layer && !layer_of.empty()) {
    for (size_t g = 0; g < 2; ++g)
      selectors[g].reset(units_at_ratio(plan.group_units[g], ratios.back()));
  }
  // [ratio][layer, or group]; declared before the helper, whose jobs count their ties down
  std::vector<std::vector<Rule>> rules(n_ratios, std::vector<Rule>(by_layer ? layers.size() : 2));
  Rule no_rule;  // the rule of a tensor whose units are listed
  auto rule_of = [&](size_t layer, size_t r) -> Rule& {
    return rules[r][by_layer ? layer : static_cast<size_t>(plan.group_of[layer])];
  };
  // Sets the rules of a selection of n units (a layer, or a group) at every ratio.
  auto finish = [&](KthKey& sel, uint64_t n, size_t at) {
    std::vector<uint64_t> ks;
    for (const double r : ratios) ks.push_back(units_at_ratio(n, r));
    std::vector<Rule> got;
    if (!sel.finish(ks, got)) return false;
    for (size_t r = 0; r < n_ratios; ++r) rules[r][at] = got[r];
    return true;
  };
  // The hashers, the copy buffers and the map outlive the helper thread that may still read them
  // when an exception unwinds (its destructor waits for what is queued).
  const StFingerprintScheme scheme = kStFingerprintCurrent;
  std::deque<TensorHasher> hashers;
  ChunkRing ring;
  std::vector<Picked> picked(kRing);  // by ring slot (the helper's, then this thread's)
  BackgroundHasher background(resolve_threads(options.threads) >= 2);

  // pass 1: hash every tensor, score every unit of the eligible layers (hashing on the helper)
  std::map<std::string, Digest> original;
  for (const auto& t : h.tensors) {
    if (st_is_float(t.dtype)) outcome.elements += t.numel();
    auto li = layer_of.find(t.name);
    if (li == layer_of.end()) {
      original[t.name] = tensor_digest(file, t, scheme);
      continue;
    }
    const StLayer& layer = layers[li->second];
    KthKey& sel = selectors[by_layer ? 0 : static_cast<size_t>(plan.group_of[li->second])];
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
    if (by_layer) {
      sel.reset(units_at_ratio(layer.units, ratios.back()));
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
    original[t.name] = hasher.finish();
    if (by_layer && !finish(sel, layer.units, li->second)) {
      // the guess was above the k-th key: select again without it
      sel.reset(sel.k());
      keys_of(0, layer.units);
      file.map.release(h.data_start + t.begin, t.nbytes());
      if (!finish(sel, layer.units, li->second))
        throw Error("safetensors lock: selection of '" + t.name + "' failed");
    }
  }
  if (!by_layer && !layer_of.empty()) {
    for (size_t g = 0; g < 2; ++g) finish(selectors[g], plan.group_units[g], g);
  }

  // A decoy fill lists the rules' units first (one more read of the layers that give some up) and
  // draws the decoys of every listed unit before pass 2, which then takes the lists and writes the
  // decoys where it would write zeros.
  std::map<std::string, std::vector<uint8_t>> decoy_values;  // per tensor, unit after unit
  if (decoys) {
    for (const auto& t : h.tensors) {
      auto li = layer_of.find(t.name);
      if (li == layer_of.end() || plan.listed.count(t.name) != 0) continue;
      Rule& rule = rule_of(li->second, n_ratios - 1);
      if (rule.k == 0) continue;
      std::vector<Rule*> smaller;
      for (size_t r = 0; r + 1 < n_ratios; ++r) smaller.push_back(&rule_of(li->second, r));
      const uint64_t unit_size = layers[li->second].unit_size;
      ListedUnits& list = plan.listed[t.name];
      list.unit_size = unit_size;
      const DType dt = key_dtype(t.dtype);
      const uint64_t unit_bytes = unit_size * dtype_size(dt);
      const uint64_t chunk_units = std::max<uint64_t>(1, kChunk / unit_bytes);
      const uint64_t layer_units = t.numel() / unit_size;
      Picked pk;
      pk.units.resize(chunk_units);
      pk.keys.resize(tiered ? chunk_units : 0);
      pk.tier.resize(tiered ? chunk_units : 0);
      const uint8_t* p = file.tensor_data(t);
      for (uint64_t u0 = 0; u0 < layer_units; u0 += chunk_units) {
        const uint64_t units = std::min(layer_units, u0 + chunk_units) - u0;
        pick_by_rule(rule, smaller, random, options.seed, layer_salt(t.name), dt,
                     p + u0 * unit_bytes, u0, units, unit_size, tiered, pk);
        for (size_t i = 0; i < pk.count; ++i) {
          list.units.push_back(u0 + pk.units[i]);
          list.tier.push_back(tiered ? pk.tier[i] : 0);
        }
        file.map.release(h.data_start + t.begin + u0 * unit_bytes, units * unit_bytes);
      }
    }
    // The tensors whose units are taken, and every conv weight (a donor of kernel shapes).
    std::vector<StDecoyTensor> request;
    for (const auto& t : h.tensors) {
      auto lu = plan.listed.find(t.name);
      if (lu == plan.listed.end() && !(st_is_float(t.dtype) && t.shape.size() == 4)) continue;
      StDecoyTensor d;
      d.name = t.name;
      d.dtype = t.dtype;
      d.shape = t.shape;
      d.data = file.tensor_data(t);
      if (lu != plan.listed.end()) {
        d.unit_size = lu->second.unit_size;
        d.units = lu->second.units;
        if (tiered) d.tier = lu->second.tier;
      }
      request.push_back(std::move(d));
    }
    uint64_t seed = 0;
    if (options.decoy_seed) {
      seed = *options.decoy_seed;
    } else {
      random_bytes(&seed, sizeof seed);  // decoys must not be predictable
    }
    std::vector<std::vector<uint8_t>> drawn = options.decoys(request, options.fill, n_ratios, seed);
    if (drawn.size() != request.size())
      throw Error("safetensors lock: the decoy fill returned a wrong number of tensors");
    for (size_t i = 0; i < request.size(); ++i) {
      const StDecoyTensor& d = request[i];
      const uint64_t want = d.units.size() * d.unit_size * dtype_size(key_dtype(d.dtype));
      if (drawn[i].size() != want) {
        throw Error("safetensors lock: the decoys of '" + d.name + "' have " +
                    std::to_string(drawn[i].size()) + " bytes, not " + std::to_string(want));
      }
      if (!d.units.empty()) decoy_values[d.name] = std::move(drawn[i]);
    }
    for (const auto& t : h.tensors) file.map.release(h.data_start + t.begin, t.nbytes());
  }

  // The keys' headers (the fingerprints of the states follow after pass 2): key r restores the
  // state at ratio r - 1 (the original for r = 0) from the state at ratio r.
  std::vector<KeyFile> keys(n_ratios);
  KeyHeader record;  // what the locked header records
  record.original_fingerprint = combine(h, original, scheme);
  random_bytes(record.key_id.data(), record.key_id.size());
  record.criterion = options.criterion;
  record.seed = random ? options.seed : 0;
  record.random_bn_units = random && options.bn_units;
  record.scope = options.scope;
  record.fill = options.fill;
  record.include_io = options.include_io;
  for (size_t r = 0; r < n_ratios; ++r) {
    KeyHeader& kh = keys[r].header;
    kh = record;
    kh.ratio = ratios[r];
    kh.ratio_after = r == 0 ? 0.0 : ratios[r - 1];
    kh.units = plan.units[r] - (r == 0 ? 0 : plan.units[r - 1]);
    kh.tier = static_cast<uint16_t>(n_ratios - r);
    kh.tiers = static_cast<uint16_t>(n_ratios);
  }

  // pass 2: the locked file; the rules pick the units again as each chunk is copied
  StWriter writer(out, locked_header_text(h, record, to_string(options.scope), ratios.back()),
                  h.data_size);
  std::vector<std::map<std::string, Digest>> changed(n_ratios);  // per state: tensors it changed
  for (const auto& t : h.tensors) {
    const uint8_t* p = file.tensor_data(t);
    auto li = layer_of.find(t.name);
    auto lu = plan.listed.find(t.name);
    const ListedUnits* list = lu == plan.listed.end() ? nullptr : &lu->second;
    if (list == nullptr && (li == layer_of.end() || rule_of(li->second, n_ratios - 1).k == 0)) {
      // unchanged: its digest is pass 1's
      for (uint64_t at = 0; at < t.nbytes(); at += kRelease) {
        const uint64_t n = std::min(kRelease, t.nbytes() - at);
        writer.write(p + at, n);
        file.map.release(h.data_start + t.begin + at, n);
      }
      continue;
    }
    const uint64_t unit_size = list != nullptr ? list->unit_size : layers[li->second].unit_size;
    const uint64_t layer_units = t.numel() / unit_size;
    Rule& rule = list != nullptr ? no_rule : rule_of(li->second, n_ratios - 1);
    std::vector<Rule*> smaller;  // the smaller ratios' rules of this tensor
    for (size_t r = 0; r + 1 < n_ratios && list == nullptr; ++r)
      smaller.push_back(&rule_of(li->second, r));
    const DType dt = key_dtype(t.dtype);
    const uint64_t unit_bytes = unit_size * dtype_size(dt);
    std::vector<KeyEntry> entries(n_ratios);
    for (auto& entry : entries) {
      entry.tensor = t.name;
      entry.dtype = dt;
      entry.shape = t.shape;
      entry.unit_size = unit_size;
    }
    for (size_t r = 0; r < n_ratios; ++r) {  // each key's share, where it is known
      uint64_t exact = 0;                    // a global rule's share of a layer is not
      if (list != nullptr) {
        exact = tiered ? static_cast<uint64_t>(std::count(list->tier.begin(), list->tier.end(), r))
                       : list->units.size();
      } else if (by_layer) {
        exact = rule_of(li->second, r).k - (r == 0 ? 0 : rule_of(li->second, r - 1).k);
      }
      if (exact > 0) {
        entries[r].units.reserve(exact);
        entries[r].values.reserve(checked_mul(exact, unit_bytes, "key entry '" + t.name + "'"));
      }
    }
    const uint64_t chunk_units = std::max<uint64_t>(1, kChunk / unit_bytes);
    TensorHasher& hasher = hashers.emplace_back(scheme);
    std::deque<TensorHasher> state_hashers;  // of the states at the smaller ratios
    for (size_t r = 0; r + 1 < n_ratios; ++r) state_hashers.emplace_back(scheme);
    // The helper copies chunk i + 1 out of the map and picks its units (in chunk order, so ties
    // go to the earliest) while this thread moves the picked values of chunk i into the keys,
    // zeroes them and writes the chunk; then the helper hashes chunk i.
    auto queue_pick = [&](uint64_t u0, size_t& slot) {
      const uint64_t units = std::min(layer_units, u0 + chunk_units) - u0;
      slot = ring.take(background, units * unit_bytes);
      Picked& pk = picked[slot];
      pk.units.resize(chunk_units);
      if (tiered) {
        pk.keys.resize(chunk_units);
        pk.tier.resize(chunk_units);
      }
      // by value, or declared before the helper: a job may still run while an exception unwinds
      const uint64_t ticket = background.call([&ring, &pk, &rule, smaller, list, slot, units, dt,
                                               unit_bytes, u0, random, tiered, seed = options.seed,
                                               salt = layer_salt(t.name), unit_size,
                                               src = p + u0 * unit_bytes] {
        uint8_t* b = ring.data(slot);
        std::memcpy(b, src, units * unit_bytes);
        pk.count = 0;
        if (list != nullptr) {  // the listed units in [u0, u0 + units)
          const auto& l = list->units;
          for (auto it = std::lower_bound(l.begin(), l.end(), u0);
               it != l.end() && *it < u0 + units; ++it) {
            if (tiered) pk.tier[pk.count] = list->tier[static_cast<size_t>(it - l.begin())];
            pk.units[pk.count++] = *it - u0;
          }
          return;
        }
        pick_by_rule(rule, smaller, random, seed, salt, dt, b, u0, units, unit_size, tiered, pk);
      });
      ring.hand_over(slot, ticket);
      return ticket;
    };
    auto dv = decoy_values.find(t.name);
    const std::vector<uint8_t>* decoy = dv == decoy_values.end() ? nullptr : &dv->second;
    // Moves unit u of chunk b into the entry: its values into the key, zeros (or its decoy) into
    // the chunk.
    auto take = [&](KeyEntry& entry, uint8_t* b, uint64_t u, uint64_t u0) {
      const size_t old_bytes = entry.values.size();
      entry.values.resize(old_bytes + unit_bytes);
      uint8_t* v = entry.values.data() + old_bytes;
      entry.units.push_back(u0 + u);
      uint8_t* up = b + u * unit_bytes;
      if (decoy != nullptr) {  // the unit's place in the list is its place among the decoys
        const auto at = static_cast<uint64_t>(
            std::lower_bound(list->units.begin(), list->units.end(), u0 + u) - list->units.begin());
        std::memcpy(v, up, unit_bytes);
        std::memcpy(up, decoy->data() + at * unit_bytes, unit_bytes);
      } else if (unit_bytes == 4) {  // single F32 weights: plain moves instead of calls
        std::memcpy(v, up, 4);
        std::memset(up, 0, 4);
      } else {
        std::memcpy(v, up, unit_bytes);
        std::memset(up, 0, unit_bytes);  // +0.0 in every float dtype
      }
    };
    size_t next_slot = 0;
    uint64_t next_pick = queue_pick(0, next_slot);
    for (uint64_t u0 = 0; u0 < layer_units; u0 += chunk_units) {
      const uint64_t u1 = std::min(layer_units, u0 + chunk_units);
      const uint64_t n = (u1 - u0) * unit_bytes;
      const size_t slot = next_slot;
      uint8_t* b = ring.data(slot);
      background.wait(next_pick);
      file.map.release(h.data_start + t.begin + u0 * unit_bytes, n);
      if (u1 < layer_units) next_pick = queue_pick(u1, next_slot);
      const Picked& got = picked[slot];
      if (!tiered) {
        for (size_t i = 0; i < got.count; ++i) take(entries[0], b, got.units[i], u0);
      } else {
        // State by state from the smallest ratio: take that tier's units, hash the state.
        for (size_t r = 0; r < n_ratios; ++r) {
          for (size_t i = 0; i < got.count; ++i)
            if (got.tier[i] == r) take(entries[r], b, got.units[i], u0);
          if (r + 1 < n_ratios) state_hashers[r].update(b, n);
        }
      }
      ring.hand_over(slot, background.update(hasher, b, n));
      writer.write(b, n);
    }
    background.wait_all();
    changed[n_ratios - 1][t.name] = hasher.finish();
    for (size_t r = 0; r + 1 < n_ratios; ++r) changed[r][t.name] = state_hashers[r].finish();
    for (size_t r = 0; r < n_ratios; ++r) {
      if (entries[r].units.empty()) continue;  // a layer of a global group that gave up nothing
      outcome.values += entries[r].units.size() * unit_size;
      keys[r].entries.push_back(std::move(entries[r]));
    }
  }
  // The fingerprint of each state: the original's digests, with those of the tensors it changed.
  for (size_t r = 0; r < n_ratios; ++r) {
    std::map<std::string, Digest> state = original;
    for (const auto& [name, d] : changed[r]) state[name] = d;
    keys[r].header.locked_fingerprint = combine(h, state, scheme);
    if (r > 0) keys[r].header.original_fingerprint = keys[r - 1].header.locked_fingerprint;
  }
  // The locked file's flush to disk (0.3 s for 1 GiB here) runs beside the keys' writing.
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
  std::reverse(keys.begin(), keys.end());  // in order of application: tier 1 first
  try {
    for (const auto& key : keys) before_commit(key);
  } catch (...) {
    if (syncer.joinable()) syncer.join();
    throw;
  }
  if (syncer.joinable()) syncer.join();
  if (sync_error) std::rethrow_exception(sync_error);
  writer.commit();
  if (tiered)
    outcome.tier_keys = std::move(keys);
  else
    outcome.key = std::move(keys.front());
  return outcome;
}

}  // namespace corelocker
