#include "control/curve_model.h"

#include <utility>

#include "eval/evaluate.h"
#include "locking/fingerprint.h"
#include "util/error.h"

namespace corelocker {
namespace {

class TorchCurveModel : public CurveModel {
 public:
  explicit TorchCurveModel(LoadedModel& model) : model_(model) {}

  const ModelMeta& meta() const override { return model_.meta; }
  Digest fingerprint() const override {
    return corelocker::fingerprint(named_tensors(*model_.net));
  }
  Ranking rank(const LockOptions& options) const override {
    return rank_units(named_tensors(*model_.net), model_.net->structure(), options);
  }
  EvalResult evaluate(const Dataset& data, int64_t batch_size, Collective* group) override {
    if (group != nullptr && group->size() > 1)
      return evaluate_shared(model_, data, batch_size, *group);
    return corelocker::evaluate(*model_.net, data, model_.meta.preprocess, batch_size);
  }
  LockedEval evaluate_locked(const Ranking& ranking, double ratio, const Dataset& data,
                             int64_t batch_size, const EffectiveTarget* effective,
                             Collective* group) override {
    return corelocker::evaluate_locked(model_, ranking, ratio, data, batch_size, effective, group);
  }
  LockReport lock_and_write(const Ranking& ranking, double ratio, const std::string& out,
                            const std::string& key_out, KeyCommit& keys) override {
    LockOutcome outcome = lock_model(model_, ranking, ratio);
    LockReport report =
        commit_lock(keys, {{key_out, outcome.key}}, [&] { save_model(out, model_); });
    report.units = outcome.stats.units;
    report.candidates = outcome.stats.candidates;
    report.values = outcome.stats.values;
    report.parameters = outcome.stats.parameters;
    return report;
  }

 private:
  LoadedModel& model_;
};

// Holds the model the base class works on.
class OwningTorchCurveModel : public TorchCurveModel {
 public:
  explicit OwningTorchCurveModel(std::unique_ptr<LoadedModel> model)
      : TorchCurveModel(*model), held_(std::move(model)) {}

 private:
  std::unique_ptr<LoadedModel> held_;
};

}  // namespace

std::unique_ptr<CurveModel> torch_curve_model(LoadedModel& model) {
  return std::make_unique<TorchCurveModel>(model);
}

std::unique_ptr<CurveModel> torch_curve_model(LoadedModel&& model) {
  return std::make_unique<OwningTorchCurveModel>(std::make_unique<LoadedModel>(std::move(model)));
}

}  // namespace corelocker
