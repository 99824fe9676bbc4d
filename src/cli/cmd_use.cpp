// `predict` (inference through an in-memory unlock) and `detect` (what a locked model gives away).
#include <cstdio>

#include "cli/commands.h"
#include "cli/common.h"
#include "data/idx.h"
#include "formats/evaluation.h"
#include "formats/format.h"
#include "locking/detect.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::cli {

namespace {

// Images [N,C,H,W] uint8 from an IDX file ([N,H,W] or [N,C,H,W]) or, with `raw`, a file of
// N*C*H*W bytes in the model's input shape.
torch::Tensor read_images(const std::string& path, bool raw, const ModelMeta& meta) {
  const InputShape& in = meta.input;
  const int64_t per_image = in.channels * in.height * in.width;
  std::vector<uint8_t> data;
  std::vector<int64_t> shape;
  if (raw) {
    data = read_file(path);
    if (data.empty() || data.size() % static_cast<size_t>(per_image) != 0) {
      throw FormatError("raw image batch '" + path + "': " + std::to_string(data.size()) +
                        " bytes, not a positive multiple of one " + std::to_string(in.channels) +
                        "x" + std::to_string(in.height) + "x" + std::to_string(in.width) +
                        " image (" + std::to_string(per_image) + " bytes)");
    }
    shape = {static_cast<int64_t>(data.size()) / per_image, in.channels, in.height, in.width};
  } else {
    IdxArray a = read_idx_file(path);
    if (a.dims.size() == 3) a.dims.insert(a.dims.begin() + 1, 1);
    if (a.dims.size() != 4 || a.dims[1] != in.channels || a.dims[2] != in.height ||
        a.dims[3] != in.width) {
      std::string got;
      for (auto d : a.dims) got += (got.empty() ? "" : "x") + std::to_string(d);
      throw FormatError("images '" + path + "' are " + got + ", the model takes Nx" +
                        std::to_string(in.channels) + "x" + std::to_string(in.height) + "x" +
                        std::to_string(in.width));
    }
    data = std::move(a.data);
    for (auto d : a.dims) shape.push_back(d);
  }
  return torch::from_blob(data.data(), shape, torch::kUInt8).clone();
}

struct Predict : Command {
  std::string model_path, input;
  std::vector<std::string> key_paths;
  bool raw = false, json = false;
  int top = 1;
  Common common;
  KeyAccess access;
  InputArgs input_args;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand(
        "predict", "Classify images with a locked model unlocked in memory (nothing written)");
    c->add_option("--model", model_path,
                  "Model checkpoint, TorchScript or ONNX file (locked or not)")
        ->required();
    c->add_option("--key", key_paths, "Key(s) to unlock with in memory, tier 1 first");
    c->add_option("--input", input, "Images: IDX (.gz or plain), or raw bytes with --raw")
        ->required();
    c->add_flag("--raw", raw, "Input is raw uint8 images in the model's input shape, back to back");
    c->add_option("--top", top, "Classes to print per image")
        ->capture_default_str()
        ->check(CLI::Range(1, 1000));
    c->add_flag("--json", json, "Print one JSON object");
    add_key_access(c, access, /*writing=*/false);
    add_threads(c, common);
    add_input_args(c, input_args);
    return c;
  }

  int run() override {
    const ModelFormat& format = model_formats().of(model_path);
    PredictionJob job;
    job.threads = static_cast<unsigned>(apply_threads(common));
    require_runnable(model_path, Feature::kPredict, "predict");
    if (!key_paths.empty()) job.keys = read_keys(key_paths, access);
    job.describe_input = [this](ModelMeta& meta, bool stored, const std::string& path) {
      apply_input_override(input_args, meta, stored, path);
    };
    job.images = [this](const ModelMeta& meta) { return read_images(input, raw, meta); };
    bool locked = false;
    job.on_model = [&](bool l) { locked = l; };
    Json out = Json::array();
    job.on_batch = [&](int64_t first, const torch::Tensor& probs) {
      const int k = std::min<int>(top, static_cast<int>(probs.size(1)));
      auto [p, cls] = probs.topk(k, 1);
      for (int64_t j = 0; j < probs.size(0); ++j) {
        Json row = {
            {"index", first + j}, {"classes", Json::array()}, {"probabilities", Json::array()}};
        std::string line = std::to_string(first + j) + ":";
        for (int t = 0; t < k; ++t) {
          row["classes"].push_back(cls[j][t].item<int64_t>());
          row["probabilities"].push_back(p[j][t].item<double>());
          line += " " + std::to_string(cls[j][t].item<int64_t>()) + " (" +
                  fixed(p[j][t].item<double>(), 3) + ")";
        }
        if (!json) std::printf("%s\n", line.c_str());
        out.push_back(row);
      }
    };
    format.predict(model_path, job);
    if (json) {
      std::printf(
          "%s\n",
          Json{{"model", model_path}, {"locked", locked}, {"predictions", out}}.dump().c_str());
    }
    return 0;
  }
};

