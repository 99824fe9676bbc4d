// ONNX models as a ModelFormat: the initializers locked with the library's ranking
// (formats/onnx/onnx_lock.h), evaluation through OpenCV's dnn module (formats/onnx/onnx_eval.h).
#include <algorithm>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "formats/evaluation.h"
#include "formats/format.h"
#include "formats/onnx/onnx_curve.h"
#include "formats/onnx/onnx_eval.h"
#include "formats/onnx/onnx_lock.h"
#include "formats/onnx/onnx_model.h"
#include "formats/onnx/onnx_runtime.h"
#include "locking/detect.h"
#include "util/error.h"

namespace corelocker {
namespace {

using OJson = nlohmann::ordered_json;

constexpr char kNoTraining[] =
    "`attack` fine-tunes, which needs gradients, and OpenCV's dnn module runs graphs forward only; "
    "`analyze` captures each layer's input in a LibTorch network's forward pass. `eval` of a "
    "locked ONNX file reports its effective top-1 (after BatchNorm re-estimation and pruning, the "
    "attacks that need no training)";

std::string model_what(const std::string& path) { return "ONNX model '" + path + "'"; }

// OpenCV's threads: `threads`, or every core for 0.
void use_threads(unsigned threads) {
  set_onnx_runtime_threads(
      static_cast<int>(threads > 0 ? threads : std::max(1u, std::thread::hardware_concurrency())));
}

// A model made ready to run: read, unlocked in memory with `keys` (if any), its input described
// over Fashion-MNIST's defaults (ONNX files store no preprocessing).
struct OnnxRun {
  OnnxModel model;
  std::string what;
  ModelMeta meta;
};

OnnxRun open_to_run(const std::string& path, const std::vector<KeyFile>& keys, unsigned threads,
                    const DescribeInput& describe) {
  use_threads(threads);
  OnnxRun ready{load_onnx_model(path), model_what(path), {}};
  if (!keys.empty()) {
    unlock_onnx_model(ready.model, keys);  // in memory only
    ready.what += " (unlocked in memory)";
  }
  use_dataset(dataset_info("fashion-mnist"), ready.meta);
  if (describe) describe(ready.meta, /*stored=*/false, path);
  return ready;
}

void require_onnx_out(const std::string& out) {
  if (!is_onnx_file(out)) {
    throw UsageError("--out '" + out +
                     "': an ONNX model is written as ONNX; give a file name ending in .onnx");
  }
}

class OnnxFormat : public ModelFormat {
 public:
  std::string name() const override { return "onnx"; }
  std::string recognition() const override { return "name ending in .onnx"; }
  bool recognizes(const std::string& path) const override { return is_onnx_file(path); }

  Support supports(Feature f) const override {
    switch (f) {
      case Feature::kCriterionBn:
        return works("BatchNormalization nodes paired with the Conv feeding them in the graph");
      case Feature::kKeep:
        return works("glob patterns on node or initializer names (`inspect` lists them)");
      case Feature::kDecoyFill:
        return works(
            "one draw; with --eval (the input described) the best of --decoy-tries draws on the "
            "validation split");
      case Feature::kTierBands:
        return works(
            "each tier's ratio calibrated on a validation split through OpenCV (the input "
            "described as for --eval)");
      case Feature::kEvaluate:
        return works("OpenCV's dnn module; graphs it cannot import are refused naming the node");
      case Feature::kCalibrate:
        return works("the model locked in memory at each ratio and run through OpenCV");
      case Feature::kAttack:
        return cannot(kNoTraining);
      case Feature::kPredict:
        return works("OpenCV's dnn module, unlocked in memory with --key");
      case Feature::kDetect:
        return works("the initializers, ranked by the graph's layers for the learned detector");
      default:
        return works();
    }
  }

  Digest fingerprint(const std::string& path, unsigned) const override {
    return onnx_fingerprint(load_onnx_model(path));
  }

