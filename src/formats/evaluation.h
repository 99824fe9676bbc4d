// What `eval`, and a lock that evaluates, need from the command and report back: the data (chosen
// by the model's own metadata, i.e. the data set it was trained on), the searches that evaluate
// (decoy draws, tiers by utility band), --eval, and a report of each step as it happens. The
// library never prints; the command prints from these reports. Formats whose models cannot run
// (Feature::kEvaluate) are never given one.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "attacks/effective.h"
#include "control/calibrate.h"
#include "data/dataset.h"
#include "formats/format.h"
#include "locking/lock.h"

namespace corelocker {

// How to feed a model and on what.
struct ModelData {
  // How to feed the model (--dataset, --mean, ...): `describe_input` applies the user's
  // description to the model's metadata (`stored`: the file stores its own, which it is checked
  // against); `input_given`: the user gave one.
  bool input_given = false;
  DescribeInput describe_input;
  // The data, by the model's metadata: test split, validation images (from the training split),
  // unlabelled images for BatchNorm re-estimation.
  std::function<Dataset(const ModelMeta&)> test, validation, unlabelled;
  EffectiveOptions effective;
};

// `eval`: the model (unlocked in memory with `keys` first, when given) on the test split; a
// locked one also gets its effective top-1. Exactly one report is called; `runtime` names what
// ran the model when it is not LibTorch.
struct EvaluationJob : ModelData {
  std::vector<KeyFile> keys;
  unsigned threads = 0;
  std::function<void(const EvalResult& result, const std::string& runtime)> on_unlocked;
  std::function<void(const EffectiveEval& result, const std::string& runtime)> on_locked;
};

// `predict`: the model (unlocked in memory with `keys` first, when given) classifies the images
// `images` reads once the model's input is known (uint8 [N, C, H, W] in its input shape).
// `on_model` is called once before the first batch: is the model as it runs still locked?
// `on_batch` gets each batch's class probabilities (softmax of the logits, [n, classes]) and the
// index of its first image, batches in order.
struct PredictionJob {
  std::vector<KeyFile> keys;
  unsigned threads = 0;
  int64_t batch_size = 256;
  DescribeInput describe_input;
  std::function<torch::Tensor(const ModelMeta& meta)> images;
  std::function<void(bool locked)> on_model;
  std::function<void(int64_t first, const torch::Tensor& probabilities)> on_batch;
};

struct LockEvaluation : ModelData {
  bool evaluate_locked = false;     // --eval: the locked model (each tier) on the test split
  int decoy_tries = 1;              // with a decoy fill: keep the best of this many draws
  bool decoy_search_given = false;  // the user asked for a search (tries > 1 given)
  DecoySearch::Target decoy_target = DecoySearch::Target::kMatchZero;
  std::vector<Band> tier_bands;  // LockRequest::tier_bands: one tier per band
  bool target_plain = false;     // the bands are of the plain top-1, not the effective one

  // Reports, each optional.
  std::function<void(const Band& band, const Calibration& calibration)> on_band;
  std::function<void(int tries, DecoySearch::Target target, int64_t images)> on_decoys;
  std::function<void(const std::vector<double>& ratios)> on_tiers;  // before the tiers lock
  // An evaluation of the locked model: `tier_ratio` > 0 for a tier's state; `runtime` names
  // what ran the model when it is not LibTorch.
  std::function<void(double tier_ratio, const EffectiveEval& eval, const std::string& runtime)>
      on_evaluated;
};

// A lock's counts into its report (units, candidates, values, parameters).
inline void set_counts(LockReport& report, const LockStats& stats) {
  report.units = stats.units;
  report.candidates = stats.candidates;
  report.values = stats.values;
  report.parameters = stats.parameters;
}

// The ratios of `ev.tier_bands` (LockRequest::tier_bands), in their order: each band's ratio
// calibrated on the validation split (ev.validation) for `options`' units, of the effective top-1
// unless ev.target_plain, each reported through ev.on_band. The model ends as it started.
// Throws UsageError (no band) and what calibrate_tiers throws.
std::vector<double> calibrate_tier_bands(CurveModel& model, const LockOptions& options,
                                         const LockEvaluation& ev);

}  // namespace corelocker
