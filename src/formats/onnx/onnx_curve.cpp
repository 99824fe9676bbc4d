#include "formats/onnx/onnx_curve.h"

#include <utility>

#include "formats/evaluation.h"
#include "formats/onnx/onnx_eval.h"
#include "formats/onnx/onnx_lock.h"
#include "util/error.h"

namespace corelocker {
namespace {

class OnnxCurveModel : public CurveModel {
 public:
  OnnxCurveModel(OnnxModel& model, const ModelMeta& meta, std::string what)
      : model_(model), meta_(meta), what_(std::move(what)) {
    note_lock();
  }

  const ModelMeta& meta() const override { return meta_; }
  Digest fingerprint() const override { return onnx_fingerprint(model_); }
  Ranking rank(const LockOptions& options) const override {
    return rank_units(onnx_layer_tensors(model_), model_.structure(), options);
  }

  EvalResult evaluate(const Dataset& data, int64_t batch_size, Collective* group) override {
    ready(data, group);
    return evaluate_onnx(model_, data, meta_.preprocess, what_, batch_size);
  }

  LockedEval evaluate_locked(const Ranking& ranking, double ratio, const Dataset& data,
                             int64_t batch_size, const EffectiveTarget* effective,
                             Collective* group) override {
    if (!(ratio >= 0.0 && ratio <= 1.0))
      throw UsageError("ratio " + std::to_string(ratio) + ": must be within [0, 1]");
    if (meta_.lock) {
      throw UsageError(what_ + " is already locked (key id " + meta_.lock->key_id +
                       "); curves start from an unlocked model");
    }
    ready(data, group);
    const Digest original = onnx_fingerprint(model_);
    const ExtractionPlan plan =
        plan_at(ranking, onnx_layer_tensors(model_), model_.structure(), ratio);
    KeyFile taken;
    LockedEval out;
    out.ratio = ratio;
    out.stats.values = take_onnx_units(model_, plan, taken);
    try {
      if (effective != nullptr) {
        static const Dataset kNone;
        EffectiveOptions o = effective->options;
        o.batch_size = batch_size;
        out.effective = evaluate_onnx_effective(
            model_, data, effective->unlabelled ? *effective->unlabelled : kNone, meta_.preprocess,
            what_, o);
        out.eval = out.effective->plain;
      } else {
        out.eval = evaluate_onnx(model_, data, meta_.preprocess, what_, batch_size);
      }
    } catch (...) {
      put_back_onnx_units(model_, taken);
      throw;
    }
    put_back_onnx_units(model_, taken);
    // A search never leaves a half-restored model behind.
    if (onnx_fingerprint(model_) != original)
      throw Error(what_ + ": not restored after the evaluation at ratio " + std::to_string(ratio));
    out.stats.units = plan.units;
    out.stats.candidates = ranking.total_units();
    out.stats.parameters = onnx_float_parameters(model_);
    return out;
  }

  LockReport lock_and_write(const Ranking& ranking, double ratio, const std::string& out,
                            const std::string& key_out, KeyCommit& keys) override {
    if (!is_onnx_file(out)) {
      throw UsageError("--out '" + out +
                       "': an ONNX model is written as ONNX; give a file name ending in .onnx");
    }
    LockOptions options = ranking.options;
    options.ratio = ratio;
    LockOutcome outcome = lock_onnx_model(model_, ranking, options);
    note_lock();
    LockReport report = commit_lock(keys, {{key_out, std::move(outcome.key)}},
                                    [&] { save_onnx_model(out, model_); });
    set_counts(report, outcome.stats);
    return report;
  }

 private:
  void note_lock() {
    const LockInfo lock = onnx_lock_info(model_);
    if (lock.key_id.empty())
      meta_.lock.reset();
    else
      meta_.lock = lock;
  }

  // Refuses what OpenCV cannot run before the first evaluation: several ranks, a graph it cannot
  // import, an input that does not fit the images.
  void ready(const Dataset& data, Collective* group) {
    if (group != nullptr && group->size() > 1) {
      throw UsageError(what_ +
                       ": ONNX graphs run in one process (OpenCV's dnn module); run the command "
                       "without torchrun");
    }
    if (checked_) return;
    check_onnx_runnable(model_, data, meta_.preprocess, what_);
    checked_ = true;
  }

  OnnxModel& model_;
  ModelMeta meta_;
  std::string what_;
  bool checked_ = false;
};

class OwningOnnxCurveModel : public OnnxCurveModel {
 public:
  OwningOnnxCurveModel(std::unique_ptr<OnnxModel> model, const ModelMeta& meta,
                       const std::string& what)
      : OnnxCurveModel(*model, meta, what), held_(std::move(model)) {}

 private:
  std::unique_ptr<OnnxModel> held_;
};

}  // namespace

std::unique_ptr<CurveModel> onnx_curve_model(OnnxModel& model, const ModelMeta& meta,
                                             const std::string& what) {
  return std::make_unique<OnnxCurveModel>(model, meta, what);
}

std::unique_ptr<CurveModel> onnx_curve_model(OnnxModel&& model, const ModelMeta& meta,
                                             const std::string& what) {
  return std::make_unique<OwningOnnxCurveModel>(std::make_unique<OnnxModel>(std::move(model)), meta,
                                                what);
}

}  // namespace corelocker
