// Our checkpoints and TorchScript files (both LibTorch archives; load_model tells them apart) as
// a ModelFormat: the in-memory lock of locking/lock.h with everything that evaluates.
#include <algorithm>
#include <memory>
#include <utility>

#include "control/calibrate.h"
#include "eval/evaluate.h"
#include "formats/evaluation.h"
#include "formats/format.h"
#include "locking/detect.h"
#include "locking/fingerprint.h"
#include "locking/lock.h"
#include "locking/selection.h"
#include "models/checkpoint.h"
#include "models/torchscript.h"
#include "util/error.h"

namespace corelocker {
namespace {

using OJson = nlohmann::ordered_json;

class LibTorchFormat : public ModelFormat {
 public:
  std::string name() const override { return "libtorch"; }
  std::string recognition() const override {
    return "any other file: a corelocker checkpoint, or a TorchScript file (torch.jit.save)";
  }
  // The last format registered: what no other format claims is read as a LibTorch archive, whose
  // loader says what is wrong with a file that is not one.
  bool recognizes(const std::string&) const override { return true; }

  Support supports(Feature f) const override {
    switch (f) {
      case Feature::kCriterionBn:
        return works("conv -> BatchNorm pairs read from the architecture or the TorchScript graph");
      case Feature::kKeep:
        return works("glob patterns on layer or weight names (`inspect` lists them)");
      case Feature::kDecoyFill:
        return works("--decoy-tries draws chosen on a validation split");
      case Feature::kTierBands:
        return works("each tier's ratio calibrated on a validation split");
      case Feature::kEvaluate:
        return works("LibTorch");
      default:
        return works();
    }
  }

  Digest fingerprint(const std::string& path, unsigned) const override {
    LoadedModel model = load_model(path);
    return model_fingerprint(model);
  }

  OJson describe(const std::string& path) const override {
    LoadedModel model = load_model(path);
    const auto& m = model.meta;
    OJson layers = OJson::array();
    for (const auto& l : model.net->structure()) {
      OJson j = {{"name", l.name}, {"kind", to_string(l.kind)}};
      if (l.producer >= 0)
        j["producer"] = model.net->structure()[static_cast<size_t>(l.producer)].name;
      layers.push_back(j);
    }
    OJson j = {
        {"type", m.lock ? "locked model" : "model"},
        {"arch", m.arch},
        {"options", m.options},
        {"dataset", m.dataset},
        {"input", {m.input.channels, m.input.height, m.input.width}},
        {"pad_to", m.preprocess.pad_to},
        {"resize_to", m.preprocess.resize_to},
        {"channels_fed", m.preprocess.channels > 0 ? m.preprocess.channels : m.input.channels},
        {"mean", m.preprocess.mean},
        {"std", m.preprocess.std},
        {"classes", m.classes},
        {"parameters", parameter_count(*model.net)},
        {"fingerprint", to_hex(model_fingerprint(model))},
        {"training", OJson::parse(m.training_json)},
        {"layers", layers}};
    if (m.preprocess.pad_value != 0.0) j["pad_value"] = m.preprocess.pad_value;
    if (m.preprocess.pad_normalised) j["pad_after_normalise"] = true;
    if (m.lock) {
      j["lock"] = {
          {"key_id", m.lock->key_id},       {"original_fingerprint", m.lock->original_fingerprint},
          {"criterion", m.lock->criterion}, {"scope", m.lock->scope},
          {"ratio", m.lock->ratio},         {"fill", m.lock->fill},
          {"tiers", m.lock->tiers},         {"tool_version", m.lock->tool_version}};
    }
    return j;
  }

