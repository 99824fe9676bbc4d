#include "control/curve_model.h"

#include <utility>

#include "control/calibrate.h"
#include "eval/evaluate.h"
#include "formats/evaluation.h"
#include "util/error.h"

namespace corelocker {
namespace {

class TorchCurveModel : public CurveModel {
 public:
  explicit TorchCurveModel(LoadedModel& model) : model_(model) {}

  const ModelMeta& meta() const override { return model_.meta; }
  Digest fingerprint() const override { return model_fingerprint(model_); }
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
        commit_lock(keys, {{key_out, std::move(outcome.key)}}, [&] { save_model(out, model_); });
    set_counts(report, outcome.stats);
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

// Our networks in place through the searches written for any CurveModel (control/calibrate.h).
Calibration calibrate(LoadedModel& model, const Ranking& ranking, const Dataset& data, Band band,
                      const CalibrationOptions& options, const ProbeCallback& on_probe) {
  return calibrate(*torch_curve_model(model), ranking, data, band, options, on_probe);
}

BandsTable utility_bands(LoadedModel& model, const Ranking& ranking, const Dataset& data,
                         const BandsOptions& options, const ProbeCallback& on_probe) {
  return utility_bands(*torch_curve_model(model), ranking, data, options, on_probe);
}

TierCalibration calibrate_tiers(LoadedModel& model, const Ranking& ranking, const Dataset& data,
                                const std::vector<Band>& bands, const CalibrationOptions& options,
                                const ProbeCallback& on_probe) {
  return calibrate_tiers(*torch_curve_model(model), ranking, data, bands, options, on_probe);
}

std::vector<double> calibrate_tier_bands(CurveModel& model, const LockOptions& options,
                                         const LockEvaluation& ev) {
  if (ev.tier_bands.empty()) throw UsageError("--tier-bands: no band given");
  const Dataset val = ev.validation(model.meta());
  const Ranking ranking = model.rank(options);
  const Dataset band_images = ev.target_plain ? Dataset{} : ev.unlabelled(model.meta());
  CalibrationOptions copt;
  if (!ev.target_plain) copt.effective = EffectiveTarget{&band_images, ev.effective};
  const TierCalibration tc = calibrate_tiers(model, ranking, val, ev.tier_bands, copt);
  for (size_t i = 0; i < ev.tier_bands.size(); ++i)
    if (ev.on_band) ev.on_band(ev.tier_bands[i], tc.calibrations[i]);
  return tc.ratios;
}

}  // namespace corelocker
