// corelocker: the command users run. It serves `lock`, `unlock`, `fingerprint` and `inspect` of
// safetensors files itself, without LibTorch: loading LibTorch (registering its operators) takes
// 0.43 s here, more than copying a 1 GiB file, and these commands never touch a tensor library.
// Everything else, and any arguments this parser does not accept (--help, options that do not
// apply to safetensors files, typos), goes unchanged to `corelocker-torch`, the whole tool,
// installed beside this binary (execv), which answers exactly as it always has.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cli/allocator.h"
#include "cli/exit_codes.h"
#include "cli/format_options.h"
#include "cli/key_access.h"
#include "cli/sibling.h"
#include "formats/format.h"

namespace {

using namespace corelocker;
using namespace corelocker::cli;

// The four commands with the options every format reads (format_options.h); corelocker-torch
// adds its own to the same groups. tests/test_cli_safetensors.cpp runs both binaries on the
// same files.
struct Commands {
  CLI::App* lock;
  CLI::App* unlock;
  CLI::App* fingerprint;
  CLI::App* inspect;
  LockArgs lock_args;
  UnlockArgs unlock_args;
  InspectArgs inspect_args;  // only one subcommand is parsed
};

void add_commands(CLI::App& app, Commands& c) {
  c.lock = app.add_subcommand("lock");
  add_lock_options(c.lock, c.lock_args);
  c.unlock = app.add_subcommand("unlock");
  add_unlock_options(c.unlock, c.unlock_args);
  c.fingerprint = app.add_subcommand("fingerprint");
  add_fingerprint_options(c.fingerprint, c.inspect_args);
  c.inspect = app.add_subcommand("inspect");
  add_inspect_options(c.inspect, c.inspect_args);
}

[[noreturn]] void hand_over(char** argv) {
  std::string path = sibling_binary("corelocker-torch");  // the whole tool
  if (path.empty()) path = "corelocker-torch";
  std::fflush(nullptr);
  ::execv(path.c_str(), argv);
  std::fprintf(stderr, "corelocker: error: cannot run '%s' (the rest of the tool): %s\n",
               path.c_str(), std::strerror(errno));
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string command = argc >= 2 ? argv[1] : "";
  if (command != "lock" && command != "unlock" && command != "fingerprint" && command != "inspect")
    hand_over(argv);
  tune_allocator();
  CLI::App app;
  app.require_subcommand(1);
  Commands c;
  add_commands(app, c);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError&) {
    hand_over(argv);  // help, options of other formats, mistakes: the whole tool answers
  }
  FormatRegistry& formats = model_formats();
  register_safetensors_format(formats);  // the formats served without LibTorch
  const std::string& file = c.lock->parsed()     ? c.lock_args.model
                            : c.unlock->parsed() ? c.unlock_args.model
                                                 : c.inspect_args.file;
  const ModelFormat* format = formats.find(file);
  if (format == nullptr) hand_over(argv);
  return exit_code_of(app, [&] {
    if (c.lock->parsed()) {
      LockRequest r = lock_request(c.lock_args);
      if (!serves(*format, r)) hand_over(argv);  // --fill decoy: LibTorch draws the decoys
      return run_lock(*format, r, c.lock_args.access);
    }
    if (c.unlock->parsed()) return run_unlock(*format, c.unlock_args);
    if (c.fingerprint->parsed()) return run_fingerprint(*format, c.inspect_args);
    return run_inspect(formats, c.inspect_args);
  });
}
