// What a locked model is worth to someone without the key who needs no labels and no training.
//
// A locked model's plain accuracy overstates the protection: re-estimating the BatchNorm running
// statistics on a few hundred unlabelled images undoes locks that mostly shift activations
// (EagleEye, ECCV 2020; docs/attacks.md), and pruning removes fills that stand out. The
// effective accuracy is the worst case over these free attacks: the highest top-1 among the plain
// model, the model after re-estimation, and global magnitude pruning at each ratio.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "eval/evaluate.h"
#include "models/checkpoint.h"

namespace corelocker {

struct ReestimateResult {
  int64_t layers = 0;   // BatchNorm layers whose statistics were re-estimated
  int64_t images = 0;   // images they were estimated on
  int64_t batches = 0;  // forward passes averaged
};

// Re-estimates the running mean and variance of every BatchNorm layer of the model's structure
// as the plain average of the batch statistics over `data` (batches of `batch_size`, no
// augmentation, no gradients, the whole network in training mode as PyTorch's update_bn does),
// and sets num_batches_tracked to the number of batches. Works for built-in networks and
// TorchScript modules alike, whatever momentum their layers were built with: before each batch
// the statistics are zeroed, so the layer leaves momentum x batch statistic behind, and the
// momentum is measured on the first batch (once with the variance at 0, once at 1, same random
// state). Parameters do not change; on failure the statistics are put back. Throws UsageError when
// the model has no BatchNorm layer with running statistics or `data` is empty; Error when a layer
// does not update its statistics in training mode (a traced TorchScript graph that fixed evaluation
// mode), naming the layer.
ReestimateResult reestimate_batchnorm(LoadedModel& model, const Dataset& data,
                                      int64_t batch_size = 128);

// The same on batches of network input that the caller prepares (preprocessed, as the model
// takes them; the Python module's data loaders): `next_batch` returns the next batch, or an
// undefined tensor when there are no more. Throws as above, and what `next_batch` throws.
using BatchSource = std::function<torch::Tensor()>;
ReestimateResult reestimate_batchnorm(LoadedModel& model, const BatchSource& next_batch);

// Why reestimate_batchnorm cannot work on this model, read from its structure and graph without
// running it: no BatchNorm layer keeps running statistics, or the graph fixes evaluation mode (a
// traced TorchScript module). Empty when it can.
std::string reestimation_unavailable(LoadedModel& model);

struct EffectiveOptions {
  int64_t reestimate_images = 512;                // unlabelled training images; 0: skip
  uint64_t seed = 0;                              // which images
  std::vector<double> prune_ratios = {0.2, 0.4};  // global magnitude pruning
  int64_t batch_size = 500;                       // evaluation
  int64_t reestimate_batch = 128;
};

struct PrunedEval {
  double ratio = 0.0;
  EvalResult eval;
};

struct EffectiveEval {
  EvalResult plain;
  // After BatchNorm re-estimation; empty when skipped (no BatchNorm layer, no images, or a graph
  // that cannot re-estimate), with the reason in `reestimate_note`.
  std::optional<EvalResult> reestimated;
  std::string reestimate_note;
  int64_t reestimate_images = 0;
  std::vector<PrunedEval> pruned;
  double top1_effective = 0.0;  // the highest top-1 of the above
  std::string worst = "plain";  // what gave it: "plain", "bn re-estimation", "prune 0.20"

  // Takes `top1`, measured as `what`, as the effective accuracy when it beats the highest so far.
  void consider(double top1, const std::string& what) {
    if (top1 > top1_effective) {
      top1_effective = top1;
      worst = what;
    }
  }
};

// Evaluates `model` (typically locked) on `test` plain, after re-estimating its BatchNorm
// statistics on `unlabelled` (the caller draws them from the training split; the labels are
// never read), and after pruning; the model ends bit for bit as it started, also when a step
// throws. Throws what evaluate throws.
EffectiveEval evaluate_effective(LoadedModel& model, const Dataset& test, const Dataset& unlabelled,
                                 const EffectiveOptions& options = {});

class Collective;

// The same evaluation shared by the ranks of a group: every rank calls it with the same model,
// data and options, and every rank returns the same result, equal to the one-process result bit
// for bit. The measurements (plain, after re-estimation, each pruning ratio) on slices of `test`
// cut at batch boundaries are the jobs of one queue of the group; each rank takes jobs until none
// is left, then reads every job's hits and adds them up. Throws what evaluate_effective throws
// (on every rank), and Error naming a rank that is gone.
EffectiveEval evaluate_effective(LoadedModel& model, const Dataset& test, const Dataset& unlabelled,
                                 const EffectiveOptions& options, Collective& group);

// The plain evaluation shared by the ranks of a group in the same way.
EvalResult evaluate_shared(LoadedModel& model, const Dataset& test, int64_t batch_size,
                           Collective& group);

// The images `evaluate_effective` re-estimates on: options.reestimate_images of the training
// split, drawn with options.seed (all of them when there are fewer).
Dataset reestimation_images(const Dataset& train_split, const EffectiveOptions& options);

// The effective accuracy as the tool reports it in JSON (`eval --json`, `attack`): top1, top3,
// images, top1_reestimated (null when not done, with reestimate_note), reestimate_images,
// top1_pruned by ratio ("0.20": top-1), top1_effective and effective_from.
nlohmann::json effective_to_json(const EffectiveEval& e);

}  // namespace corelocker
