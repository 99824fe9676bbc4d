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
#include "cli/format_report.h"
#include "cli/key_access.h"
#include "cli/sibling.h"
#include "formats/format.h"
#include "locking/defaults.h"

namespace {

using namespace corelocker;
using namespace corelocker::cli;

// The options of the four commands as corelocker-torch defines them for these files (cmd_lock.cpp);
// tests/test_cli_safetensors.cpp runs both binaries on the same files.
struct Args {
  std::string model, out, key_out, criterion, scope, fill = "zero";
  double ratio = 0.05;
  bool include_io = false, exclude_io = false, json = false;
  int threads = 0;
  std::vector<std::string> keys, keep;
  KeyAccess access;  // only one subcommand is parsed
};

struct Commands {
  CLI::App* lock;
  CLI::App* unlock;
  CLI::App* fingerprint;
  CLI::App* inspect;
};

Commands add_commands(CLI::App& app, Args& a) {
  Commands c{};
  c.lock = app.add_subcommand("lock");
  c.lock->add_option("--model", a.model)->required();
  c.lock->add_option("--criterion", a.criterion);
  c.lock->add_option("--ratio", a.ratio)->capture_default_str()->check(CLI::Range(0.0, 1.0));
  c.lock->add_option("--scope", a.scope);
  c.lock->add_option("--fill", a.fill)->capture_default_str();
  auto* io = c.lock->add_flag("--include-io", a.include_io);
  c.lock->add_flag("--exclude-io", a.exclude_io)->excludes(io);
  c.lock->add_option("--keep", a.keep);
  c.lock->add_option("--out", a.out)->required();
  c.lock->add_option("--key-out", a.key_out)->required();
  add_key_access(c.lock, a.access, /*writing=*/true);
  c.lock->add_option("--threads", a.threads)->check(CLI::NonNegativeNumber);

  c.unlock = app.add_subcommand("unlock");
  c.unlock->add_option("--model", a.model)->required();
  c.unlock->add_option("--key", a.keys)->required();
  c.unlock->add_option("--out", a.out)->required();
  add_key_access(c.unlock, a.access, /*writing=*/false);
  c.unlock->add_option("--threads", a.threads)->check(CLI::NonNegativeNumber);

  c.fingerprint = app.add_subcommand("fingerprint");
  c.fingerprint->add_option("file", a.model)->required();

  c.inspect = app.add_subcommand("inspect");
  c.inspect->add_option("file", a.model)->required();
  c.inspect->add_flag("--json", a.json);
  add_key_access(c.inspect, a.access, /*writing=*/false);
  return c;
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
  Args a;
  const Commands c = add_commands(app, a);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError&) {
    hand_over(argv);  // help, options the safetensors path lacks, mistakes: the whole tool answers
  }
  FormatRegistry& formats = model_formats();
  register_safetensors_format(formats);  // the formats served without LibTorch
  const ModelFormat* format = formats.find(a.model);
  if (format == nullptr) hand_over(argv);
  const unsigned threads = static_cast<unsigned>(a.threads);
  return exit_code_of(app, [&] {
    if (c.lock->parsed()) {
      LockRequest r;
      r.in = a.model;
      r.out = a.out;
      r.key_out = a.key_out;
      r.units = resolve_units(a.criterion, a.scope, a.include_io, a.exclude_io);
      r.criterion_named = !a.criterion.empty();
      r.ratio = a.ratio;
      r.fill = parse_fill(a.fill);
      r.keep = a.keep;
      r.threads = threads;
      check_lock_request(*format, r);
      KeyCommit keys(credentials(a.access));
      print_lock_report(r, format->lock(r, keys));
      return 0;
    }
    if (c.unlock->parsed()) {
      const UnlockReport rep = format->unlock(a.model, read_keys(a.keys, a.access), a.out, threads);
      print_unlock_report(a.model, a.out, a.keys.size(), rep);
      return 0;
    }
    if (c.fingerprint->parsed()) {
      std::printf("%s\n", to_hex(format->fingerprint(a.model, 0)).c_str());
      return 0;
    }
    nlohmann::ordered_json j = format->describe(a.model);
    j["file"] = a.model;
    if (a.json)
      std::printf("%s\n", j.dump().c_str());
    else
      print_json_as_text(j);
    return 0;
  });
}