  OJson describe(const std::string& path) const override {
    const OnnxModel model = load_onnx_model(path);
    const LockInfo lock = onnx_lock_info(model);
    OJson layers = OJson::array();
    for (const auto& l : model.structure()) {
      OJson j = {{"name", l.name}, {"kind", to_string(l.kind)}, {"weight", l.weight}};
      if (!l.bias.empty()) j["bias"] = l.bias;
      if (l.producer >= 0) j["producer"] = model.structure()[static_cast<size_t>(l.producer)].name;
      layers.push_back(j);
    }
    uint64_t parameters = 0;
    OJson storage = {{"raw_data", 0}, {"typed", 0}, {"external", 0}};
    for (const auto& t : model.initializers()) {
      if (onnx_is_float(t.data_type)) parameters += t.numel();
      storage[to_string(t.storage)] = storage[to_string(t.storage)].get<int>() + 1;
    }
    OJson j = {{"type", lock.key_id.empty() ? "onnx model" : "locked onnx model"},
               {"producer", model.producer()},
               {"ir_version", model.ir_version()},
               {"opset", model.opset()},
               {"nodes", model.node_count()},
               {"initializers", model.initializers().size()},
               {"storage", storage},
               {"parameters", parameters},
               {"fingerprint", to_hex(onnx_fingerprint(model))},
               {"layers", layers}};
    if (!lock.key_id.empty()) {
      j["lock"] = {
          {"key_id", lock.key_id},       {"original_fingerprint", lock.original_fingerprint},
          {"criterion", lock.criterion}, {"scope", lock.scope},
          {"ratio", lock.ratio},         {"tool_version", lock.tool_version}};
    }
    return j;
  }

  LockReport lock(const LockRequest& r, KeyCommit& keys) const override {
    const LockEvaluation* ev = r.evaluation;
    const bool evaluate = ev != nullptr && ev->evaluate_locked;
    if (r.tier_bands && ev == nullptr) throw UsageError("--tier-bands: no band given");
    const bool runs = evaluate || r.tier_bands;  // the lock runs the model (ev is set)
    if (ev != nullptr && ev->input_given && !runs) {
      throw UsageError(
          "--dataset, --mean, --std, --pad, --resize and --channels say how to feed a model that "
          "is run; '" +
          r.in +
          "' is an ONNX file and runs only with --eval or --tier-bands (they are not stored)");
    }
    if (ev != nullptr && ev->decoy_search_given && r.fill != Fill::kZero && !evaluate) {
      throw UsageError(
          "--decoy-tries and --decoy-target choose a decoy fill by running the model; '" + r.in +
          "' is an ONNX file, which runs only with --eval (its input is not "
          "stored): give --eval, or leave them out for one draw");
    }
    require_onnx_out(r.out);
    OnnxModel model = load_onnx_model(r.in);
    // With --eval, whatever would stop the evaluation stops the lock before anything is written.
    ModelMeta meta;
    use_dataset(dataset_info("fashion-mnist"), meta);
    std::unique_ptr<Dataset> test;
    if (runs) {
      if (ev->describe_input) ev->describe_input(meta, /*stored=*/false, r.in);
      use_threads(r.threads);
    }
    if (evaluate) {
      test = std::make_unique<Dataset>(ev->test(meta));
      check_onnx_runnable(model, *test, meta.preprocess, model_what(r.in));
    }
    LockOptions o = lock_options_for(r.units, r.ratio);
    o.seed = r.seed;
    o.fill = r.fill;
    o.random_bn_units = r.random_bn_units;
    o.keep = r.keep;
    const std::vector<std::string> kept = kept_layers(model.structure(), r.keep);
    std::unique_ptr<Dataset> unlabelled;
    auto evaluate_state = [&](double tier_ratio) {
      if (!evaluate) return;
      if (!unlabelled) unlabelled = std::make_unique<Dataset>(ev->unlabelled(meta));
      const EffectiveEval e = evaluate_onnx_effective(model, *test, *unlabelled, meta.preprocess,
                                                      model_what(r.out), ev->effective);
      if (ev->on_evaluated) ev->on_evaluated(tier_ratio, e, onnx_runtime_name());
    };
    std::vector<double> ratios = r.tier_ratios;
    if (r.tier_bands) {
      ratios = calibrate_tier_bands(*onnx_curve_model(model, meta, model_what(r.in)), o, *ev);
    }
    std::vector<std::pair<std::string, KeyFile>> made;
    LockStats stats;
    if (ratios.empty()) {
      // A decoy search runs the model, so it needs the input described (--eval and its options).
      OnnxDecoySearch search;
      std::unique_ptr<Dataset> val;
      if (o.fill != Fill::kZero && evaluate && ev->decoy_tries > 1) {
        val = std::make_unique<Dataset>(ev->validation(meta));
        search.tries = ev->decoy_tries;
        search.target = ev->decoy_target;
        search.score = [&](const OnnxModel& m) {
          return evaluate_onnx(m, *val, meta.preprocess, model_what(r.out)).top1;
        };
      }
      LockOutcome outcome = lock_onnx_model(model, o, search);
      if (search.tries > 1 && ev->on_decoys)
        ev->on_decoys(search.tries, search.target, static_cast<int64_t>(val->size()));
      made.emplace_back(r.key_out, std::move(outcome.key));
      stats = outcome.stats;
    } else {
      if (ev != nullptr && ev->on_tiers) ev->on_tiers(ratios);
      auto outcomes = lock_onnx_model_tiers(
          model, o, ratios, [&](double ratio, OnnxModel&) { evaluate_state(ratio); });
      for (auto& t : outcomes)
        made.emplace_back(tier_key_path(r.key_out, t.key.header.tier), std::move(t.key));
      stats = outcomes.front().stats;
    }
    // Keys first (a locked model without its keys would be lost utility).
    LockReport report = commit_lock(keys, made, [&] { save_onnx_model(r.out, model); });
    report.kept = kept;
    set_counts(report, stats);
    report.note = "passes the ONNX checker";
    if (ratios.empty()) evaluate_state(0.0);  // the locked model in memory: as written
    return report;
  }

