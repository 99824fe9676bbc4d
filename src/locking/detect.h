// What an attacker can learn from a locked model alone: which units look extracted. Used to
// check that a decoy fill hides the key's positions (and that zero fill does not).
//
// Every detector ranks the units of each tensor the key touches and flags as many as the key
// extracted there (an attacker who even knows the counts), exactly-zero units first. Its hits
// are held against its own permutation baseline: the same flags scored against seeded random
// sets of units of the same counts (mean and sd over the draws), z = (hits - mean) / sd.
//
//   far_from_median  unit l1 norm furthest from the tensor's median (every unit)
//   smallest         smallest unit l1 norm (every unit)
//   norm_twin        unit l1 norm nearest another unit's, relative (every unit): a decoy scaled
//                    to a donor's exact norm pairs with it
//   roughness        highest sum of squared differences between neighbouring kernel elements
//                    over the energy (conv kernels and whole filters, kernels of 2+ elements)
//   corr_filter      lowest mean cosine with the other kernels of the same filter (conv kernels)
//   corr_channel     lowest mean cosine with the other kernels of the same input channel
//   twin             highest |cosine| with another kernel of the tensor under flips and turns
//                    (conv kernels): a decoy copied from a kernel pairs with it
//   position         highest mean log norm of the other kernels of the same filter and input
//                    channel (conv kernels). It never looks at the unit itself, so no fill can
//                    change what it finds: it measures how predictable the criterion's positions
//                    are from their surroundings
//   learned          logistic regression on per-kernel features (conv kernels; see
//                    DetectOptions), trained on locks the attacker makes of the locked model
//   oracle           the better of far_from_median and smallest per tensor, chosen with the truth
//                    in hand (a reference, not an attack; its baseline is higher than the plain
//                    chance rate)
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "keyfile/key_file.h"
#include "models/checkpoint.h"
#include "models/network.h"

namespace corelocker {

struct DetectionLayer {
  std::string tensor;
  int64_t units = 0;       // units of this tensor (at the key's granularity)
  int64_t extracted = 0;   // truly extracted, per the key
  int64_t flagged = 0;     // each attacker flags as many units as were extracted
  int64_t hits_far = 0;    // hits of the attacker flagging norms furthest from the median
  int64_t hits_small = 0;  // hits of the attacker flagging the smallest norms
  int64_t hits = 0;        // the better of the two for this tensor (an oracle's choice)
  int64_t exact_zero = 0;  // units that are exactly zero
  // Hits of every detector that scores this tensor, by detector name (the oracle excluded).
  std::vector<std::pair<std::string, int64_t>> detector_hits;
};

// One detector over the tensors it can score.
struct DetectorResult {
  std::string name;
  int64_t tensors = 0, units = 0, flagged = 0, hits = 0;
  double chance_hits = 0.0, chance_sd = 0.0;  // over the permutation draws
  double precision() const { return flagged ? double(hits) / double(flagged) : 0.0; }
  double chance() const { return flagged ? chance_hits / double(flagged) : 0.0; }
  // Hits above the permutation mean, in permutation standard deviations.
  double z() const;
};

struct DetectionReport {
  std::vector<DetectionLayer> layers;
  int64_t flagged = 0, hits = 0, hits_far = 0, hits_small = 0, extracted = 0, units = 0;
  // The oracle's hits when the "extracted" units are drawn at random instead (same count per
  // tensor): mean and sample sd over `permutations` draws. Picking the better attacker per
  // tensor with the truth in hand beats the plain rate even on random units; this is the
  // chance level to hold the oracle against.
  double oracle_chance_hits = 0.0, oracle_chance_sd = 0.0;
  int permutations = 0;
  // Every detector (the oracle last), each with its own permutation baseline.
  std::vector<DetectorResult> detectors;
  // The learned detector's training: locks made, their kernels, and the fitted weights (one per
  // feature, then the bias). Empty when it did not run.
  int learned_locks = 0;
  int64_t learned_training_units = 0;
  std::vector<std::string> learned_features;
  std::vector<double> learned_weights;

  double precision() const { return rate(hits); }
  double precision_far() const { return rate(hits_far); }
  double precision_small() const { return rate(hits_small); }
  // What flagging at random would hit: the extracted share of each tensor, weighted.
  double chance() const;
  double oracle_chance() const { return rate(oracle_chance_hits); }
  // Oracle hits above its chance level, in permutation standard deviations.
  double oracle_z() const;
  // The detector of this name, or nullptr.
  const DetectorResult* detector(const std::string& name) const;

 private:
  double rate(double h) const { return flagged ? h / double(flagged) : 0.0; }
};

struct DetectOptions {
  int permutations = 200;
  // The learned detector: `learned_locks` training locks (0: no learned detector), made by
  // locking a copy of the locked model again with the key's options (criterion, scope, ratio,
  // fill: what the locked model's metadata records) and decoy seeds learned_seed, +1, ...; no
  // decoy search. Its features, standardised within each tensor, each also as its absolute
  // value: log l1 norm, roughness, centre share, corr_filter, corr_channel, sign balance
  // (|sum| / l1), sparsity (l1 / l2 / sqrt(elements)), peak share, twin, Mahalanobis distance of
  // the shape under the tensor's kernel covariance, log norm gap (norm_twin). Class-weighted
  // logistic loss, L2 penalty `learned_l2`, L-BFGS from zero.
  int learned_locks = 0;
  uint64_t learned_seed = 1;
  double learned_l2 = 1e-3;
};

// Runs every detector except the learned one on `tensors` against the key's positions (the key
// is the ground truth for scoring only). Throws MismatchError when the key names tensors the
// model lacks, UsageError for fewer than 2 permutations.
DetectionReport detect_extracted(const std::vector<NamedTensor>& tensors, const KeyFile& truth,
                                 int permutations = 200);

// Same on a locked model's tensors, with the learned detector when options.learned_locks > 0:
// its training locks rank copies of `tensors` by `structure` (the model's layers, as the lock
// ranked them) with the key's options. `tensors` are not modified. Throws what the other overload
// throws, and UsageError when the key's options cannot lock the model again.
DetectionReport detect_extracted(const std::vector<NamedTensor>& tensors,
                                 const Structure& structure, const KeyFile& truth,
                                 const DetectOptions& options);
// Same on a loaded locked model (its tensors and structure).
DetectionReport detect_extracted(LoadedModel& locked, const KeyFile& truth,
                                 const DetectOptions& options);

}  // namespace corelocker
