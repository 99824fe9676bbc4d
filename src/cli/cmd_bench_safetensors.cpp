// `bench-safetensors`: times cp, lock, unlock and fingerprint of a synthetic safetensors file on
// this machine in one run (bench/safetensors_bench.h) and prints the table.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "bench/safetensors_bench.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/sibling.h"
#include "util/error.h"

namespace corelocker::cli {

namespace {

struct BenchSafetensors : Command {
  SafetensorsBenchOptions o;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand(
        "bench-safetensors",
        "Time cp, lock and unlock of a synthetic safetensors file and report peak memory");
    c->add_option("--size-gib", o.size_gib, "Size of the synthetic file in GiB")
        ->capture_default_str()
        ->check(CLI::Range(0.001, 64.0));
    c->add_option("--dir", o.dir, "Folder for the files (needs about 4x the size free)")
        ->required();
    c->add_option("--ratio", o.ratio, "Extraction ratio of the lock")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 1.0));
    c->add_option("--repeat", o.repeat, "Runs of each step (the median is compared)")
        ->capture_default_str()
        ->check(CLI::Range(1, 20));
    c->add_option(
        "--criterion", o.criterion,
        "Lock with this criterion (l1: the paper's per-layer lock, the one timed before the "
        "default lock existed; default: the default lock, global ranking with the first and last "
        "layers)");
    c->add_flag("--keep", o.keep, "Keep the files");
    c->add_option("--binary", o.binary,
                  "corelocker binary to time (default: the one beside this; e.g. an older build)");
    return c;
  }

  int run() override {
    SafetensorsBenchOptions opts = o;
    if (opts.binary.empty()) opts.binary = sibling_binary("corelocker");  // the binary users run
    if (opts.binary.empty()) throw IoError("cannot find the corelocker binary (/proc/self/exe)");
    double load[3] = {};
    const int got_load = ::getloadavg(load, 3);
    const auto on_file = [&](const SafetensorsBenchReport& r) {
      std::printf(
          "synthetic file %s: %.1f MiB, %zu tensors (%zu conv/linear weights), written in %.2f s\n",
          r.file.c_str(), r.file_mib, r.tensors, r.tensors / 2, r.write_seconds);
      std::printf("binary timed: %s\n", opts.binary.c_str());
      std::printf("lock timed: %s\n", opts.criterion.empty()
                                          ? "the default lock (l1, global, first/last included)"
                                          : ("--criterion " + opts.criterion).c_str());
      std::printf(
          "load average before: %s\n",
          got_load == 3
              ? (fixed(load[0], 2) + " " + fixed(load[1], 2) + " " + fixed(load[2], 2)).c_str()
              : "unknown");
    };
    const auto on_run = [](const BenchStep& s, int run) {
      std::printf("  run %d %-15s %7.2f s  peak %8.1f MiB\n", run + 1, s.name.c_str(),
                  s.runs.back().seconds, s.runs.back().peak_mib);
    };
    const SafetensorsBenchReport r = run_safetensors_bench(opts, on_file, on_run);
    const double cp_s = r.step("cp").median_seconds();
    std::printf(
        "\n| step | median s | x cp | peak MiB (max) | x file size |\n|---|---|---|---|---|\n");
    for (const auto& s : r.steps) {
      const double m = s.median_seconds();
      std::printf("| %s | %.2f | %.2f | %.1f | %.3f |\n", s.name.c_str(), m, m / cp_s, s.peak_mib(),
                  s.peak_mib() / r.file_mib);
    }
    const double lock_x = r.step("lock").median_seconds() / cp_s;
    const double unlock_x = r.step("unlock").median_seconds() / cp_s;
    const double peak = std::max(r.step("lock").peak_mib(), r.step("unlock").peak_mib());
    std::printf("\nrestored file identical to the original: %s\n",
                r.restored_identical ? "yes" : "NO");
    std::printf(
        "bar lock <= 2x cp: %s (%.2fx); unlock <= 2x cp: %s (%.2fx); peak < 1.5x file: %s "
        "(%.3fx)\n",
        lock_x <= 2.0 ? "met" : "NOT met", lock_x, unlock_x <= 2.0 ? "met" : "NOT met", unlock_x,
        peak < 1.5 * r.file_mib ? "met" : "NOT met", peak / r.file_mib);
    if (got_load == 3 && ::getloadavg(load, 3) == 3) {
      std::printf("load average after: %s %s %s\n", fixed(load[0], 2).c_str(),
                  fixed(load[1], 2).c_str(), fixed(load[2], 2).c_str());
    }
    return r.restored_identical ? 0 : 1;
  }
};

}  // namespace

std::unique_ptr<Command> make_bench_safetensors() { return std::make_unique<BenchSafetensors>(); }

}  // namespace corelocker::cli
