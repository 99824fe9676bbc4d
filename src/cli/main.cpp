// corelocker command-line tool: parses arguments, calls the library, prints. One try/catch;
// exit codes 0 success, 1 failure, 2 usage error, 3 authentication failure.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "cli/commands.h"
#include "util/error.h"

int main(int argc, char** argv) {
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
