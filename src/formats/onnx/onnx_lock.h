// Locking and unlocking ONNX models: the same units, ranking and key file as for our own
// checkpoints (locking/selection.h, keyfile/key_file.h), applied to a model's initializers.
// Key entries name initializers; fingerprints are onnx_fingerprint (docs/key-format.md).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "formats/onnx/onnx_model.h"
#include "locking/lock.h"

namespace corelocker {

// metadata_props keys of a locked ONNX model.
constexpr char kOnnxMetaKeyId[] = "corelocker.key_id";
constexpr char kOnnxMetaOriginal[] = "corelocker.original_fingerprint";
constexpr char kOnnxMetaCriterion[] = "corelocker.criterion";
constexpr char kOnnxMetaScope[] = "corelocker.scope";
constexpr char kOnnxMetaRatio[] = "corelocker.ratio";
constexpr char kOnnxMetaVersion[] = "corelocker.tool_version";

// The lock recorded in a model's metadata_props; key_id empty when the model is not locked.
LockInfo onnx_lock_info(const OnnxModel& model);

// The decoy search of an ONNX lock (DecoySearch, locking/lock.h, for our checkpoints): `score`
// rates the model locked in memory (top-1 on a validation split, say).
struct OnnxDecoySearch {
  int tries = 1;
  DecoySearch::Target target = DecoySearch::Target::kMatchZero;
  std::function<double(const OnnxModel&)> score;
  std::optional<uint64_t> seed;
};

// Ranks the units of the model's layers (OnnxModel::structure), extracts the top
// `options.ratio` into a key and records the lock in the model's metadata_props. The extracted
// values become 0, or decoys drawn from the model of each tensor's remaining units
// (options.fill, locking/decoys.h; with `search`, the draw it keeps). Throws UsageError (already
// locked, bad options, nothing eligible) / Error.
LockOutcome lock_onnx_model(OnnxModel& model, const LockOptions& options,
                            const OnnxDecoySearch& search = {});

// Same, with the units ranked already (`ranking` of this model; options.ratio the ratio, the
// criterion and scope recorded in the key are the ranking's).
LockOutcome lock_onnx_model(OnnxModel& model, const Ranking& ranking, const LockOptions& options,
                            const OnnxDecoySearch& search = {});

// The weights of the model's layers (OnnxModel::structure) as tensors for the shared ranking code
// (copies: the model is not touched). Throws Error when a layer's initializer is missing.
std::vector<NamedTensor> onnx_layer_tensors(const OnnxModel& model);

// Moves the plan's units into entries of `key` (values in the initializers' own dtype) and leaves
// zeros in the model; returns the values moved. Throws Error when the plan does not fit the model.
int64_t take_onnx_units(OnnxModel& model, const ExtractionPlan& plan, KeyFile& key);

// Writes a key's values back into the model, unchecked: for keys take_onnx_units made of this
// model (unlock_onnx_model checks a key first). Throws MismatchError for a missing initializer.
void put_back_onnx_units(OnnxModel& model, const KeyFile& key);

// The float values of the model's initializers, counted.
int64_t onnx_float_parameters(const OnnxModel& model);

// Tiered lock (as lock_model_tiers for our checkpoints): ranks once and returns one key per
// ratio in the order of application (largest ratio first); the model ends locked at the
// largest ratio and `on_state` sees it locked at each ratio, smallest first. A decoy fill is one
// draw a tier, never modelled on units a larger tier takes.
// Throws UsageError (already locked, bad or too close ratios) / Error.
std::vector<TierOutcome> lock_onnx_model_tiers(
    OnnxModel& model, const LockOptions& options, std::vector<double> ratios,
    const std::function<void(double ratio, OnnxModel& state)>& on_state = nullptr);

// Applies keys in order: each must belong to the model's current state (MismatchError
// otherwise, with nothing changed by that key), every entry must name a float initializer of
// the same dtype and shape; the result must have the key's "produces" fingerprint. Clears the
// lock metadata once the original is back. Throws MismatchError / Error.
void unlock_onnx_model(OnnxModel& model, const std::vector<KeyFile>& keys);

}  // namespace corelocker
