// The corelocker subcommands. Each is a Command: its options are members, add() declares them on
// the parser (bound to those members), run() does the work with them once parsed. No command
// keeps state outside its object, and none reads the parser back by option name.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <vector>

namespace corelocker::cli {

class Command {
 public:
  virtual ~Command() = default;
  // Adds the subcommand and its options to `app`; returns the subcommand. The options write into
  // members of this object, which must outlive the parse.
  virtual CLI::App* add(CLI::App& app) = 0;
  // Runs the subcommand with the parsed options; returns the exit code. Throws corelocker errors.
  virtual int run() = 0;
  // The subcommand add() made (for options that need it: group agreement, help).
  CLI::App* sub = nullptr;
};

// One factory per subcommand (cmd_*.cpp).
std::unique_ptr<Command> make_train();
std::unique_ptr<Command> make_eval();
std::unique_ptr<Command> make_models();
std::unique_ptr<Command> make_lock();
std::unique_ptr<Command> make_unlock();
std::unique_ptr<Command> make_fingerprint();
std::unique_ptr<Command> make_inspect();
std::unique_ptr<Command> make_formats();
std::unique_ptr<Command> make_demo();
std::unique_ptr<Command> make_predict();
std::unique_ptr<Command> make_detect();
std::unique_ptr<Command> make_bench();
std::unique_ptr<Command> make_sweep();
std::unique_ptr<Command> make_calibrate();
std::unique_ptr<Command> make_bands();
std::unique_ptr<Command> make_attack();
std::unique_ptr<Command> make_analyze();
std::unique_ptr<Command> make_bench_safetensors();

using Commands = std::vector<std::unique_ptr<Command>>;

// Makes every subcommand and adds it with its options to `app`.
Commands register_commands(CLI::App& app);

// Runs the subcommand the user selected; returns the exit code. Throws corelocker errors.
int run_selected(CLI::App& app, const Commands& commands);

}  // namespace corelocker::cli
