// corelocker-torch: the whole command-line tool (parses arguments, calls the library, prints).
// Users run `corelocker` (front_main.cpp), which hands every command it does not serve itself
// to this binary. One try/catch; exit codes 0 success, 1 failure, 2 usage error, 3
// authentication failure.
#include <CLI/CLI.hpp>
#include <string>

#include "cli/allocator.h"
#include "cli/commands.h"
#include "cli/exit_codes.h"
#include "formats/format.h"
#include "formats/safetensors/st_torch.h"

int main(int argc, char** argv) {
  corelocker::cli::tune_allocator();
  // Every format this binary serves; the LibTorch one last, since it takes any file the others
  // do not recognise.
  corelocker::FormatRegistry& formats = corelocker::model_formats();
  corelocker::register_safetensors_format(formats, corelocker::safetensors_torch_parts());
  corelocker::register_onnx_format(formats);
  corelocker::register_libtorch_format(formats);
  CLI::App app{"corelocker: neuron-level usage control for neural networks (CoreLocker, S&P 2024)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("corelocker ") + CORELOCKER_VERSION);
  const corelocker::cli::Commands commands = corelocker::cli::register_commands(app);
  return corelocker::cli::exit_code_of(app, [&] {
    app.parse(argc, argv);
    return corelocker::cli::run_selected(app, commands);
  });
}
