#include "bench/speed.h"

#include <array>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <vector>

#include "eval/evaluate.h"
#include "models/checkpoint.h"
#include "train/trainer.h"

namespace corelocker {
namespace {

// Random uint8 images of the data set's shape: speed does not depend on the pixels.
Dataset synthetic(const ModelMeta& meta, int64_t n) {
  Dataset d;
  d.images = torch::randint(0, 256, {n, meta.input.channels, meta.input.height, meta.input.width},
                            torch::kUInt8);
  d.labels = torch::randint(0, meta.classes, {n}, torch::kInt64);
  d.classes = meta.classes;
  return d;
}

}  // namespace

Speed measure_speed(const std::string& arch, const std::string& dataset, int64_t batch,
                    int64_t steps) {
  torch::manual_seed(0);
  LoadedModel m = create_model(new_model_meta(arch, dataset));
  Speed s;
  s.parameters = parameter_count(*m.net);
  Dataset data = synthetic(m.meta, batch * steps);
  TrainOptions o;
  o.epochs = 1;
  o.batch_size = batch;
  o.lr = 0.01;
  o.augment = false;
  std::vector<std::chrono::steady_clock::time_point> stamps;
  TrainHooks hooks;
  hooks.on_progress = [&](const TrainProgress&) {
    stamps.push_back(std::chrono::steady_clock::now());
  };
  train(*m.net, data, m.meta.preprocess, o, hooks);
  s.train_ips = double(batch * (steps - 1)) /
                std::chrono::duration<double>(stamps.back() - stamps.front()).count();
  evaluate(*m.net, select(data, torch::arange(batch, torch::kInt64)), m.meta.preprocess, batch);
  EvalResult r = evaluate(*m.net, data, m.meta.preprocess, batch);
  s.eval_ips = double(r.n) / r.seconds;
  return s;
}

std::optional<Speed> peer_speed(const PeerCommand& peer, const std::string& arch,
                                const ModelMeta& meta, int64_t batch, int64_t steps, int threads,
                                std::string& error) {
  std::string cmd = peer.python + " '" + peer.script + "' --arch " + arch + " --channels " +
                    std::to_string(meta.input.channels) + " --size " +
                    std::to_string(meta.input.height) + " --classes " +
                    std::to_string(meta.classes) + " --pad-to " +
                    std::to_string(meta.preprocess.pad_to) + " --batch " + std::to_string(batch) +
                    " --steps " + std::to_string(steps) + " --threads " + std::to_string(threads);
  for (const auto& [k, v] : meta.options) cmd += " --opt " + k + "=" + std::to_string(v);
  cmd += " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) {
    error = "cannot start " + peer.python;
    return std::nullopt;
  }
  std::string text;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) text.append(buf.data(), n);
  const int status = pclose(p);
  const auto line_start = text.rfind('{');
  const auto j = line_start == std::string::npos
                     ? nlohmann::json()
                     : nlohmann::json::parse(text.substr(line_start), nullptr, false);
  if (status != 0 || !j.is_object() || !j.contains("train_ips") || !j.contains("eval_ips") ||
      !j.contains("parameters") || !j["train_ips"].is_number() || !j["eval_ips"].is_number() ||
      !j["parameters"].is_number_integer()) {
    error = "peer failed: " + text.substr(0, 300);
    return std::nullopt;
  }
  Speed s;
  s.train_ips = j["train_ips"].get<double>();
  s.eval_ips = j["eval_ips"].get<double>();
  s.parameters = j["parameters"].get<int64_t>();
  return s;
}

}  // namespace corelocker
