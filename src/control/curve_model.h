// What the searches over the extraction ratio (`calibrate`, `bands`, `sweep`, tiers by utility
// band) need of a model, whatever its file format: the description of its input, its units
// ranked, the model locked in memory at a ratio, evaluated so and restored, and the model locked
// at a chosen ratio and written with its key. Our networks (LibTorch) implement it here, ONNX
// graphs (run by OpenCV) in formats/onnx/onnx_curve.h; ModelFormat::open_curve opens a file as
// one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "control/utility_curve.h"
#include "formats/format.h"

namespace corelocker {

class CurveModel {
 public:
  virtual ~CurveModel() = default;
  // The input description, classes and data set; `meta().lock` is set when the model is locked.
  virtual const ModelMeta& meta() const = 0;
  // The fingerprint of the model's values (every rank of a group must hold the same).
  virtual Digest fingerprint() const = 0;
  // The model's units ranked as `options` say (locking/selection.h).
  virtual Ranking rank(const LockOptions& options) const = 0;
  // Top-1 / top-3 of the model as it is, on `data`; with a `group` of several ranks the
  // evaluation is shared out (every rank calls it alike).
  virtual EvalResult evaluate(const Dataset& data, int64_t batch_size, Collective* group) = 0;
  // The model locked in memory with `ranking`'s plan at `ratio`, evaluated on `data` (with
  // `effective`, also after re-estimation and pruning) and restored, also when the evaluation
  // throws. Throws UsageError (ratio outside [0, 1], model locked) / Error.
  virtual LockedEval evaluate_locked(const Ranking& ranking, double ratio, const Dataset& data,
                                     int64_t batch_size, const EffectiveTarget* effective,
                                     Collective* group) = 0;
  // Locks the model with `ranking`'s plan at `ratio` and writes its key to `key_out`, then the
  // locked model to `out`, through `keys` (a failure leaves neither). The model stays locked.
  // Throws UsageError (model locked) / IoError / Error.
  virtual LockReport lock_and_write(const Ranking& ranking, double ratio, const std::string& out,
                                    const std::string& key_out, KeyCommit& keys) = 0;
};

// One of our networks as a CurveModel: `model` is used in place and must outlive the result.
std::unique_ptr<CurveModel> torch_curve_model(LoadedModel& model);
// Same, holding the model.
std::unique_ptr<CurveModel> torch_curve_model(LoadedModel&& model);

}  // namespace corelocker
