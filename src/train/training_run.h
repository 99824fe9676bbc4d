// A training run as `train` and `demo` make it: a new model of an architecture trained on a data
// set, or (resume) the unfinished run a checkpoint records, going on from its last epoch with the
// optimizer state and random generator saved beside it. With a checkpoint path, the model and
// CHECKPOINT.optim are written after every epoch (the optimizer state first, so that a
// checkpoint on disk always has the state that goes with it).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "models/checkpoint.h"
#include "train/trainer.h"

namespace corelocker {

struct TrainingRun {
  std::string arch = "resnet20";
  std::string dataset = "fashion-mnist";
  std::map<std::string, int64_t> arch_options;  // e.g. depth, width
  bool flip = false;                            // force horizontal flips (on for CIFAR)
  int64_t train_subset = 0;                     // 0: the whole training split
  TrainOptions opts;
  std::string data_dir;    // "" : the data set's default folder
  std::string checkpoint;  // written after every epoch when not empty
  bool resume = false;     // go on from `checkpoint` with the options it records
  // Data-parallel over a group (see TrainHooks::collective): every rank runs the same run, rank 0
  // alone writes the checkpoint and its optimizer state (a resumed run reads them on every rank:
  // a shared folder, or copies at the same path). The ranks check at the start that they were
  // given the same options, data and initial weights.
  Collective* collective = nullptr;
};

struct TrainingRunHooks {
  std::function<void(const TrainProgress&)> on_progress;
  std::function<bool()> keep_going;  // false: stop at the end of the current step
  // A resumed run starts at `next_epoch` (1-based) of `epochs`.
  std::function<void(int next_epoch, int epochs)> on_resume;
};

// The optimizer state file beside a checkpoint.
std::string optimizer_state_path(const std::string& checkpoint);

// Runs the training. `summary_out` gets the training record stored in the model's metadata;
// when the run stopped early (keep_going), summary_out["interrupted"] is true and the model is
// the one of the last completed epoch's checkpoint (if any). Throws UsageError (nothing to
// resume, a checkpoint that is not of an unfinished run), FormatError / IoError.
LoadedModel run_training(const TrainingRun& run, const TrainingRunHooks& hooks,
                         nlohmann::json& summary_out);

}  // namespace corelocker
