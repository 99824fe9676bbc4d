// `bench`: training and evaluation speed of every architecture, beside the same network in
// Python PyTorch (bench/torch_peer.py) on the same threads and input shapes.
#include <array>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "eval/evaluate.h"
#include "models/checkpoint.h"
#include "train/trainer.h"
#include "util/error.h"

namespace corelocker::cli {
namespace {

struct Speed {
  double train_ips = 0.0, eval_ips = 0.0;
  int64_t parameters = 0;
};

// Random uint8 images of the data set's shape: speed does not depend on the pixels.
Dataset synthetic(const ModelMeta& meta, int64_t n) {
  Dataset d;
  d.images = torch::randint(0, 256, {n, meta.input.channels, meta.input.height, meta.input.width},
                            torch::kUInt8);
  d.labels = torch::randint(0, meta.classes, {n}, torch::kInt64);
  d.classes = meta.classes;
  return d;
}

Speed measure(const std::string& arch, const std::string& dataset, int64_t batch, int64_t steps) {
  torch::manual_seed(0);
  LoadedModel m = create_model(new_model_meta(arch, dataset));
  Speed s;
  s.parameters = parameter_count(*m.net);
  Dataset data = synthetic(m.meta, batch * steps);
  // Training: the library's own loop; the first step (allocations, oneDNN primitive creation)
  // is not timed.
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
  // Evaluation: one warm-up batch, then the library's evaluate.
  evaluate(*m.net, select(data, torch::arange(batch, torch::kInt64)), m.meta.preprocess, batch);
  EvalResult r = evaluate(*m.net, data, m.meta.preprocess, batch);
  s.eval_ips = double(r.n) / r.seconds;
  return s;
}

// Runs the Python peer; false (with `error`) when it cannot run or fails.
bool run_peer(const std::string& python, const std::string& peer, const std::string& arch,
              const ModelMeta& meta, int64_t batch, int64_t steps, int threads, Speed& out,
              std::string& error) {
  std::string cmd = python + " '" + peer + "' --arch " + arch + " --channels " +
                    std::to_string(meta.input.channels) + " --size " +
                    std::to_string(meta.input.height) + " --classes " +
                    std::to_string(meta.classes) + " --pad-to " +
                    std::to_string(meta.preprocess.pad_to) + " --batch " + std::to_string(batch) +
                    " --steps " + std::to_string(steps) + " --threads " + std::to_string(threads);
  for (const auto& [k, v] : meta.options) cmd += " --opt " + k + "=" + std::to_string(v);
  cmd += " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) {
    error = "cannot start " + python;
    return false;
  }
  std::string text;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) text.append(buf.data(), n);
  const int status = pclose(p);
  const auto line_start = text.rfind('{');
  Json j = line_start == std::string::npos ? Json()
                                           : Json::parse(text.substr(line_start), nullptr, false);
  if (status != 0 || !j.is_object() || !j.contains("train_ips")) {
    error = "peer failed: " + text.substr(0, 300);
    return false;
  }
  out.train_ips = j["train_ips"].get<double>();
  out.eval_ips = j["eval_ips"].get<double>();
  out.parameters = j["parameters"].get<int64_t>();
  return true;
}

}  // namespace

void add_bench(CLI::App& app) {
  auto* c = app.add_subcommand(
      "bench", "Train / eval images per second of each architecture, beside Python PyTorch");
  static std::vector<std::string> archs;
  static std::string dataset = "cifar10";
  static int64_t batch = 128, steps = 6;
  static std::string python = "/usr/bin/python3", peer = "bench/torch_peer.py";
  static bool no_peer = false;
  static Common common;
  c->add_option("--arch", archs, "Architectures (default: all)");
  c->add_option("--dataset", dataset, "Data set whose input shape and classes to use")
      ->capture_default_str();
  c->add_option("--batch-size", batch, "Batch size")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--steps", steps, "Timed batches per measurement (plus one warm-up)")
      ->capture_default_str()
      ->check(CLI::Range(2, 10000));
  c->add_option("--python", python, "Python with PyTorch for the peer")->capture_default_str();
  c->add_option("--peer", peer, "The peer script")->capture_default_str();
  c->add_flag("--no-peer", no_peer, "Measure corelocker only");
  add_threads(c, common);
  handlers()[c] = [] {
    apply_threads(common);
    const int threads = torch::get_num_threads();
    if (archs.empty()) {
      for (const auto& a : list_architectures()) archs.push_back(a.name);
    }
    std::printf(
        "batch %lld, %d threads, input of %s, %lld timed batches; images/s (higher is better)\n",
        static_cast<long long>(batch), threads, dataset.c_str(), static_cast<long long>(steps));
    std::printf("%-10s %11s | %10s %10s %6s | %10s %10s %6s\n", "arch", "parameters", "train",
                "pytorch", "ratio", "eval", "pytorch", "ratio");
    for (const auto& arch : archs) {
      const ModelMeta meta = new_model_meta(arch, dataset);
      Speed ours = measure(arch, dataset, batch, steps);
      Speed theirs;
      std::string error;
      const bool peer_ok =
          !no_peer && run_peer(python, peer, arch, meta, batch, steps, threads, theirs, error);
      if (peer_ok && theirs.parameters != ours.parameters) {
        error = "peer network has " + std::to_string(theirs.parameters) + " parameters, ours " +
                std::to_string(ours.parameters);
      }
      auto cell = [&](double v) { return peer_ok ? fixed(v, 1) : std::string("-"); };
      std::printf("%-10s %11lld | %10s %10s %6s | %10s %10s %6s\n", arch.c_str(),
                  static_cast<long long>(ours.parameters), fixed(ours.train_ips, 1).c_str(),
                  cell(theirs.train_ips).c_str(),
                  peer_ok ? fixed(ours.train_ips / theirs.train_ips, 2).c_str() : "-",
                  fixed(ours.eval_ips, 1).c_str(), cell(theirs.eval_ips).c_str(),
                  peer_ok ? fixed(ours.eval_ips / theirs.eval_ips, 2).c_str() : "-");
      if (!error.empty() && !no_peer) std::printf("  (%s)\n", error.c_str());
      std::fflush(stdout);
    }
    return 0;
  };
}

}  // namespace corelocker::cli
