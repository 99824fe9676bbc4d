// Locking and unlocking a model: its units ranked and planned (locking/selection.h), extracted
// into an access key (locking/extract.h), tiers, and the key's values written back.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "keyfile/key_file.h"
#include "locking/extract.h"
#include "locking/selection.h"
#include "models/checkpoint.h"

namespace corelocker {

struct LockStats {
  int64_t units = 0;       // units extracted, as the criterion counts them
  int64_t candidates = 0;  // units that competed
  int64_t values = 0;      // parameter elements moved into the key
  int64_t parameters = 0;  // parameter elements of the model (buffers excluded)
  double param_fraction() const { return parameters ? double(values) / double(parameters) : 0.0; }
};

struct LockOutcome {
  KeyFile key;
  LockStats stats;
};

// Locks a model in memory: selects the units at options.ratio (select_units), extracts, and
// records the lock in the model's metadata. Throws UsageError (bad options) / Error.
LockOutcome lock_model(LoadedModel& model, const LockOptions& options);

// Same, from a ranking computed before (reused across ratios or seeds).
LockOutcome lock_model(LoadedModel& model, const Ranking& ranking, double ratio);

// Decoy search: with a decoy fill, `tries` independent decoy fills are drawn and `score` (for
// example top-1 on a validation split of the training data) is called on the model in each
// locked state. kMatchZero keeps the draw whose score is nearest the zero-filled lock's (one
// more call, first): decoys then replace zeros without moving the utility the ratio was chosen
// for. kLowest keeps the lowest score. Decoys stay random draws from the model of the tensors'
// remaining units; the search only picks which draw. Ignored for zero fill. `seed` (tests,
// training locks) makes the draws reproducible: draw i uses seed + i; by default each draw's
// seed comes from the OS.
struct DecoySearch {
  enum class Target { kMatchZero, kLowest };
  int tries = 1;
  Target target = Target::kMatchZero;
  std::function<double(LoadedModel&)> score;
  std::optional<uint64_t> seed;
};
LockOutcome lock_model(LoadedModel& model, const Ranking& ranking, double ratio,
                       const DecoySearch& search);
// Same, selecting the units at options.ratio (no ranking to reuse).
LockOutcome lock_model(LoadedModel& model, const LockOptions& options, const DecoySearch& search);

// Unlocks a model in memory: applies the keys in order (tier keys: largest ratio first) and
// updates its lock metadata (cleared once the original is back). Nothing is written to disk.
// Throws MismatchError (key of another model, or a tier key out of order) / Error.
void unlock_model(LoadedModel& model, const KeyFile& key);
void unlock_model(LoadedModel& model, const std::vector<KeyFile>& keys);

// Loads a locked model and returns it unlocked with `keys`, without writing restored weights
// anywhere. Throws what load_model and unlock_model throw.
LoadedModel load_unlocked(const std::string& locked_path, const std::vector<KeyFile>& keys);

struct TierOutcome {
  KeyFile key;      // applies to the model locked at key.header.ratio
  LockStats stats;  // of the state the key applies to (the lock at that ratio)
};

// Tiered lock: ranks once, locks at the largest ratio, and returns one key per tier in the
// order of application (largest ratio first): applying the first gives the model locked at
// the next smaller ratio, ..., the last gives the original. Every tier uses the same units as
// a single lock at its ratio. `on_state` sees each locked state, smallest ratio first.
// Throws UsageError (fewer than one ratio, duplicates, tiers that extract the same units).
std::vector<TierOutcome> lock_model_tiers(
    LoadedModel& model, const LockOptions& options, std::vector<double> ratios,
    const std::function<void(double ratio, LoadedModel& state)>& on_state = nullptr);

// Zeroes every weight of the network but keeps biases and normalisation statistics: the
// paper's ideal unusable network f^0, a reference for what "no utility" means.
void zero_weights(LoadedModel& model);

// Fingerprint of a loaded model (parameters and buffers).
Digest model_fingerprint(LoadedModel& model);

}  // namespace corelocker
