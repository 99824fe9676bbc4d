// Supervised training: SGD with (Nesterov) momentum and weight decay, or Adam (the optimizer of
// the paper's section 5.1 study), a one-cycle or cosine learning-rate schedule, random-crop
// augmentation.
#pragma once

#include <functional>
#include <map>
#include <string>

#include "data/dataset.h"
#include "distributed/collective.h"
#include "models/network.h"

namespace corelocker {

struct TrainOptions {
  int epochs = 2;
  int64_t batch_size = 128;
  double lr = 0.1;                    // peak learning rate
  double momentum = 0.9;              // SGD only
  double weight_decay = 5e-4;         // SGD: added to the gradient; Adam: L2, as torch.optim.Adam
  std::string optimizer = "sgd";      // sgd | adam (betas 0.9, 0.999)
  std::string schedule = "onecycle";  // onecycle | cosine | constant
  bool augment = true;
  bool flip = false;  // horizontal flips (CIFAR); off for Fashion-MNIST
  uint64_t seed = 0;
  int start_epoch =
      0;  // epochs already done (resuming): the schedule and data order go on from there

  // Which parameters train, by name (null: all). The others stay exactly as they are.
  std::function<bool(const std::string& name)> trainable;
  // Parameter name -> mask of its shape (nonzero: may change). Masked-out positions keep their
  // values exactly: their gradients are zeroed and, since weight decay and momentum would still
  // move them, they are written back after every step. Parameters without a mask train freely.
  std::map<std::string, torch::Tensor> update_masks;
  // Keep BatchNorm layers in eval mode while training, so that their running statistics do not
  // change (the affine parameters still train unless `trainable` excludes them).
  bool freeze_bn_stats = false;
};

struct TrainProgress {
  int epoch = 0;  // 1-based
  int epochs = 0;
  int64_t step = 0;       // within the epoch, 1-based
  int64_t steps = 0;      // per epoch
  double loss = 0.0;      // running mean over the epoch
  double accuracy = 0.0;  // running train top-1 (percent)
  double lr = 0.0;
  double images_per_second = 0.0;
  double eta_seconds = 0.0;
  bool epoch_done = false;
};

struct TrainSummary {
  int epochs = 0;
  double seconds = 0.0;
  double final_loss = 0.0;
  double final_train_accuracy = 0.0;
  double sync_seconds = 0.0;  // of `seconds`, spent summing over a group (waits included)
};

// Learning rate at step t of T for a schedule peaking at `lr`. Throws UsageError.
double scheduled_lr(const std::string& schedule, double lr, int64_t t, int64_t total);

// Re-lays out every 4-D parameter in `format` (values unchanged).
void set_memory_format(torch::nn::Module& net, torch::MemoryFormat format);

struct TrainHooks {
  // After every step.
  std::function<void(const TrainProgress&)> on_progress;
  // Polled after every step; false stops training at the end of that step.
  std::function<bool()> keep_going;
  // Before the first step, to load optimizer state (momentum buffers) saved by on_epoch_end.
  std::function<void(torch::optim::Optimizer&)> restore;
  // After every completed epoch (1-based), with the network's weights in standard layout.
  std::function<void(int epoch, torch::optim::Optimizer&)> on_epoch_end;
  // Data-parallel training over a group of processes, each running this call with the same
  // network, data and options: every rank draws the same batch order and augmentation, runs
  // forward and backward on its slice of each global batch (options.batch_size images), and
  // the gradients are summed over the ranks (bucketed) before every step, so each step is the
  // one-process step up to floating-point summation order, except that BatchNorm normalises
  // each slice by its own statistics. BatchNorm running statistics (every floating-point
  // buffer) are averaged over the ranks at the end of every epoch. The loss, accuracy and a stop
  // (keep_going false on any rank) travel with the gradients: every rank reports the whole
  // batch and all stop at the same step. Null: one process.
  Collective* collective = nullptr;
};

// The global CPU generator's state (data order and augmentation draw from it), to be saved
// with a checkpoint in on_epoch_end and brought back in restore; set_rng_state throws Error
// for a state that is not one.
torch::Tensor rng_state();
void set_rng_state(const torch::Tensor& state);

// Trains in place from epoch options.start_epoch + 1 to options.epochs. A fresh run
// (start_epoch 0) seeds the global generator with options.seed; a resumed one whose restore
// hook brings back the optimizer and generator state saved at the end of the last epoch sees
// the same batches as an uninterrupted run. Throws UsageError for bad options.
TrainSummary train(Network& net, const Dataset& data, const Preprocess& pp,
                   const TrainOptions& options, const TrainHooks& hooks);

// The same with only the progress and stop callbacks.
// Trains in place (all parameters unless options.trainable / update_masks say otherwise).
// `on_progress` is called after every step; returning false from `keep_going`
// stops at the end of the current step. Throws UsageError for bad options (also for an update mask
// that names no parameter or has the wrong shape).
TrainSummary train(Network& net, const Dataset& data, const Preprocess& pp,
                   const TrainOptions& options,
                   const std::function<void(const TrainProgress&)>& on_progress = nullptr,
                   const std::function<bool()>& keep_going = nullptr);

}  // namespace corelocker
