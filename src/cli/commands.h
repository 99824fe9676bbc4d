// The corelocker subcommands.
#pragma once

#include <CLI/CLI.hpp>

namespace corelocker::cli {

// Adds every subcommand and its options to `app`.
void register_commands(CLI::App& app);

// Runs the subcommand the user selected; returns the exit code. Throws corelocker errors.
int run_selected(CLI::App& app);

}  // namespace corelocker::cli
