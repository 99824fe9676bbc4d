#include "cli/commands.h"

#include <algorithm>
#include <set>
#include <string>

#include "cli/common.h"
#include "distributed/group.h"
#include "util/error.h"

namespace corelocker::cli {

Commands register_commands(CLI::App& app) {
  Commands commands;
  for (auto make :
       {make_train, make_eval, make_lock, make_unlock, make_fingerprint, make_inspect, make_formats,
        make_models, make_demo, make_predict, make_detect, make_bench, make_sweep, make_calibrate,
        make_bands, make_attack, make_analyze, make_bench_safetensors}) {
    commands.push_back(make());
    commands.back()->sub = commands.back()->add(app);
  }
  return commands;
}

int run_selected(CLI::App& app, const Commands& commands) {
  for (auto* sub : app.get_subcommands()) {
    const auto it =
        std::find_if(commands.begin(), commands.end(),
                     [sub](const std::unique_ptr<Command>& c) { return c->sub == sub; });
    if (it == commands.end()) continue;
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
    return (*it)->run();
  }
  throw UsageError("no command given (see --help)");
}

}  // namespace corelocker::cli
