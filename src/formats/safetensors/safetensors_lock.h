// Locking and unlocking safetensors files in a streaming way (torch-free): one pass over the data
// ranks the units and hashes the tensors, a second pass writes the locked file; unlocking is a
// single pass. The file is memory-mapped and pages are given back as the passes move on, so the
// resident set stays far below the file size. With two or more threads, hashing runs on a helper
// thread beside the scoring and the writing (the hashes, and so the files and keys, are the same
// for any number of threads).
//
// Layers (l1 and random): a float tensor whose name ends in "weight" is a conv layer when it is 4-D
// (unit: one kernel F[o,i,:,:], score sum |w|) and a linear layer when it is 2-D (unit: one
// weight, score |w|). The first layer is the first conv in file order (the first linear when
// there is no conv), the last layer is the last linear (the last conv when there is no linear);
// both are left alone unless include_io.
//
// The locked file is a safetensors file with the same tensors (extracted units zeroed) whose
// "__metadata__" gains corelocker.* entries (spliced into the header text so that unlocking
// restores the original header byte for byte); see docs/key-format.md.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "formats/safetensors/safetensors.h"
#include "keyfile/key_file.h"
#include "util/hash.h"

namespace corelocker {

// Prefix of the metadata entries a lock adds.
constexpr char kStLockPrefix[] = "corelocker.";

// How a safetensors fingerprint hashes each tensor's bytes (docs/key-format.md): scheme 1 with
// BLAKE2b-256, scheme 2 (what locks write now) with BLAKE3, five times faster. The rest is the
// same.
enum class StFingerprintScheme { kV1 = 1, kV2 = 2 };
constexpr StFingerprintScheme kStFingerprintCurrent = StFingerprintScheme::kV2;

// The scheme of a file's fingerprint: the one its lock recorded in corelocker.fingerprint_scheme
// (1 for a file locked before that entry existed), the current one for an unlocked file. Throws
// FormatError for a scheme this build does not know.
StFingerprintScheme st_fingerprint_scheme(const StHeader& header);

// Fingerprint of a safetensors file: BLAKE2b-256 over the tensors sorted by name (name, dtype,
// shape, byte count and the digest of the bytes, by `scheme`) and the metadata without
// corelocker.* entries (docs/key-format.md). One pass over the data, tensors hashed on `threads`
// threads (0: all cores). Throws IoError / FormatError.
Digest st_fingerprint(const StFile& file, unsigned threads, StFingerprintScheme scheme);
// The same, with the file's own scheme (st_fingerprint_scheme).
Digest st_fingerprint(const StFile& file, unsigned threads = 0);

enum class StLayerKind { kConv, kLinear };

struct StLayer {
  std::string tensor;
  StLayerKind kind = StLayerKind::kConv;
  uint64_t unit_size = 1;  // elements per unit
  uint64_t units = 0;
  bool eligible = true;  // false for the first and the last layer unless include_io
};

// The layers of a file in file order, with first and last marked not eligible unless include_io.
std::vector<StLayer> st_layers(const StHeader& header, bool include_io);

// A BatchNorm layer found by name: a module path P with 1-D float tensors P.weight (gamma),
// P.bias (beta), P.running_mean and P.running_var of one length, the channels. The file has no
// graph, so the layer that feeds it (whose output filter or row a bn unit takes along, as in a
// network's graph) is decided by name:
//   P = Q.bnN (N: digits or none)  the first of the siblings Q.convN, Q.fcN, Q.linearN that fits;
//   P = Q.K   (K >= 1)             Q.(K-1), the layer before it in a numbered sequence;
// where a layer fits when its weight is 4-D or 2-D float with as many outputs as P has channels
// (its bias goes along when it has one of that length). When names the rule gives exist but none
// fits, the file does not follow the rule (a pre-activation network names bnN before convN, and
// the first block that changes the width shows it): no BatchNorm of the file is paired, each bn
// unit is gamma and beta alone (what a network's graph gives for BN -> ReLU -> conv), and
// `unpaired` says which name broke the rule.
struct StBatchNorm {
  std::string path;    // P
  std::string weight;  // P.weight
  std::string bias;    // P.bias
  uint64_t channels = 0;
  std::string producer;       // weight of the layer that feeds it; empty: none by the rule
  std::string producer_bias;  // that layer's bias, empty when it has none
};
struct StBatchNorms {
  std::vector<StBatchNorm> layers;  // in file order of their weights
  std::string unpaired;             // non-empty: why no BatchNorm is paired
};
StBatchNorms st_batchnorms(const StHeader& header);

// A tensor of the file as a decoy fill sees it (StLockOptions::decoys): its original values and
// the units the lock takes of it (none for a tensor given only as a donor of kernel shapes).
struct StDecoyTensor {
  std::string name;
  std::string dtype;  // F32, F64, F16 or BF16
  std::vector<uint64_t> shape;
  const uint8_t* data = nullptr;  // the original values, in the file
  uint64_t unit_size = 1;
  std::vector<uint64_t> units;  // strictly increasing
  std::vector<uint16_t> tier;   // per unit, with tiers: the index of the smallest ratio taking it
};
// Draws the decoys (locking/decoys.h: `fill` kDecoy or kDecoyV1, deterministic in `seed`) of every
// tensor's units; with `tiers` > 1, tier by tier, each modelled on the units no tier takes. Returns
// per tensor the decoy values of its units in its dtype, unit after unit (empty for a donor).
// LibTorch's: formats/safetensors/st_torch.h; the torch-free front binary has none.
using StDecoyFill = std::function<std::vector<std::vector<uint8_t>>(
    const std::vector<StDecoyTensor>& tensors, Fill fill, size_t tiers, uint64_t seed)>;

struct StLockOptions {
  // l1; bn: BatchNorm channels by |gamma| (st_batchnorms); random: units drawn by a seeded hash of
  // the layer's name and the unit's index (st_select.h), the same draw for the same seed and file.
  Criterion criterion = Criterion::kL1;
  uint64_t seed = 0;      // random
  bool bn_units = false;  // random: draw BatchNorm channels (bn units) instead of l1 units
  Scope scope = Scope::kLayer;
  double ratio = 0.05;
  // Several keys: the ratios of the tiers (any order; ratio is then not used). Key r of the
  // ratios sorted ascending holds the units ratio r adds to ratio r - 1 and turns the file locked
  // at ratio r into the file locked at ratio r - 1 (the original for r = 0); the locked file is
  // locked at the largest ratio. Empty: one key at ratio.
  std::vector<double> tiers;
  bool include_io = false;
  // Layers left alone by name: glob patterns (fnmatch: *, ?, [...]) matched against the whole
  // tensor name; each must match at least one layer.
  std::vector<std::string> keep;
  unsigned threads = 0;  // 2 or more: hashing runs beside scoring and writing; 0: all cores
  // What the taken positions hold: zeros, or decoys drawn by `decoys` (required then) from the
  // tensors the lock takes units of and every conv weight, which are read whole first; unset
  // decoy_seed: a random one (decoys must not be predictable).
  Fill fill = Fill::kZero;
  StDecoyFill decoys;
  std::optional<uint64_t> decoy_seed;
};

struct StLockOutcome {
  KeyFile key;                        // without tiers
  std::vector<KeyFile> tier_keys;     // with tiers, in order of application (tier 1 first)
  uint64_t units = 0;                 // units extracted (at the largest ratio, with tiers)
  uint64_t candidates = 0;            // units that competed
  uint64_t values = 0;                // elements moved into the key
  uint64_t elements = 0;              // elements of all float tensors in the file
  std::vector<std::string> excluded;  // first / last layer left alone
  std::vector<std::string> kept;      // layers left alone by StLockOptions::keep
};

// Locks `in` into `out` with l1, bn or random: ranks, writes the locked file to a temporary sibling
// of `out`, calls `before_commit` with each key in order of application (to write it; if it throws,
// nothing is left at `out`), then renames the locked file into place. Throws UsageError (nothing
// eligible, already locked, tiers that extract the same units) / FormatError / IoError.
StLockOutcome lock_safetensors(const std::string& in, const std::string& out,
                               const StLockOptions& options,
                               const std::function<void(const KeyFile&)>& before_commit);

struct StUnlockOutcome {
  Digest fingerprint{};  // of the file written, equal to the last key's original fingerprint
  uint64_t values = 0;
  double ratio_left = 0.0;  // tier keys that leave the file locked at a smaller ratio: that ratio
};

// Restores `in` (locked) into `out` with its key, or with tier keys in order of application (tier
// 1 first, any number of them): the original header (or, when tiers are left, the header of the
// file locked at the last key's smaller ratio) is spliced back and the keys' values written back in
// one pass; both fingerprints are checked before the file is renamed into place. Throws
// MismatchError (key of another file, tier keys out of order) / FormatError / IoError.
StUnlockOutcome unlock_safetensors(const std::string& in, const std::string& out,
                                   const std::vector<KeyFile>& keys, unsigned threads = 0);
StUnlockOutcome unlock_safetensors(const std::string& in, const std::string& out,
                                   const KeyFile& key, unsigned threads = 0);

// Lock entries of a locked file's metadata (key id, criterion...), empty for an unlocked file.
std::vector<std::pair<std::string, std::string>> st_lock_metadata(const StHeader& header);

class FormatRegistry;
struct DetectOptions;
struct DetectionReport;
// What only LibTorch does for safetensors files, handed to the format by a binary that links it
// (formats/safetensors/st_torch.h has LibTorch's).
struct StTorchParts {
  StDecoyFill decoys;  // --fill decoy
  // `detect` (ModelFormat::detect of formats/format.h)
  std::function<void(const std::string& path, const KeyFile& key, const DetectOptions& options,
                     DetectionReport& report)>
      detect;
};
// The safetensors format (formats/format.h) with `parts`; the one-argument registration has none
// and refuses --fill decoy and `detect`.
void register_safetensors_format(FormatRegistry& registry, const StTorchParts& parts);

}  // namespace corelocker
