// `bench-safetensors`: writes a synthetic safetensors file of a given size (conv and linear F32
// tensors), then times `cp`, `corelocker lock`, `corelocker unlock` and `corelocker fingerprint`
// of it on this machine in one run, each as a child process whose peak resident set (ru_maxrss) is
// reported, and checks that the restored file equals the original byte for byte.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/sibling.h"
#include "formats/safetensors.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::cli {
namespace {

struct StepResult {
  double seconds = 0.0;
  double peak_mib = 0.0;
};

// Runs argv as a child process; its wall time and peak resident set. Throws Error when it fails.
StepResult run_child(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) throw IoError("cannot fork: " + std::string(std::strerror(errno)));
  if (pid == 0) {
    // the child's own output (lock/unlock summaries) is not part of the benchmark
    if (std::freopen("/dev/null", "w", stdout) == nullptr) ::_exit(127);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  int status = 0;
  struct rusage ru {};
  if (::wait4(pid, &status, 0, &ru) < 0)
    throw IoError("wait4 failed: " + std::string(std::strerror(errno)));
  const auto t1 = std::chrono::steady_clock::now();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw Error("benchmark step '" + argv[0] + " " + (argv.size() > 1 ? argv[1] : "") +
                "' failed (status " + std::to_string(status) + ")");
  }
  return {std::chrono::duration<double>(t1 - t0).count(),
          static_cast<double>(ru.ru_maxrss) / 1024.0};
}

// Conv and linear layers adding up to about `bytes` of F32 data, in network order.
std::vector<StSpec> synthetic_layers(uint64_t bytes) {
  std::vector<StSpec> s;
  uint64_t total = 0;
  auto add = [&](const std::string& name, std::vector<uint64_t> shape) {
    uint64_t n = 4;
    for (auto d : shape) n *= d;
    s.push_back({name, "F32", std::move(shape)});
    total += n;
  };
  add("conv1.weight", {64, 3, 3, 3});
  add("conv1.bias", {64});
  for (int i = 0; i < 8 && total + 512 * 512 * 9 * 4 < bytes / 4; ++i) {
    add("features." + std::to_string(i) + ".conv.weight", {512, i == 0 ? 64u : 512u, 3, 3});
    add("features." + std::to_string(i) + ".conv.bias", {512});
  }
  const uint64_t head = 10 * 4096 * 4 + 40;
  for (int i = 0; total + head < bytes; ++i) {
    const uint64_t rows = std::min<uint64_t>(4096, (bytes - total - head) / (4096 * 4 + 4));
    if (rows == 0) break;
    add("classifier." + std::to_string(i) + ".weight", {rows, 4096});
    add("classifier." + std::to_string(i) + ".bias", {rows});
  }
  add("fc.weight", {10, 4096});
  add("fc.bias", {10});
  return s;
}

void write_synthetic(const std::string& path, const std::vector<StSpec>& specs) {
  uint64_t total = 0;
  for (const auto& t : specs) {
    uint64_t n = 4;
    for (auto d : t.shape) n *= d;
    total += n;
  }
  StWriter w(path, st_make_header(specs, {{"format", "pt"}}), total);
  std::vector<float> buf(uint64_t{4} << 20);
  uint64_t state = 0x9e3779b97f4a7c15ull;
  for (uint64_t left = total; left > 0;) {
    const uint64_t n = std::min<uint64_t>(left, buf.size() * 4);
    for (uint64_t i = 0; i < n / 4; ++i) {
      state ^= state << 13;  // xorshift64: values uniform in [-1, 1)
      state ^= state >> 7;
      state ^= state << 17;
      buf[i] = static_cast<float>(static_cast<double>(state >> 11) / 4503599627370496.0 - 1.0);
    }
    w.write(buf.data(), n);
    left -= n;
  }
  w.commit();
}

// The timed lock command: the default lock unless a criterion is named.
std::vector<std::string> lock_argv(const std::string& exe, const std::string& src,
                                   const std::string& locked, const std::string& key, double ratio,
                                   const std::string& criterion) {
  std::vector<std::string> argv = {exe,    "lock",      "--model", src,       "--out",
                                   locked, "--key-out", key,       "--ratio", fixed(ratio, 6)};
  if (!criterion.empty()) argv.insert(argv.end(), {"--criterion", criterion});
  return argv;
}

}  // namespace