struct Detect : Command {
  std::string model_path, key_path;
  bool json = false;
  DetectOptions options;
  Common common;
  KeyAccess access;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand(
        "detect", "Audit a locked model: can the extracted units be found from its weights alone?");
    options.learned_locks = 2;  // the command's default (the library's is no learned detector)
    c->add_option("--model", model_path, "Locked model")->required();
    c->add_option("--key", key_path, "Its key: the ground truth the detectors are scored against")
        ->required();
    c->add_option(
         "--learned-locks", options.learned_locks,
         "Training locks for the learned detector: the locked model locked again with the key's "
         "options "
         "and other decoy seeds (what an attacker with the tool can make); 0: no learned detector")
        ->capture_default_str()
        ->check(CLI::Range(0, 100));
    c->add_option("--seed", options.learned_seed,
                  "Decoy seed of the first training lock (the next ones count up)")
        ->capture_default_str();
    c->add_option("--permutations", options.permutations,
                  "Random truth sets each detector's chance level is drawn from")
        ->capture_default_str()
        ->check(CLI::Range(2, 100000));
    c->add_flag("--json", json, "Print one JSON object");
    add_key_access(c, access, /*writing=*/false);
    add_threads(c, common);
    return c;
  }

  int run() override {
    apply_threads(common);
    const ModelFormat& format = model_formats().of(model_path);
    const KeyFile key = read_keys({key_path}, access).front();
    DetectionReport r;
    format.detect(model_path, key, options, r);
    Json layers = Json::array();
    for (const auto& l : r.layers) {
      Json by_detector = Json::object();
      for (const auto& [name, hits] : l.detector_hits) by_detector[name] = hits;
      layers.push_back({{"tensor", l.tensor},
                        {"units", l.units},
                        {"extracted", l.extracted},
                        {"hits", l.hits},
                        {"hits_far_from_median", l.hits_far},
                        {"hits_smallest", l.hits_small},
                        {"exact_zero_units", l.exact_zero},
                        {"detector_hits", by_detector}});
    }
    // "position" never looks at a unit's own values: it measures the criterion, not the fill.
    bool at_chance = true;
    Json detectors = Json::array();
    for (const auto& d : r.detectors) {
      const bool fill_dependent = d.name != "position";
      if (fill_dependent && d.z() > 3.0) at_chance = false;
      detectors.push_back({{"name", d.name},
                           {"tensors", d.tensors},
                           {"units", d.units},
                           {"flagged", d.flagged},
                           {"hits", d.hits},
                           {"precision", d.precision()},
                           {"chance_hits_mean", d.chance_hits},
                           {"chance_hits_sd", d.chance_sd},
                           {"chance", d.chance()},
                           {"z", d.z()},
                           {"depends_on_fill", fill_dependent}});
    }
    Json learned = {{"locks", r.learned_locks},
                    {"seed", options.learned_seed},
                    {"training_kernels", r.learned_training_units},
                    {"features", r.learned_features},
                    {"weights", r.learned_weights}};
    Json j = {{"model", model_path},
              {"fill", to_string(key.header.fill)},
              {"flagged", r.flagged},
              {"chance", r.chance()},
              {"far_from_median", {{"hits", r.hits_far}, {"precision", r.precision_far()}}},
              {"smallest", {{"hits", r.hits_small}, {"precision", r.precision_small()}}},
              {"oracle",
               {{"hits", r.hits},
                {"precision", r.precision()},
                {"chance_hits_mean", r.oracle_chance_hits},
                {"chance_hits_sd", r.oracle_chance_sd},
                {"chance", r.oracle_chance()},
                {"z", r.oracle_z()},
                {"permutations", r.permutations}}},
              {"detectors", detectors},
              {"learned", learned},
              {"at_chance", at_chance},
              {"layers", layers}};
    if (json) {
      std::printf("%s\n", j.dump().c_str());
      return 0;
    }
    std::printf("%-32s %8s %9s %10s %9s %10s\n", "tensor", "units", "extracted", "hits far",
                "hits small", "zero units");
    for (const auto& l : r.layers) {
      std::printf("%-32s %8lld %9lld %10lld %9lld %10lld\n", l.tensor.c_str(),
                  static_cast<long long>(l.units), static_cast<long long>(l.extracted),
                  static_cast<long long>(l.hits_far), static_cast<long long>(l.hits_small),
                  static_cast<long long>(l.exact_zero));
    }
    std::printf(
        "\nfill %s: each detector flags as many units as were extracted, per tensor it scores; "
        "chance: the "
        "same flags against %d random sets of units\n",
        to_string(key.header.fill), r.permutations);
    std::printf("%-16s %7s %8s %7s %10s %16s %7s\n", "detector", "tensors", "flagged", "hits",
                "precision", "chance (sd)", "z");
    for (const auto& d : r.detectors) {
      std::printf("%-16s %7lld %8lld %7lld %9s%% %9s (%4s) %7s%s\n", d.name.c_str(),
                  static_cast<long long>(d.tensors), static_cast<long long>(d.flagged),
                  static_cast<long long>(d.hits), pct(100.0 * d.precision()).c_str(),
                  fixed(d.chance_hits, 1).c_str(), fixed(d.chance_sd, 1).c_str(),
                  fixed(d.z(), 2).c_str(),
                  d.name == "position" ? "  (does not depend on the fill)" : "");
    }
    if (r.learned_locks > 0) {
      std::printf("learned: trained on %lld kernels of %d locks of this model (seeds %llu..)\n",
                  static_cast<long long>(r.learned_training_units), r.learned_locks,
                  static_cast<unsigned long long>(options.learned_seed));
    }
    std::printf("%s\n",
                at_chance
                    ? "every detector that depends on the fill is at chance (z <= 3)"
                    : "ABOVE chance (z > 3): the locked weights give extracted positions away");
    return 0;
  }
};

}  // namespace

std::unique_ptr<Command> make_predict() { return std::make_unique<Predict>(); }

std::unique_ptr<Command> make_detect() { return std::make_unique<Detect>(); }

}  // namespace corelocker::cli
