// Pieces shared by the subcommands: option groups, the handler registry, number formatting.
#pragma once

#include <CLI/CLI.hpp>
#include <csignal>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "attacks/effective.h"
#include "cli/format_options.h"
#include "cli/key_access.h"
#include "data/dataset.h"
#include "distributed/group.h"
#include "formats/format.h"
#include "locking/lock.h"
#include "models/checkpoint.h"
#include "models/input_override.h"
#include "train/trainer.h"
#include "util/stats.h"

namespace corelocker::cli {

using Json = nlohmann::json;

// Options shared by commands that touch data or compute.
struct Common {
  int threads = 0;
  std::string data_dir;
  int64_t test_subset = 0;
};

// How to feed a model: its data set and preprocessing (--dataset --mean --std --pad --pad-value
// --pad-after-normalise --resize --channels), the same options on every command that evaluates or
// trains a model. A model file that stores them (our checkpoints always; a TorchScript file once
// corelocker wrote it: `lock`, `calibrate`, `unlock`) is fed as stored, and an option that
// disagrees with the stored value is a usage error; a TorchScript file straight from PyTorch stores
// nothing, and the options apply over Fashion-MNIST defaults. Files corelocker writes store what it
// used.
using InputArgs = InputOverride;  // models/input_override.h
void add_input_args(CLI::App* c, InputArgs& a);
// The commands apply them with apply_input_override (models/input_override.h).
// Refuses a model file whose format (formats/format.h) lacks `feature`, the feature `command`
// needs; the message gives the format's reason. Throws UsageError / FormatError.
void require_runnable(const std::string& path, Feature feature, const char* command);

void add_threads(CLI::App* c, Common& o);

// The one Ctrl-C handler: while one of these lives, Ctrl-C asks a long command (train, sweep) to
// stop at the next point it checks (after the step or evaluation in flight), keeping what was
// done; the previous handler comes back when it goes out of scope.
class StopOnSigint {
 public:
  StopOnSigint();
  ~StopOnSigint();
  StopOnSigint(const StopOnSigint&) = delete;
  StopOnSigint& operator=(const StopOnSigint&) = delete;
  bool stopped() const;

 private:
  void (*previous_)(int) = SIG_DFL;
};
void add_data(CLI::App* c, Common& o);
// Sets LibTorch's thread count (default: all cores, shared among a group's ranks on this host,
// LOCAL_WORLD_SIZE); returns it.
int apply_threads(const Common& o, int ranks_on_host = 1);
// The options given to subcommand `c` on its command line, name -> values as typed.
Json given_options(const CLI::App* c);
// The group of processes the environment describes, or none: applies the threads (the host's
// cores shared among its ranks), has the ranks agree on the options given to `c`, and discards
// the standard output of every rank but 0, which alone reports.
std::unique_ptr<Group> join_command_group(const CLI::App* c, const Common& o);
// The test split of the model's data set, or the requested subset of it.
Dataset test_set(const ModelMeta& meta, const Common& o);

std::string pct(double v);  // "12.34"

// Options of `train` (also used by `demo`).
struct TrainArgs {
  std::string arch = "resnet20";
  std::string dataset = "fashion-mnist";
  int64_t depth = 0;             // 0: the architecture's default
  int64_t width = 0;             // 0: the architecture's default
  std::vector<std::string> set;  // KEY=VALUE architecture options
  bool flip = false;             // force horizontal flips (on by default for CIFAR)
  int64_t train_subset = 0;
  TrainOptions opts;
  // Written after every epoch (with CHECKPOINT.optim holding the optimizer state) when not
  // empty; with `resume`, training goes on from it.
  std::string checkpoint;
  bool resume = false;
};
void add_train_args(CLI::App* c, TrainArgs& a);
// Builds (or, with a.resume, reloads) and trains a model with terminal progress. Ctrl-C stops
// training at the end of the current step: summary_out["interrupted"] is then true and the
// model is the one of the last completed epoch's checkpoint (if any).
// `collective`: data-parallel over a group, progress shown by its rank 0 only.
LoadedModel train_model(const TrainArgs& a, const Common& common, Json& summary_out,
                        Collective* collective = nullptr);

// Options that say which units compete, with the same meaning as in `lock`: --criterion,
// --scope, --seed, --units, --include-io, --exclude-io. add_unit_args returns the --criterion
// option.
struct UnitArgs {
  std::string criterion;  // empty: the default lock (locking/defaults.h)
  std::string scope;
  std::string units = "l1";
  uint64_t seed = 0;
  bool include_io = false, exclude_io = false;
};
CLI::Option* add_unit_args(CLI::App* c, UnitArgs& a, bool random_allowed);
// The options as LockOptions (ratio unset). Throws UsageError.
LockOptions lock_options(const UnitArgs& a);
// The units a utility band is searched over (calibrate, bands, lock --tier-bands): as
// resolve_units, except that without --criterion and --include-io the first and last layers are
// left out. A stem with a few dozen kernels moves the accuracy 30-40 points per kernel on models
// trained elsewhere, so a ranking that holds them jumps over most bands; the full lock keeps them.
UnitChoice band_units(const std::string& criterion, const std::string& scope, bool include_io,
                      bool exclude_io);
LockOptions band_lock_options(const UnitArgs& a);

// The validation split: a seeded subset of the TRAINING split, never the test split.
struct ValArgs {
  int64_t size = 5000;
  uint64_t seed = 1;
};
void add_val_args(CLI::App* c, ValArgs& v);
Dataset validation_set(const ModelMeta& meta, const Common& common, const ValArgs& v);

// The effective accuracy (attacks/effective.h): --reestimate-images N unlabelled training images
// (seeded by --reestimate-seed) for the BatchNorm re-estimation.
struct EffectiveArgs {
  int64_t reestimate_images = 512;
  uint64_t seed = 0;
  EffectiveOptions options() const;
};
void add_effective_args(CLI::App* c, EffectiveArgs& a);
// The re-estimation images from the training split of the model's data set.
Dataset effective_images(const ModelMeta& meta, const Common& common, const EffectiveArgs& a);
// "top-1 14.08%, after BN re-estimation 83.06%, pruned 0.20 / 0.40: 14.10 / 13.20%;
// effective 83.06%"
std::string effective_text(const EffectiveEval& e);
// What `eval` prints for a model: one line, or with `json` one object with `extra` merged in.
void print_eval(const std::string& model, const EvalResult& r, bool json,
                const Json& extra = Json::object());
// The same for a locked model: plain, re-estimated, pruned and effective top-1.
void print_eval(const std::string& model, const EffectiveEval& e, bool json,
                const Json& extra = Json::object());

}  // namespace corelocker::cli