void add_bench_safetensors(CLI::App& app) {
  auto* c = app.add_subcommand(
      "bench-safetensors",
      "Time cp, lock and unlock of a synthetic safetensors file and report peak memory");
  static double size_gib = 1.0, ratio = 0.05;
  static std::string dir;
  static int repeat = 3;
  static bool keep = false;
  static std::string binary, lock_criterion;
  c->add_option("--size-gib", size_gib, "Size of the synthetic file in GiB")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 64.0));
  c->add_option("--dir", dir, "Folder for the files (needs about 4x the size free)")->required();
  c->add_option("--ratio", ratio, "Extraction ratio of the lock")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  c->add_option("--repeat", repeat, "Runs of each step (the median is compared)")
      ->capture_default_str()
      ->check(CLI::Range(1, 20));
  c->add_option(
      "--criterion", lock_criterion,
      "Lock with this criterion (l1: the paper's per-layer lock, the one timed before the default "
      "lock "
      "existed; default: the default lock, global ranking with the first and last layers)");
  c->add_flag("--keep", keep, "Keep the files");
  c->add_option("--binary", binary,
                "corelocker binary to time (default: the one beside this; e.g. an older build)");
  handlers()[c] = [] {
    const std::string src = dir + "/bench.safetensors", copy = dir + "/bench-copy.safetensors";
    const std::string locked = dir + "/bench-locked.safetensors", key = dir + "/bench.clk";
    const std::string restored = dir + "/bench-restored.safetensors";
    const std::string exe =
        binary.empty() ? sibling_binary("corelocker") : binary;  // the binary users run
    if (exe.empty()) throw IoError("cannot find the corelocker binary (/proc/self/exe)");
    const auto specs =
        synthetic_layers(static_cast<uint64_t>(size_gib * double(uint64_t{1} << 30)));
    const auto t0 = std::chrono::steady_clock::now();
    write_synthetic(src, specs);
    const double write_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const StFile info(src);
    const double file_mib = double(info.map.size()) / double(1 << 20);
    double load[3] = {};
    const int got_load = ::getloadavg(load, 3);
    std::printf(
        "synthetic file %s: %.1f MiB, %zu tensors (%zu conv/linear weights), written in %.2f s\n",
        src.c_str(), file_mib, specs.size(), specs.size() / 2, write_s);
    std::printf("binary timed: %s\n", exe.c_str());
    std::printf("lock timed: %s\n", lock_criterion.empty()
                                        ? "the default lock (l1, global, first/last included)"
                                        : ("--criterion " + lock_criterion).c_str());
    std::printf(
        "load average before: %s\n",
        got_load == 3
            ? (fixed(load[0], 2) + " " + fixed(load[1], 2) + " " + fixed(load[2], 2)).c_str()
            : "unknown");
    struct Step {
      const char* name;
      std::vector<std::string> argv;
      std::vector<StepResult> runs;
    };
    std::vector<Step> steps = {
        {"cp", {"cp", src, copy}, {}},
        {"cp + sync FILE", {"sh", "-c", "cp \"$0\" \"$1\" && sync \"$1\"", src, copy}, {}},
        {"lock", lock_argv(exe, src, locked, key, ratio, lock_criterion), {}},
        {"unlock", {exe, "unlock", "--model", locked, "--key", key, "--out", restored}, {}},
        // one BLAKE2b pass over the file: a lock makes two, an unlock two over the touched tensors
        {"fingerprint", {exe, "fingerprint", src}, {}},
    };
    for (int r = 0; r < repeat; ++r) {
      for (auto& s : steps) {
        s.runs.push_back(run_child(s.argv));
        std::printf("  run %d %-15s %7.2f s  peak %8.1f MiB\n", r + 1, s.name,
                    s.runs.back().seconds, s.runs.back().peak_mib);
      }
    }
    const MappedFile original(src), back(restored);  // whole-file comparison, as cmp does
    const bool same =
        original.size() == back.size() &&
        (original.size() == 0 || std::memcmp(original.data(), back.data(), original.size()) == 0);
    auto median = [](std::vector<StepResult> v, double StepResult::*f) {
      std::sort(v.begin(), v.end(),
                [&](const StepResult& a, const StepResult& b) { return a.*f < b.*f; });
      return v[v.size() / 2].*f;
    };
    const double cp_s = median(steps[0].runs, &StepResult::seconds);
    std::printf(
        "\n| step | median s | x cp | peak MiB (max) | x file size |\n|---|---|---|---|---|\n");
    for (const auto& s : steps) {
      double peak = 0;
      for (const auto& r : s.runs) peak = std::max(peak, r.peak_mib);
      const double m = median(s.runs, &StepResult::seconds);
      std::printf("| %s | %.2f | %.2f | %.1f | %.3f |\n", s.name, m, m / cp_s, peak,
                  peak / file_mib);
    }
    const double lock_x = median(steps[2].runs, &StepResult::seconds) / cp_s;
    const double unlock_x = median(steps[3].runs, &StepResult::seconds) / cp_s;
    double peak = 0;
    for (size_t i = 2; i < 4; ++i)
      for (const auto& r : steps[i].runs) peak = std::max(peak, r.peak_mib);
    std::printf("\nrestored file identical to the original: %s\n", same ? "yes" : "NO");
    std::printf(
        "bar lock <= 2x cp: %s (%.2fx); unlock <= 2x cp: %s (%.2fx); peak < 1.5x file: %s "
        "(%.3fx)\n",
        lock_x <= 2.0 ? "met" : "NOT met", lock_x, unlock_x <= 2.0 ? "met" : "NOT met", unlock_x,
        peak < 1.5 * file_mib ? "met" : "NOT met", peak / file_mib);
    if (got_load == 3 && ::getloadavg(load, 3) == 3) {
      std::printf("load average after: %s %s %s\n", fixed(load[0], 2).c_str(),
                  fixed(load[1], 2).c_str(), fixed(load[2], 2).c_str());
    }
    if (!keep) {
      for (const auto& p : {src, copy, locked, key, restored}) std::remove(p.c_str());
    }
    return same ? 0 : 1;
  };
}

}  // namespace corelocker::cli
