// `bench`: training and evaluation speed of every architecture, beside the same network in
// Python PyTorch (bench/speed.h).
#include <cstdio>
#include <optional>

#include "bench/speed.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "models/checkpoint.h"

namespace corelocker::cli {

namespace {

struct Bench : Command {
  std::vector<std::string> archs;
  std::string dataset = "cifar10";
  int64_t batch = 128, steps = 6;
  PeerCommand peer;
  bool no_peer = false;
  Common common;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand(
        "bench", "Train / eval images per second of each architecture, beside Python PyTorch");
    c->add_option("--arch", archs, "Architectures (default: all)");
    c->add_option("--dataset", dataset, "Data set whose input shape and classes to use")
        ->capture_default_str();
    c->add_option("--batch-size", batch, "Batch size")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    c->add_option("--steps", steps, "Timed batches per measurement (plus one warm-up)")
        ->capture_default_str()
        ->check(CLI::Range(2, 10000));
    c->add_option("--python", peer.python, "Python with PyTorch for the peer")
        ->capture_default_str();
    c->add_option("--peer", peer.script, "The peer script")->capture_default_str();
    c->add_flag("--no-peer", no_peer, "Measure corelocker only");
    add_threads(c, common);
    return c;
  }

  int run() override {
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
      const Speed ours = measure_speed(arch, dataset, batch, steps);
      std::string error;
      const std::optional<Speed> theirs =
          no_peer ? std::nullopt : peer_speed(peer, arch, meta, batch, steps, threads, error);
      if (theirs && theirs->parameters != ours.parameters) {
        error = "peer network has " + std::to_string(theirs->parameters) + " parameters, ours " +
                std::to_string(ours.parameters);
      }
      auto cell = [&](double v) { return theirs ? fixed(v, 1) : std::string("-"); };
      std::printf("%-10s %11lld | %10s %10s %6s | %10s %10s %6s\n", arch.c_str(),
                  static_cast<long long>(ours.parameters), fixed(ours.train_ips, 1).c_str(),
                  cell(theirs ? theirs->train_ips : 0.0).c_str(),
                  theirs ? fixed(ours.train_ips / theirs->train_ips, 2).c_str() : "-",
                  fixed(ours.eval_ips, 1).c_str(), cell(theirs ? theirs->eval_ips : 0.0).c_str(),
                  theirs ? fixed(ours.eval_ips / theirs->eval_ips, 2).c_str() : "-");
      if (!error.empty()) std::printf("  (%s)\n", error.c_str());
      std::fflush(stdout);
    }
    return 0;
  }
};

}  // namespace

std::unique_ptr<Command> make_bench() { return std::make_unique<Bench>(); }

}  // namespace corelocker::cli
