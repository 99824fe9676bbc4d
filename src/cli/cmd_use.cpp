// `predict` (inference through an in-memory unlock) and `detect` (what a locked model gives away).
#include <cstdio>

#include "cli/commands.h"
#include "cli/common.h"
#include "data/idx.h"
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
                        " bytes, not a positive multiple of one " + std::to_string(in.channels) + "x" +
                        std::to_string(in.height) + "x" + std::to_string(in.width) + " image (" +
                        std::to_string(per_image) + " bytes)");
    }
    shape = {static_cast<int64_t>(data.size()) / per_image, in.channels, in.height, in.width};
  } else {
    IdxArray a = read_idx_file(path);
    if (a.dims.size() == 3) a.dims.insert(a.dims.begin() + 1, 1);
    if (a.dims.size() != 4 || a.dims[1] != in.channels || a.dims[2] != in.height || a.dims[3] != in.width) {
      std::string got;
      for (auto d : a.dims) got += (got.empty() ? "" : "x") + std::to_string(d);
      throw FormatError("images '" + path + "' are " + got + ", the model takes Nx" + std::to_string(in.channels) + "x" +
                        std::to_string(in.height) + "x" + std::to_string(in.width));
    }
    data = std::move(a.data);
    for (auto d : a.dims) shape.push_back(d);
  }
  return torch::from_blob(data.data(), shape, torch::kUInt8).clone();
}

}  // namespace

void add_predict(CLI::App& app) {
  auto* c = app.add_subcommand("predict", "Classify images with a locked model unlocked in memory (nothing written)");
  static std::string model_path, input;
  static std::vector<std::string> key_paths;
  static bool raw = false, json = false;
  static int top = 1;
  static Common common;
  static KeyAccess access;
  c->add_option("--model", model_path, "Model (locked or not)")->required();
  c->add_option("--key", key_paths, "Key(s) to unlock with in memory, tier 1 first");
  c->add_option("--input", input, "Images: IDX (.gz or plain), or raw bytes with --raw")->required();
  c->add_flag("--raw", raw, "Input is raw uint8 images in the model's input shape, back to back");
  c->add_option("--top", top, "Classes to print per image")->capture_default_str()->check(CLI::Range(1, 1000));
  c->add_flag("--json", json, "Print one JSON object");
  add_key_access(c, access, /*writing=*/false);
  add_threads(c, common);
  handlers()[c] = [] {
    apply_threads(common);
    LoadedModel model = key_paths.empty() ? load_model(model_path) : load_unlocked(model_path, read_keys(key_paths, access));
    torch::Tensor images = read_images(input, raw, model.meta);
    torch::NoGradGuard no_grad;
    model.net->eval();
    Json out = Json::array();
    const int k = std::min<int>(top, static_cast<int>(model.meta.classes));
    for (int64_t i = 0; i < images.size(0); i += 256) {
      const int64_t b = std::min<int64_t>(256, images.size(0) - i);
      auto probs = torch::softmax(model.net->forward(preprocess_batch(images.narrow(0, i, b), model.meta.preprocess, false)), 1);
      auto [p, cls] = probs.topk(k, 1);
      for (int64_t j = 0; j < b; ++j) {
        Json row = {{"index", i + j}, {"classes", Json::array()}, {"probabilities", Json::array()}};
        std::string line = std::to_string(i + j) + ":";
        for (int t = 0; t < k; ++t) {
          row["classes"].push_back(cls[j][t].item<int64_t>());
          row["probabilities"].push_back(p[j][t].item<double>());
          line += " " + std::to_string(cls[j][t].item<int64_t>()) + " (" + fixed(p[j][t].item<double>(), 3) + ")";
        }
        if (!json) std::printf("%s\n", line.c_str());
        out.push_back(row);
      }
    }
    if (json) std::printf("%s\n", Json{{"model", model_path}, {"locked", model.meta.lock.has_value()}, {"predictions", out}}.dump().c_str());
    return 0;
  };
}

void add_detect(CLI::App& app) {
  auto* c = app.add_subcommand("detect", "Audit a locked model: can the extracted units be found from its weights alone?");
  static std::string model_path, key_path;
  static bool json = false;
  static KeyAccess access;
  c->add_option("--model", model_path, "Locked model")->required();
  c->add_option("--key", key_path, "Its key: the ground truth the detector is scored against")->required();
  c->add_flag("--json", json, "Print one JSON object");
  add_key_access(c, access, /*writing=*/false);
  handlers()[c] = [] {
    LoadedModel model = load_model(model_path);
    const KeyFile key = read_keys({key_path}, access).front();
    if (model_fingerprint(model) != key.header.locked_fingerprint) {
      throw MismatchError("key '" + key_path + "' does not apply to '" + model_path + "' (fingerprints differ)");
    }
    DetectionReport r = detect_extracted(named_tensors(*model.net), key);
    Json layers = Json::array();
    for (const auto& l : r.layers) {
      layers.push_back({{"tensor", l.tensor}, {"units", l.units}, {"extracted", l.extracted}, {"hits", l.hits},
                        {"hits_far_from_median", l.hits_far}, {"hits_smallest", l.hits_small},
                        {"exact_zero_units", l.exact_zero}});
    }
    const bool at_chance = r.oracle_z() <= 3.0;
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
              {"at_chance", at_chance},
              {"layers", layers}};
    if (json) {
      std::printf("%s\n", j.dump().c_str());
      return 0;
    }
    std::printf("%-32s %8s %9s %10s %9s %10s\n", "tensor", "units", "extracted", "hits far", "hits small",
                "zero units");
    for (const auto& l : r.layers) {
      std::printf("%-32s %8lld %9lld %10lld %9lld %10lld\n", l.tensor.c_str(), static_cast<long long>(l.units),
                  static_cast<long long>(l.extracted), static_cast<long long>(l.hits_far),
                  static_cast<long long>(l.hits_small), static_cast<long long>(l.exact_zero));
    }
    std::printf("\nfill %s: each attacker flags %lld units (as many as were extracted, per tensor)\n",
                to_string(key.header.fill), static_cast<long long>(r.flagged));
    std::printf("  norm furthest from median: %lld extracted, precision %s%% (chance %s%%)\n",
                static_cast<long long>(r.hits_far), pct(100.0 * r.precision_far()).c_str(), pct(100.0 * r.chance()).c_str());
    std::printf("  smallest norm:             %lld extracted, precision %s%% (chance %s%%)\n",
                static_cast<long long>(r.hits_small), pct(100.0 * r.precision_small()).c_str(),
                pct(100.0 * r.chance()).c_str());
    std::printf("  better of the two per tensor (oracle): %lld extracted, precision %s%%; on random units it gets "
                "%s +- %s (%d draws): z = %s, %s\n",
                static_cast<long long>(r.hits), pct(100.0 * r.precision()).c_str(), fixed(r.oracle_chance_hits, 1).c_str(),
                fixed(r.oracle_chance_sd, 1).c_str(), r.permutations, fixed(r.oracle_z(), 2).c_str(),
                at_chance ? "at chance" : "ABOVE chance: the locked weights give extracted positions away");
    return 0;
  };
}

}  // namespace corelocker::cli
