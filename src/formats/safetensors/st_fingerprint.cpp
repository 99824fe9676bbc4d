// Fingerprints of safetensors files (docs/key-format.md): one digest per tensor, combined over
// the tensors sorted by name and the metadata without the lock's entries.
#include <algorithm>
#include <atomic>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "formats/safetensors/safetensors_lock.h"
#include "formats/safetensors/st_lock_internal.h"
#include "formats/safetensors/st_stream.h"
#include "util/error.h"

namespace corelocker {
namespace st_detail {

// The digest of a tensor's bytes, giving the pages back as it goes.
Digest tensor_digest(const StFile& f, const StTensor& t, StFingerprintScheme scheme) {
  TensorHasher h(scheme);
  const uint8_t* p = f.tensor_data(t);
  for (uint64_t at = 0; at < t.nbytes(); at += kRelease) {
    const uint64_t n = std::min(kRelease, t.nbytes() - at);
    h.update(p + at, n);
    f.map.release(f.header.data_start + t.begin + at, n);
  }
  return h.finish();
}

Digest combine(const StHeader& header, const std::map<std::string, Digest>& digests,
               StFingerprintScheme scheme) {
  std::vector<const StTensor*> order;
  for (const auto& t : header.tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const StTensor* a, const StTensor* b) { return a->name < b->name; });
  Hasher h;
  h.update_str(scheme == StFingerprintScheme::kV1 ? "corelocker-safetensors-fingerprint-v1"
                                                  : "corelocker-safetensors-fingerprint-v2");
  h.update_u64(order.size());
  for (const StTensor* t : order) {
    h.update_str(t->name);
    h.update_str(t->dtype);
    h.update_u64(t->shape.size());
    for (auto d : t->shape) h.update_u64(d);
    h.update_u64(t->nbytes());
    const Digest& d = digests.at(t->name);
    h.update(d.data(), d.size());
  }
  std::vector<std::pair<std::string, std::string>> meta;
  for (const auto& [k, v] : header.metadata) {
    if (k.rfind(kStLockPrefix, 0) != 0) meta.emplace_back(k, v);
  }
  h.update_u64(meta.size());
  for (const auto& [k, v] : meta) {
    h.update_str(k);
    h.update_str(v);
  }
  return h.finish();
}

}  // namespace st_detail

using st_detail::combine;
using st_detail::resolve_threads;
using st_detail::tensor_digest;

StFingerprintScheme st_fingerprint_scheme(const StHeader& header) {
  if (header.metadata.count("corelocker.key_id") == 0) return kStFingerprintCurrent;
  auto it = header.metadata.find("corelocker.fingerprint_scheme");
  if (it == header.metadata.end()) return StFingerprintScheme::kV1;  // locked before scheme 2
  if (it->second == "2") return StFingerprintScheme::kV2;
  throw FormatError("corelocker.fingerprint_scheme '" + it->second +
                    "': this build knows 2 (and 1, when the entry is absent)");
}

Digest st_fingerprint(const StFile& file, unsigned threads) {
  return st_fingerprint(file, threads, st_fingerprint_scheme(file.header));
}

Digest st_fingerprint(const StFile& file, unsigned threads, StFingerprintScheme scheme) {
  // Each tensor is one hash stream; the threads take tensors in file order.
  const auto& tensors = file.header.tensors;
  std::vector<Digest> digests(tensors.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < tensors.size(); i = next++)
      digests[i] = tensor_digest(file, tensors[i], scheme);
  };
  const size_t helpers =
      std::min<size_t>(resolve_threads(threads), tensors.size()) - (tensors.empty() ? 0 : 1);
  std::vector<std::thread> pool;
  for (size_t i = 0; i < helpers; ++i) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  std::map<std::string, Digest> by_name;
  for (size_t i = 0; i < tensors.size(); ++i) by_name[tensors[i].name] = digests[i];
  return combine(file.header, by_name, scheme);
}

}  // namespace corelocker
