// Internal to the safetensors lock pieces (src/formats/safetensors/st_*.cpp): the helpers the
// fingerprint, the header splice, the lock and the unlock share.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "formats/safetensors/safetensors.h"
#include "formats/safetensors/safetensors_lock.h"
#include "keyfile/key_file.h"
#include "util/hash.h"

namespace corelocker::st_detail {

// The key-file dtype of a safetensors float dtype (F32, F64, F16, BF16); throws Error for others.
// In st_lock.cpp.
DType key_dtype(const std::string& st);

// The channels each of `norms` gives up at each of `ratios` (per ratio, per BatchNorm, sorted), by
// options' criterion (bn: |gamma|; random: the seeded hash of the BatchNorm's weight name and the
// channel) and scope; ties go to the earlier channel in file order, so a smaller ratio's channels
// are among a larger one's. In st_batchnorm.cpp.
std::vector<std::vector<std::vector<uint64_t>>> select_bn_channels(
    const StFile& file, const std::vector<const StBatchNorm*>& norms, const StLockOptions& options,
    const std::vector<double>& ratios);

// A group of units gives up round(ratio * n) of its n units.
inline uint64_t units_at_ratio(uint64_t n, double ratio) {
  return std::min<uint64_t>(n, static_cast<uint64_t>(std::llround(ratio * static_cast<double>(n))));
}

// The units a lock takes of a tensor, listed before the passes (bn units).
struct ListedUnits {
  uint64_t unit_size = 1;
  std::vector<uint64_t> units;  // sorted, distinct
  std::vector<uint16_t> tier;   // per unit: the index of the smallest ratio that takes it
};

// What a lock takes, worked out from the header before the passes. In st_plan.cpp.
struct LockPlan {
  std::vector<StLayer> layers;  // eligible: not first/last (unless include_io), not kept
  // l1 / random units: the eligible layers by tensor name (index into layers), each layer's group
  // (scope layer: its own; global: 0 kernels, 1 weights) and the units of each group
  std::map<std::string, size_t> layer_of;
  std::vector<int> group_of;
  std::vector<uint64_t> group_units;
  std::map<std::string, ListedUnits> listed;  // bn units: the tensors they take units of
  std::vector<uint64_t> units;                // per ratio: the units taken, as the criterion counts
  uint64_t candidates = 0;
  std::vector<std::string> excluded, kept;
};
// Throws UsageError (a --keep pattern that matches nothing, nothing eligible, no BatchNorm).
LockPlan plan_lock(const StFile& file, const StLockOptions& options,
                   const std::vector<double>& ratios, const std::string& what);

// The digest of a tensor's bytes, giving the pages back as it goes. In st_fingerprint.cpp.
Digest tensor_digest(const StFile& f, const StTensor& t, StFingerprintScheme scheme);
// The fingerprint of a header from its tensors' digests (by name): st_fingerprint's final step.
// In st_fingerprint.cpp.
Digest combine(const StHeader& header, const std::map<std::string, Digest>& digests,
               StFingerprintScheme scheme);

// The header of `h` (an original header) locked at `ratio`: the original text with the lock
// entries spliced in (key id, criterion and original fingerprint from `key`: the original file's,
// also for a tier's state), padded to keep the data 8-aligned. In st_header_splice.cpp.
std::string locked_header_text(const StHeader& h, const KeyHeader& key,
                               const std::string& scope_text, double ratio);
// The original header text of a locked file (checked against the hash recorded at lock time).
// In st_header_splice.cpp.
std::string original_header_text(const StHeader& h, const std::string& what);

}  // namespace corelocker::st_detail
