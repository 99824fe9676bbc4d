// Timing of the safetensors path against `cp` (`corelocker bench-safetensors`): a synthetic file
// of conv and linear F32 tensors, then cp, lock, unlock and fingerprint of it, each as a child
// process whose wall time and peak resident set (ru_maxrss) are measured, and a byte comparison
// of the restored file with the original.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "formats/safetensors/safetensors.h"

namespace corelocker {

struct ChildRun {
  double seconds = 0.0;
  double peak_mib = 0.0;
};

// Runs argv as a child process, its standard output discarded; its wall time and peak resident
// set. Throws IoError when it cannot start, Error when it exits other than with status 0.
ChildRun run_timed_child(const std::vector<std::string>& argv);

// Conv and linear layers adding up to about `bytes` of F32 data, in network order.
std::vector<StSpec> synthetic_safetensors_layers(uint64_t bytes);
// Writes them (atomically) with values uniform in [-1, 1) from a fixed xorshift64 stream.
void write_synthetic_safetensors(const std::string& path, const std::vector<StSpec>& specs);

struct SafetensorsBenchOptions {
  double size_gib = 1.0;
  std::string dir;  // the files (about 4x the size)
  double ratio = 0.05;
  int repeat = 3;         // runs of each step; medians are compared
  std::string binary;     // the corelocker binary timed
  std::string criterion;  // empty: the default lock
  bool keep = false;      // keep the files
};

struct BenchStep {
  std::string name;  // "cp", "cp + sync FILE", "lock", "unlock", "fingerprint"
  std::vector<std::string> argv;
  std::vector<ChildRun> runs;
  double median_seconds() const;
  double peak_mib() const;  // the largest of the runs
};

struct SafetensorsBenchReport {
  std::string file;
  double file_mib = 0.0;
  size_t tensors = 0;
  double write_seconds = 0.0;
  std::vector<BenchStep> steps;  // in the order above
  bool restored_identical = false;
  const BenchStep& step(const std::string& name) const;  // throws Error for an unknown name
};

// Writes the synthetic file, calls `on_file` once it is written, runs every step `repeat` times
// (calling `on_run` after each run), compares the restored file with the original and removes the
// files unless `keep`. Throws Error when a step fails (the files stay then).
SafetensorsBenchReport run_safetensors_bench(
    const SafetensorsBenchOptions& o,
    const std::function<void(const SafetensorsBenchReport&)>& on_file,
    const std::function<void(const BenchStep&, int run)>& on_run);

}  // namespace corelocker
