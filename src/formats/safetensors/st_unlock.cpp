// Unlocking a locked safetensors file in one streaming pass
// (formats/safetensors/safetensors_lock.h).
#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "formats/safetensors/safetensors_lock.h"
#include "formats/safetensors/st_lock_internal.h"
#include "formats/safetensors/st_stream.h"
#include "util/error.h"

namespace corelocker {

using st_detail::BackgroundHasher;
using st_detail::ChunkRing;
using st_detail::combine;
using st_detail::kChunk;
using st_detail::key_dtype;
using st_detail::kWindow;
using st_detail::locked_header_text;
using st_detail::original_header_text;
using st_detail::resolve_threads;
using st_detail::TensorHasher;

namespace {

// One entry a tensor: a key's own, or the entries of several tier keys of one tensor (disjoint
// units) merged into `merged`.
std::map<std::string, const KeyEntry*> entries_by_tensor(const std::vector<const KeyFile*>& keys,
                                                         std::deque<KeyEntry>& merged) {
  std::map<std::string, std::vector<const KeyEntry*>> all;
  for (const KeyFile* key : keys)
    for (const auto& e : key->entries) all[e.tensor].push_back(&e);
  std::map<std::string, const KeyEntry*> out;
  for (const auto& [tensor, list] : all) {
    if (list.size() == 1) {
      out[tensor] = list.front();
      continue;
    }
    const KeyEntry& first = *list.front();
    struct At {
      uint64_t unit;
      const KeyEntry* entry;
      size_t index;
    };
    std::vector<At> units;
    for (const KeyEntry* e : list) {
      if (e->dtype != first.dtype || e->shape != first.shape || e->unit_size != first.unit_size) {
        throw MismatchError("tier keys' entries of '" + tensor +
                            "' differ in dtype, shape or unit size");
      }
      size_t i = 0;
      for (const uint64_t u : e->units) units.push_back({u, e, i++});
    }
    std::sort(units.begin(), units.end(), [](const At& a, const At& b) { return a.unit < b.unit; });
    KeyEntry& m = merged.emplace_back();
    m.tensor = tensor;
    m.dtype = first.dtype;
    m.shape = first.shape;
    m.unit_size = first.unit_size;
    const uint64_t unit_bytes = first.unit_size * dtype_size(first.dtype);
    m.values.resize(units.size() * unit_bytes);
    for (size_t i = 0; i < units.size(); ++i) {
      if (i > 0 && units[i].unit == units[i - 1].unit) {
        throw MismatchError("tier keys both hold unit " + std::to_string(units[i].unit) + " of '" +
                            tensor + "'");
      }
      m.units.push_back(units[i].unit);
      std::memcpy(m.values.data() + i * unit_bytes,
                  units[i].entry->values.data() + units[i].index * unit_bytes, unit_bytes);
    }
    out[tensor] = &m;
  }
  return out;
}

StUnlockOutcome unlock_with(const std::string& in, const std::string& out,
                            const std::vector<const KeyFile*>& keys, unsigned threads) {
  if (keys.empty()) throw UsageError("unlock: no key given");
  const StFile file(in);
  const StHeader& h = file.header;
  const std::string what = "safetensors file '" + in + "'";
  // cheap checks first: is this the file the keys were made for, and do they follow each other?
  auto kid = h.metadata.find("corelocker.key_id");
  if (kid == h.metadata.end())
    throw UsageError(what + " is not locked (no corelocker.key_id in its metadata)");
  for (size_t i = 0; i < keys.size(); ++i) {
    const KeyHeader& kh = keys[i]->header;
    const std::string key_id = to_hex(kh.key_id.data(), kh.key_id.size());
    if (kid->second != key_id) {
      throw MismatchError("key belongs to another model: key id " + key_id + ", " + what +
                          " was locked with key id " + kid->second);
    }
    if (i > 0 && kh.locked_fingerprint != keys[i - 1]->header.original_fingerprint) {
      throw MismatchError("tier key " + std::to_string(kh.tier) + " of " +
                          std::to_string(kh.tiers) + " given after tier key " +
                          std::to_string(keys[i - 1]->header.tier) +
                          ": it does not apply to what that key restores (give tier keys in "
                          "order, tier 1 first)");
    }
  }
  const KeyHeader& last = keys.back()->header;
  const std::string orig_text = original_header_text(h, what);
  std::string framed(8, '\0');
  const uint64_t orig_size = orig_text.size();
  std::memcpy(&framed[0], &orig_size, 8);
  framed += orig_text;
  const StHeader orig =
      parse_st_header(reinterpret_cast<const uint8_t*>(framed.data()), framed.size(),
                      framed.size() + h.data_size, what + " (original header)");
  std::map<std::string, const StTensor*> by_name;
  for (const auto& t : h.tensors) by_name[t.name] = &t;
  if (orig.tensors.size() != h.tensors.size())
    throw FormatError(what + ": original header lists other tensors");
  for (const auto& t : orig.tensors) {
    auto it = by_name.find(t.name);
    if (it == by_name.end() || it->second->dtype != t.dtype || it->second->shape != t.shape ||
        it->second->begin != t.begin || it->second->end != t.end) {
      throw FormatError(what + ": original header describes tensor '" + t.name + "' differently");
    }
  }
  std::deque<KeyEntry> merged;
  const std::map<std::string, const KeyEntry*> entries = entries_by_tensor(keys, merged);
  for (const auto& [name, e] : entries) {
    auto it = by_name.find(name);
    if (it == by_name.end())
      throw MismatchError("key entry '" + name + "': " + what + " has no such tensor");
    const StTensor& t = *it->second;
    if (!st_is_float(t.dtype) || key_dtype(t.dtype) != e->dtype || t.shape != e->shape) {
      throw MismatchError("key entry '" + name + "': " + to_string(e->dtype) +
                          " tensor of another shape or dtype than " + what + "'s " + t.dtype);
    }
  }
  // The header to write: the original, or with tiers left the lock's entries at their ratio.
  std::string out_text = orig_text;
  StUnlockOutcome outcome;
  if (last.ratio_after > 0.0) {
    KeyHeader record = last;
    const auto fp = h.metadata.find("corelocker.original_fingerprint");
    const auto scope = h.metadata.find("corelocker.scope");
    if (fp == h.metadata.end() || scope == h.metadata.end() ||
        !from_hex(fp->second, record.original_fingerprint.data(),
                  record.original_fingerprint.size())) {
      throw FormatError(what +
                        ": lock metadata corelocker.original_fingerprint or "
                        "corelocker.scope is missing or malformed");
    }
    out_text = locked_header_text(orig, record, scope->second, last.ratio_after);
    outcome.ratio_left = last.ratio_after;
  }

  // one pass: hash the locked bytes, write the restored bytes, hash those
  std::map<std::string, Digest> locked, restored;
  StWriter writer(out, out_text, h.data_size);
  const StFingerprintScheme scheme = st_fingerprint_scheme(h);  // the lock's, for both fingerprints
  std::deque<TensorHasher> hashers;  // outlive the helper thread (see lock_safetensors)
  ChunkRing ring;
  BackgroundHasher background(resolve_threads(threads) >= 2);
  for (const auto& t : h.tensors) {
    const uint8_t* p = file.tensor_data(t);
    auto ei = entries.find(t.name);
    if (ei == entries.end()) {  // unchanged: hashed on the helper while written here
      TensorHasher& hasher = hashers.emplace_back(scheme);
      for (uint64_t at = 0; at < t.nbytes(); at += kWindow) {
        const uint64_t n = std::min(kWindow, t.nbytes() - at);
        const uint64_t ticket = background.update(hasher, p + at, n);
        writer.write(p + at, n);
        background.wait(ticket);
        file.map.release(h.data_start + t.begin + at, n);
      }
      locked[t.name] = restored[t.name] = hasher.finish();
      continue;
    }
    const KeyEntry& e = *ei->second;
    const uint64_t unit_bytes = e.unit_size * dtype_size(e.dtype);
    const uint64_t units = t.nbytes() / unit_bytes;
    // both the locked and the restored bytes are hashed on the helper; the restored ones are made
    // and written here
    const uint64_t chunk_units = std::max<uint64_t>(1, kChunk / unit_bytes);
    TensorHasher& hl = hashers.emplace_back(scheme);
    TensorHasher& hr = hashers.emplace_back(scheme);
    size_t next = 0;
    auto unit = e.units.begin();
    const auto units_end = e.units.end();
    for (uint64_t u0 = 0; u0 < units; u0 += chunk_units) {
      const uint64_t u1 = std::min(units, u0 + chunk_units);
      const uint64_t n = (u1 - u0) * unit_bytes;
      const uint8_t* w = p + u0 * unit_bytes;
      const size_t slot = ring.take(background, n);
      uint8_t* b = ring.data(slot);
      const uint64_t locked_hashed = background.update(hl, w, n);
      std::memcpy(b, w, n);
      for (; unit != units_end && *unit < u1; ++unit, ++next) {
        uint8_t* up = b + (*unit - u0) * unit_bytes;
        if (unit_bytes == 4)
          std::memcpy(up, e.values.data() + next * 4, 4);  // a move, not a call
        else
          std::memcpy(up, e.values.data() + next * unit_bytes, unit_bytes);
      }
      ring.hand_over(slot, background.update(hr, b, n));
      writer.write(b, n);
      background.wait(locked_hashed);
      file.map.release(h.data_start + t.begin + u0 * unit_bytes, n);
    }
    background.wait_all();
    locked[t.name] = hl.finish();
    restored[t.name] = hr.finish();
    outcome.values += e.units.size() * e.unit_size;
  }
  const Digest locked_fp = combine(h, locked, scheme);
  const KeyHeader& first = keys.front()->header;
  if (locked_fp != first.locked_fingerprint) {
    throw MismatchError(
        "key does not apply to " + what + ": its fingerprint is " +
        to_hex(locked_fp).substr(0, 16) + ", the key was made for " +
        to_hex(first.locked_fingerprint).substr(0, 16) +
        " (the locked file was modified, or the key belongs to another lock" +
        (first.tiers > 1 ? ", or tier " + std::to_string(first.tier) + " is not the next to apply"
                         : std::string()) +
        ")");
  }
  outcome.fingerprint = combine(orig, restored, scheme);
  if (outcome.fingerprint != last.original_fingerprint) {
    throw MismatchError("restoring " + what + " gives fingerprint " +
                        to_hex(outcome.fingerprint).substr(0, 16) + ", the key expects " +
                        to_hex(last.original_fingerprint).substr(0, 16) + "; nothing written");
  }
  writer.commit();
  return outcome;
}

}  // namespace

StUnlockOutcome unlock_safetensors(const std::string& in, const std::string& out,
                                   const std::vector<KeyFile>& keys, unsigned threads) {
  std::vector<const KeyFile*> list;
  for (const auto& k : keys) list.push_back(&k);
  return unlock_with(in, out, list, threads);
}

StUnlockOutcome unlock_safetensors(const std::string& in, const std::string& out,
                                   const KeyFile& key, unsigned threads) {
  return unlock_with(in, out, {&key}, threads);
}

}  // namespace corelocker
