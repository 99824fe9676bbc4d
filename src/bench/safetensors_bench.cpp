#include "bench/safetensors_bench.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "util/error.h"

namespace corelocker {
namespace {

std::string ratio_argument(double r) {
  std::ostringstream s;
  s.precision(6);
  s << std::fixed << r;
  return s.str();
}

}  // namespace

ChildRun run_timed_child(const std::vector<std::string>& argv) {
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

std::vector<StSpec> synthetic_safetensors_layers(uint64_t bytes) {
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

void write_synthetic_safetensors(const std::string& path, const std::vector<StSpec>& specs) {
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

double BenchStep::median_seconds() const {
  if (runs.empty()) throw Error("benchmark step '" + name + "' has no runs");
  std::vector<double> v;
  for (const auto& r : runs) v.push_back(r.seconds);
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double BenchStep::peak_mib() const {
  double peak = 0.0;
  for (const auto& r : runs) peak = std::max(peak, r.peak_mib);
  return peak;
}

const BenchStep& SafetensorsBenchReport::step(const std::string& name) const {
  for (const auto& s : steps) {
    if (s.name == name) return s;
  }
  throw Error("no benchmark step '" + name + "'");
}

SafetensorsBenchReport run_safetensors_bench(
    const SafetensorsBenchOptions& o,
    const std::function<void(const SafetensorsBenchReport&)>& on_file,
    const std::function<void(const BenchStep&, int run)>& on_run) {
  const std::string src = o.dir + "/bench.safetensors", copy = o.dir + "/bench-copy.safetensors";
  const std::string locked = o.dir + "/bench-locked.safetensors", key = o.dir + "/bench.clk";
  const std::string restored = o.dir + "/bench-restored.safetensors";
  SafetensorsBenchReport report;
  report.file = src;
  const auto specs =
      synthetic_safetensors_layers(static_cast<uint64_t>(o.size_gib * double(uint64_t{1} << 30)));
  report.tensors = specs.size();
  const auto t0 = std::chrono::steady_clock::now();
  write_synthetic_safetensors(src, specs);
  report.write_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  report.file_mib = double(MappedFile(src).size()) / double(1 << 20);
  if (on_file) on_file(report);

  std::vector<std::string> lock = {
      o.binary, "lock",      "--model", src,       "--out",
      locked,   "--key-out", key,       "--ratio", ratio_argument(o.ratio)};
  if (!o.criterion.empty()) lock.insert(lock.end(), {"--criterion", o.criterion});
  report.steps = {
      {"cp", {"cp", src, copy}, {}},
      {"cp + sync FILE", {"sh", "-c", "cp \"$0\" \"$1\" && sync \"$1\"", src, copy}, {}},
      {"lock", lock, {}},
      {"unlock", {o.binary, "unlock", "--model", locked, "--key", key, "--out", restored}, {}},
      // one BLAKE2b pass over the file: a lock makes two, an unlock two over the touched tensors
      {"fingerprint", {o.binary, "fingerprint", src}, {}},
  };
  for (int r = 0; r < o.repeat; ++r) {
    for (auto& s : report.steps) {
      s.runs.push_back(run_timed_child(s.argv));
      if (on_run) on_run(s, r);
    }
  }
  {
    const MappedFile original(src), back(restored);  // whole-file comparison, as cmp does
    report.restored_identical =
        original.size() == back.size() &&
        (original.size() == 0 || std::memcmp(original.data(), back.data(), original.size()) == 0);
  }
  if (!o.keep) {
    for (const auto& p : {src, copy, locked, key, restored}) std::remove(p.c_str());
  }
  return report;
}

}  // namespace corelocker
