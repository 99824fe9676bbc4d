// The malloc settings both corelocker binaries start with.
#pragma once

#include <malloc.h>

#include <climits>
#include <cstdlib>
#include <cstring>

namespace corelocker::cli {

// LibTorch takes every tensor from malloc. glibc serves blocks above its mmap threshold (at most
// 32 MiB) with a fresh mmap and unmaps them on free, so a network whose activations are larger
// faults every page of them in again on every batch: evaluating preresnet-164 spent 12.8 of
// 20.3 s in the kernel (6.6 M page faults for 500 images). Serving every block from the heap
// and keeping freed memory for the next batch removes that (6.9 s, 0.2 M faults; peak resident
// memory 751 -> 827 MiB; docs/benchmarks.md). CORELOCKER_MALLOC=system keeps glibc's defaults.
inline void tune_allocator() {
  const char* mode = std::getenv("CORELOCKER_MALLOC");
  if (mode != nullptr && std::strcmp(mode, "system") == 0) return;
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, INT_MAX);
}

}  // namespace corelocker::cli