  void evaluate(const std::string& path, const EvaluationJob& job) const override {
    OnnxRun ready = open_to_run(path, job.keys, job.threads, job.describe_input);
    const OnnxModel& model = ready.model;
    const std::string& what = ready.what;
    const ModelMeta& meta = ready.meta;
    const Dataset test = job.test(meta);
    check_onnx_runnable(model, test, meta.preprocess, what);
    if (onnx_lock_info(model).key_id.empty()) {
      const EvalResult r = evaluate_onnx(model, test, meta.preprocess, what);
      if (job.on_unlocked) job.on_unlocked(r, onnx_runtime_name());
      return;
    }
    const EffectiveEval e = evaluate_onnx_effective(model, test, job.unlabelled(meta),
                                                    meta.preprocess, what, job.effective);
    if (job.on_locked) job.on_locked(e, onnx_runtime_name());
  }

  void detect(const std::string& path, const KeyFile& key, const DetectOptions& options,
              DetectionReport& report) const override {
    const OnnxModel model = load_onnx_model(path);
    check_key_applies(onnx_fingerprint(model), key, path);
    std::set<std::string> statistics;  // running means and variances: buffers, never locked
    for (const auto& bn : model.batchnorms()) {
      statistics.insert(bn.mean);
      statistics.insert(bn.var);
    }
    std::vector<NamedTensor> tensors;
    for (const auto& t : model.initializers()) {
      if (!onnx_is_float(t.data_type)) continue;
      torch::Tensor x = onnx_to_tensor(t);
      if (x.scalar_type() == torch::kHalf || x.scalar_type() == torch::kBFloat16)
        x = x.to(torch::kFloat32);
      tensors.push_back({t.name, x, statistics.count(t.name) > 0});
    }
    report = detect_extracted(tensors, model.structure(), key, options);
  }

  std::unique_ptr<CurveModel> open_curve(const std::string& path, unsigned threads,
                                         const DescribeInput& describe_input) const override {
    OnnxRun ready = open_to_run(path, {}, threads, describe_input);
    return onnx_curve_model(std::move(ready.model), ready.meta, ready.what);
  }

  void predict(const std::string& path, const PredictionJob& job) const override {
    OnnxRun ready = open_to_run(path, job.keys, job.threads, job.describe_input);
    const OnnxModel& model = ready.model;
    const std::string& what = ready.what;
    const ModelMeta& meta = ready.meta;
    Dataset images;
    images.images = job.images(meta);
    images.labels = torch::zeros({images.images.size(0)}, torch::kInt64);
    images.classes = meta.classes;
    images.name = "given";
    check_onnx_runnable(model, images, meta.preprocess, what);
    if (job.on_model) job.on_model(!onnx_lock_info(model).key_id.empty());
    onnx_class_scores(model, images.images, meta.preprocess, what, job.batch_size, {},
                      [&](int64_t first, const torch::Tensor& logits) {
                        job.on_batch(first, torch::softmax(logits, 1));
                      });
  }

  UnlockReport unlock(const std::string& in, const std::vector<KeyFile>& keys,
                      const std::string& out, unsigned) const override {
    require_onnx_out(out);
    OnnxModel model = load_onnx_model(in);
    unlock_onnx_model(model, keys);  // checks every fingerprint; throws before anything is written
    save_onnx_model(out, model);
    // Re-read what was written: the file on disk must be the state the last key produces.
    const OnnxModel written = load_onnx_model(out);
    UnlockReport report;
    report.fingerprint = onnx_fingerprint(written);
    check_written(out, report.fingerprint, keys.back().header.original_fingerprint);
    const LockInfo left = onnx_lock_info(written);
    if (!left.key_id.empty()) {  // a tier key that leaves the model locked at a smaller ratio
      report.original = false;
      report.ratio_left = left.ratio;
      report.keys_left = keys.back().header.tiers - keys.back().header.tier;
    }
    return report;
  }
};

}  // namespace

void register_onnx_format(FormatRegistry& registry) {
  registry.add(std::make_unique<OnnxFormat>());
}

}  // namespace corelocker
