// The options of `lock`, `unlock`, `fingerprint` and `inspect` that every model format reads,
// declared once for both binaries: the torch-free `corelocker` front parses exactly these, and
// `corelocker-torch` adds the options of formats whose models run (data, evaluation, tiers).
// Torch-free.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "cli/key_access.h"
#include "formats/format.h"

namespace corelocker::cli {

extern const char* const kCriterionHelp;
extern const char* const kScopeHelp;
extern const char* const kIncludeIoHelp;
extern const char* const kExcludeIoHelp;

struct LockArgs {
  std::string model, out, key_out, criterion, scope, fill = "zero";
  std::string units = "l1";  // drawn by --criterion random: l1 | bn
  uint64_t seed = 0;         // --criterion random
  double ratio = 0.05;
  bool include_io = false, exclude_io = false;
  std::vector<std::string> keep;
  int threads = 0;  // 0: all cores
  KeyAccess access;
};
void add_lock_options(CLI::App* c, LockArgs& a);
// The request the options make (units by resolve_units). Throws UsageError.
LockRequest lock_request(const LockArgs& a);

struct UnlockArgs {
  std::string model, out;
  std::vector<std::string> keys;
  unsigned threads = 0;
  KeyAccess access;
};
void add_unlock_options(CLI::App* c, UnlockArgs& a);

struct InspectArgs {
  std::string file;
  bool json = false;
  KeyAccess access;
};
void add_fingerprint_options(CLI::App* c, InspectArgs& a);
void add_inspect_options(CLI::App* c, InspectArgs& a);

// The commands themselves, the same in both binaries: each prints its report and returns the
// exit code. Throw corelocker errors.
int run_lock(const ModelFormat& format, LockRequest& request, const KeyAccess& access);
int run_unlock(const ModelFormat& format, const UnlockArgs& a);
int run_fingerprint(const ModelFormat& format, const InspectArgs& a);
// A key file is described by the key reader, any other file by its format.
int run_inspect(const FormatRegistry& formats, const InspectArgs& a);

}  // namespace corelocker::cli
