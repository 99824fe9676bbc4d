// The corelocker subcommands.
#pragma once

#include <CLI/CLI.hpp>

namespace corelocker::cli {

// One function per subcommand (cmd_*.cpp); each adds its options and handler.
void add_train(CLI::App& app);
void add_eval(CLI::App& app);
void add_models(CLI::App& app);
void add_lock(CLI::App& app);
void add_unlock(CLI::App& app);
void add_fingerprint(CLI::App& app);
void add_inspect(CLI::App& app);
void add_formats(CLI::App& app);
void add_demo(CLI::App& app);
void add_predict(CLI::App& app);
void add_detect(CLI::App& app);
void add_bench(CLI::App& app);
void add_sweep(CLI::App& app);
void add_calibrate(CLI::App& app);
void add_bands(CLI::App& app);
void add_attack(CLI::App& app);
void add_analyze(CLI::App& app);
void add_bench_safetensors(CLI::App& app);

// Adds every subcommand and its options to `app`.
void register_commands(CLI::App& app);

// Runs the subcommand the user selected; returns the exit code. Throws corelocker errors.
int run_selected(CLI::App& app);

}  // namespace corelocker::cli