  LockReport lock(const LockRequest& r, KeyCommit& keys) const override {
    const LockEvaluation* ev = r.evaluation;
    LoadedModel model = load_model(r.in);
    if (ev != nullptr && ev->describe_input)  // recorded in the locked model's metadata
      ev->describe_input(model.meta, model.meta_stored, r.in);
    LockOptions o = lock_options_for(r.units, r.ratio);
    o.seed = r.seed;
    o.fill = r.fill;
    o.random_bn_units = r.random_bn_units;
    o.keep = r.keep;
    const std::vector<std::string> kept = kept_layers(model.net->structure(), r.keep);

    std::unique_ptr<Dataset> test, unlabelled;
    auto evaluate_state = [&](double tier_ratio) {
      if (ev == nullptr || !ev->evaluate_locked) return;
      if (!test) {
        test = std::make_unique<Dataset>(ev->test(model.meta));
        unlabelled = std::make_unique<Dataset>(ev->unlabelled(model.meta));
      }
      const EffectiveEval e = evaluate_effective(model, *test, *unlabelled, ev->effective);
      if (ev->on_evaluated) ev->on_evaluated(tier_ratio, e, "");
    };

    std::vector<double> ratios = r.tier_ratios;
    if (r.tier_bands) {
      if (ev == nullptr) throw UsageError("--tier-bands: no band given");
      ratios = calibrate_tier_bands(*torch_curve_model(model), o, *ev);
    }

    std::vector<std::pair<std::string, KeyFile>> made;
    LockStats stats;
    if (ratios.empty()) {
      DecoySearch search;
      std::unique_ptr<Dataset> val;
      if (o.fill != Fill::kZero && ev != nullptr && ev->decoy_tries > 1) {
        val = std::make_unique<Dataset>(ev->validation(model.meta));
        search.tries = ev->decoy_tries;
        search.target = ev->decoy_target;
        search.score = [&](LoadedModel& m) {
          return corelocker::evaluate(*m.net, *val, m.meta.preprocess).top1;
        };
      }
      LockOutcome outcome = lock_model(model, o, search);
      if (search.tries > 1 && ev->on_decoys)
        ev->on_decoys(search.tries, search.target, static_cast<int64_t>(val->size()));
      made.emplace_back(r.key_out, std::move(outcome.key));
      stats = outcome.stats;
    } else {
      if (ev != nullptr && ev->on_tiers) ev->on_tiers(ratios);
      auto outcomes = lock_model_tiers(model, o, ratios,
                                       [&](double ratio, LoadedModel&) { evaluate_state(ratio); });
      for (auto& t : outcomes)
        made.emplace_back(tier_key_path(r.key_out, t.key.header.tier), std::move(t.key));
      stats = outcomes.front().stats;
    }
    // Keys first (a locked model without its keys would be lost utility).
    LockReport report = commit_lock(keys, made, [&] { save_model(r.out, model); });
    report.kept = kept;
    set_counts(report, stats);
    if (ratios.empty()) evaluate_state(0.0);
    return report;
  }

  void detect(const std::string& path, const KeyFile& key, const DetectOptions& options,
              DetectionReport& report) const override {
    LoadedModel model = load_model(path);
    check_key_applies(model_fingerprint(model), key, path);
    report = detect_extracted(model, key, options);
  }

  std::unique_ptr<CurveModel> open_curve(const std::string& path, unsigned,
                                         const DescribeInput& describe_input) const override {
    LoadedModel model = load_model(path);
    if (describe_input) describe_input(model.meta, model.meta_stored, path);
    return torch_curve_model(std::move(model));
  }

  void evaluate(const std::string& path, const EvaluationJob& job) const override {
    LoadedModel model = job.keys.empty() ? load_model(path) : load_unlocked(path, job.keys);
    if (job.describe_input) job.describe_input(model.meta, model.meta_stored, path);
    const Dataset test = job.test(model.meta);
    if (model.meta.lock) {
      const EffectiveEval e =
          evaluate_effective(model, test, job.unlabelled(model.meta), job.effective);
      if (job.on_locked) job.on_locked(e, "");
      return;
    }
    const EvalResult r = corelocker::evaluate(*model.net, test, model.meta.preprocess);
    if (job.on_unlocked) job.on_unlocked(r, "");
  }

  void predict(const std::string& path, const PredictionJob& job) const override {
    LoadedModel model = job.keys.empty() ? load_model(path) : load_unlocked(path, job.keys);
    if (job.describe_input) job.describe_input(model.meta, model.meta_stored, path);
    const torch::Tensor images = job.images(model.meta);
    torch::NoGradGuard no_grad;
    model.net->eval();
    if (job.on_model) job.on_model(model.meta.lock.has_value());
    for (int64_t i = 0; i < images.size(0); i += job.batch_size) {
      const int64_t b = std::min<int64_t>(job.batch_size, images.size(0) - i);
      const torch::Tensor x =
          preprocess_batch(images.narrow(0, i, b), model.meta.preprocess, false);
      job.on_batch(i, torch::softmax(model.net->forward(x), 1));
    }
  }

  UnlockReport unlock(const std::string& in, const std::vector<KeyFile>& keys,
                      const std::string& out, unsigned) const override {
    LoadedModel model = load_model(in);
    unlock_model(model, keys);  // checks every fingerprint; throws before anything is written
    save_model(out, model);
    // Re-read what was written: the file on disk must be the state the last key produces.
    LoadedModel written = load_model(out);
    UnlockReport report;
    report.fingerprint = model_fingerprint(written);
    check_written(out, report.fingerprint, keys.back().header.original_fingerprint);
    if (written.meta.lock) {
      report.original = false;
      report.ratio_left = written.meta.lock->ratio;
      report.keys_left = written.meta.lock->tiers;
    }
    return report;
  }
};

}  // namespace

void register_libtorch_format(FormatRegistry& registry) {
  registry.add(std::make_unique<LibTorchFormat>());
}

}  // namespace corelocker
