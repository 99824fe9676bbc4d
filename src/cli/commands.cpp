#include "cli/commands.h"

#include <set>
#include <string>

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
    // These commands share their work out over a group; any other launched as one would run
    // whole on every rank, each writing the same files.
    static const std::set<std::string> kShared = {"train", "attack", "sweep", "calibrate", "bands"};
    if (kShared.count(sub->get_name()) == 0) {
      if (const auto group = group_config()) {
        throw UsageError(
            "`" + sub->get_name() + "` runs in one process, but was launched as rank " +
            std::to_string(group->rank) + " of a group of " + std::to_string(group->size) +
            " (WORLD_SIZE): launch it once (train, attack, sweep, calibrate and bands "
            "run over a group)");
      }
    }
    return it->second();
  }
  throw UsageError("no command given (see --help)");
}

}  // namespace corelocker::cli
