// corelocker command-line tool: parses arguments, calls the library, prints. One try/catch;
// exit codes 0 success, 1 failure, 2 usage error, 3 authentication failure.
#include <CLI/CLI.hpp>
#include <malloc.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cli/commands.h"
#include "util/error.h"

namespace {

// LibTorch takes every tensor from malloc. glibc serves blocks above its mmap threshold (at most
// 32 MiB) with a fresh mmap and unmaps them on free, so a network whose activations are larger
// faults every page of them in again on every batch: evaluating preresnet-164 spent 12.8 of
// 20.3 s in the kernel (6.6 M page faults for 500 images). Serving every block from the heap
// and keeping freed memory for the next batch removes that (6.9 s, 0.2 M faults; peak resident
// memory 751 -> 827 MiB; docs/benchmarks.md). CORELOCKER_MALLOC=system keeps glibc's defaults.
void tune_allocator() {
  const char* mode = std::getenv("CORELOCKER_MALLOC");
  if (mode != nullptr && std::strcmp(mode, "system") == 0) return;
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, INT_MAX);
}

}  // namespace

int main(int argc, char** argv) {
  tune_allocator();
  CLI::App app{"corelocker: neuron-level usage control for neural networks (CoreLocker, S&P 2024)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("corelocker ") + CORELOCKER_VERSION);
  corelocker::cli::register_commands(app);
  try {
    app.parse(argc, argv);
    return corelocker::cli::run_selected(app);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const corelocker::UsageError& e) {
    std::fprintf(stderr, "corelocker: usage error: %s\n", e.what());
    return 2;
  } catch (const corelocker::AuthError& e) {
    std::fprintf(stderr, "corelocker: %s\n", e.what());
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "corelocker: error: %s\n", e.what());
    return 1;
  }
}
