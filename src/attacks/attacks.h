// Attacks that try to win back a locked model's utility without the key. Each works in place on
// a model and the attacker's data; the harness (attacks/harness.h) runs them over trials and
// measures them. None of them reads the test split.
//
//   finetune        train every parameter on the attacker's data (the paper, section 5.3)
//   reinit          re-initialise the positions that look extracted (as zero-retrain does), then
//                   fine-tune every parameter: at large ratios the locked values left in those
//                   positions are a worse start than a fresh draw
//   prune           global magnitude pruning of the smallest conv / linear weights, optionally
//                   followed by fine-tuning that keeps the pruned weights at zero
//   zero-retrain    find the positions that look extracted (whole zero conv kernels, zero linear
//                   weights, BatchNorm channels with gamma exactly 0), re-initialise them from
//                   the layer's weight distribution and train only them
//   bn-recalibrate  re-estimate BatchNorm running statistics on the attacker's data, optionally
//                   then train only the BatchNorm affine parameters
//   scratch         the same architecture from a random initialisation: the yardstick
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "models/checkpoint.h"
#include "train/trainer.h"

namespace corelocker {

// Progress of the training inside an attack (may be null).
using TrainCallback = std::function<void(const TrainProgress&)>;

enum class AttackKind { kFinetune, kReinit, kPrune, kZeroRetrain, kBnRecalibrate, kScratch };

const char* to_string(AttackKind k);
// "finetune", "reinit", "prune", "zero-retrain", "bn-recalibrate", "scratch". Throws UsageError.
AttackKind parse_attack_kind(const std::string& s);
// "all" (every attack) or a comma-separated list such as "finetune,reinit,scratch", in the
// order given. Throws UsageError naming an unknown or repeated entry.
std::vector<AttackKind> parse_attack_kinds(const std::string& list);
// Every attack, in the order `attack all` runs them.
std::vector<AttackKind> all_attack_kinds();

// Fine-tunes every parameter of `model` on `data`. Throws UsageError for bad options.
TrainSummary finetune(LoadedModel& model, const Dataset& data, const TrainOptions& options,
                      const TrainCallback& progress = nullptr);

struct PruneResult {
  int64_t pruned = 0;        // positions set to zero (exactly round(ratio * candidates))
  int64_t candidates = 0;    // conv / linear weight elements
  int64_t already_zero = 0;  // of the pruned positions, those that were zero before
  std::map<std::string, torch::Tensor> kept;  // weight name -> bool mask of surviving positions
};

// Sets the round(ratio * n) smallest-magnitude weights of all conv / linear layers (one global
// ranking over every weight element, first and last layer included) to zero. Ties are broken by
// position, so the count is exact. Throws UsageError when ratio is outside [0, 1].
PruneResult prune_smallest(LoadedModel& model, double ratio);

// Fine-tunes after pruning: every parameter trains but pruned positions stay zero.
TrainSummary finetune_pruned(LoadedModel& model, const PruneResult& pruned, const Dataset& data,
                             const TrainOptions& options, const TrainCallback& progress = nullptr);

// Positions of one tensor that look extracted.
struct Suspect {
  std::string tensor;
  torch::Tensor mask;  // bool, the tensor's shape; true = looks extracted
  int64_t units = 0;   // kernels, weights or channels found
  std::string unit;    // "kernel" (conv weight), "weight" (linear), "channel" (norm gamma), "bias"
};

// Finds what a lock that zero-fills leaves behind: conv kernels whose entries are all exactly 0,
// linear weights exactly 0, BatchNorm channels whose gamma is exactly 0 (with their beta), and
// the bias of a conv output channel whose whole filter is 0. Only layers of the structure are
// examined. Tensors where nothing is found are left out.
std::vector<Suspect> find_extracted(LoadedModel& model);

// Re-draws every suspect position from a normal distribution with the mean and standard deviation
// of the same tensor's other values (mean 0, sd 0.01 where there are too few), seeding the global
// generator with `seed`; every other value stays bit-for-bit. Returns the positions re-drawn.
// Throws Error when a suspect names a tensor the model does not have.
int64_t redraw_extracted(LoadedModel& model, const std::vector<Suspect>& suspects, uint64_t seed);

struct ZeroRetrainResult {
  std::vector<Suspect> suspects;
  int64_t positions = 0;  // parameter elements re-initialised and trained
  TrainSummary train;
};

// Re-initialises every suspect position from a normal distribution with the mean and standard
// deviation of the same tensor's other values (seeded by options.seed), then trains only those
// positions on `data`; every other parameter and all BatchNorm running statistics stay
// bit-for-bit. With no suspects nothing changes. Throws UsageError for bad options.
ZeroRetrainResult zero_retrain(LoadedModel& model, const Dataset& data, const TrainOptions& options,
                               const TrainCallback& progress = nullptr);

struct ReinitResult {
  std::vector<Suspect> suspects;
  int64_t positions = 0;  // parameter elements re-initialised before fine-tuning
  TrainSummary train;
};

// Finds the positions that look extracted (find_extracted), re-draws them as zero_retrain does
// (redraw_extracted, seeded by options.seed), then fine-tunes every parameter on `data` exactly as
// finetune does (no masks, BatchNorm running statistics update). With no suspects it is finetune.
// Throws UsageError for bad options.
ReinitResult reinit_finetune(LoadedModel& model, const Dataset& data, const TrainOptions& options,
                             const TrainCallback& progress = nullptr);

struct BnRecalibrateResult {
  int64_t layers = 0;  // BatchNorm layers recalibrated
  int64_t images = 0;  // images the statistics were estimated on
  TrainSummary train;  // when the affine parameters were trained
};

// Resets every BatchNorm layer's running statistics and re-estimates them as the plain average
// over batches of `data` (no augmentation, no gradients). With train_affine, then trains only the
// BatchNorm weights and biases with `options` (their running statistics keep updating as in
// ordinary training); otherwise only the running statistics (and num_batches_tracked) change.
// Throws UsageError when the model has no BatchNorm layer.
BnRecalibrateResult bn_recalibrate(LoadedModel& model, const Dataset& data,
                                   const TrainOptions& options, bool train_affine,
                                   const TrainCallback& progress = nullptr);

// A freshly initialised model of the same architecture, metadata and preprocessing as `meta`
// (seeded with `seed`), with no lock recorded. Reads nothing but the metadata. Built-in
// architectures only (UsageError otherwise).
LoadedModel scratch_model(const ModelMeta& meta, uint64_t seed);

struct PytorchInit {
  int64_t layers = 0;            // conv / linear / norm layers of the structure
  int64_t other_parameters = 0;  // parameters outside the structure
};

// Re-draws every parameter of `model` as PyTorch's layers initialise themselves
// (reset_parameters), seeding the global generator with `seed`, and resets BatchNorm running
// statistics (mean 0, variance 1, num_batches_tracked 0). Conv2d / Linear layers of the
// structure: weight kaiming_uniform_(a=sqrt(5)), that is U(-b, b) with b = 1/sqrt(fan_in), bias
// U(-b, b) with the same b; BatchNorm / LayerNorm: weight 1, bias 0. A parameter outside the
// structure (read by no conv2d, linear or norm call: an embedding, a learned scale, an LSTM gate)
// is drawn as a weight of its shape would be, U(-b, b) with b = 1/sqrt(fan_in) (fan_in: size(1)
// times the receptive field; for a 1-D tensor its length), so that no trained value survives.
// Other buffers (masks, index tables) are constants of the module and stay.
PytorchInit pytorch_default_init(LoadedModel& model, uint64_t seed);

// The scratch baseline for `like`: a built-in architecture is rebuilt from the metadata
// (scratch_model above); a TorchScript module is deep-copied and re-initialised with
// pytorch_default_init (`init`, when given, says what was re-drawn). No lock is recorded.
LoadedModel scratch_model(LoadedModel& like, uint64_t seed, PytorchInit* init = nullptr);

}  // namespace corelocker
