#include "cli/commands.h"

#include "cli/common.h"
#include "distributed/group.h"
#include "util/error.h"

namespace corelocker::cli {

void register_commands(CLI::App& app) {
  add_train(app);
  add_eval(app);
  add_lock(app);
  add_unlock(app);
  add_fingerprint(app);
  add_inspect(app);
  add_formats(app);
  add_models(app);
  add_demo(app);
  add_predict(app);
  add_detect(app);
  add_bench(app);
  add_sweep(app);
  add_calibrate(app);
  add_bands(app);
  add_attack(app);
  add_analyze(app);
  add_bench_safetensors(app);
}

int run_selected(CLI::App& app) {
  for (auto* sub : app.get_subcommands()) {
    auto it = handlers().find(sub);
    if (it == handlers().end()) continue;
    // Only `train` and `attack` spread over a group; any other command launched as one would
    // run whole on every rank, each writing the same files.
    if (sub->get_name() != "train" && sub->get_name() != "attack") {
      if (const auto group = group_config()) {
        throw UsageError(
            "`" + sub->get_name() + "` runs in one process, but was launched as rank " +
            std::to_string(group->rank) + " of a group of " + std::to_string(group->size) +
            " (WORLD_SIZE): launch it once (only `train` and `attack` run over a group)");
      }
    }
    return it->second();
  }
  throw UsageError("no command given (see --help)");
}

}  // namespace corelocker::cli
