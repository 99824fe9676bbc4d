// Locking and unlocking: extract a plan's units into an access key (zero-filling them in the
// model) and write a key's values back, checking fingerprints on both sides.
#pragma once

#include <vector>

#include "keyfile/key_file.h"
#include "locking/selection.h"
#include "models/checkpoint.h"

namespace corelocker {

// Moves the plan's units out of `tensors` (they become 0) into a key whose header records the
// fingerprints before and after, the options and a fresh random key id. Throws Error.
KeyFile extract_units(std::vector<NamedTensor>& tensors, const ExtractionPlan& plan,
                      const LockOptions& options);

// Checks that `tensors` are the locked model the key belongs to (MismatchError otherwise),
// writes the original values back and checks the result against the original fingerprint.
// Nothing is modified when a check before writing fails. Throws MismatchError / Error.
void restore_units(std::vector<NamedTensor>& tensors, const KeyFile& key);

struct LockStats {
  int64_t units = 0;        // units extracted, as the criterion counts them
  int64_t candidates = 0;   // units that competed
  int64_t values = 0;       // parameter elements moved into the key
  int64_t parameters = 0;   // parameter elements of the model (buffers excluded)
  double param_fraction() const { return parameters ? double(values) / double(parameters) : 0.0; }
};

struct LockOutcome {
  KeyFile key;
  LockStats stats;
};

// Locks a model in memory: ranks, plans at options.ratio, extracts, and records the lock in
// the model's metadata. Throws UsageError (bad options) / Error.
LockOutcome lock_model(LoadedModel& model, const LockOptions& options);

// Same, from a ranking computed before (reused across ratios or seeds).
LockOutcome lock_model(LoadedModel& model, const Ranking& ranking, double ratio);

// Unlocks a model in memory and clears its lock metadata. Throws MismatchError / Error.
void unlock_model(LoadedModel& model, const KeyFile& key);

// Zeroes every weight of the network but keeps biases and normalisation statistics: the
// paper's ideal unusable network f^0, a reference for what "no utility" means.
void zero_weights(LoadedModel& model);

// Fingerprint of a loaded model (parameters and buffers).
Digest model_fingerprint(LoadedModel& model);

}  // namespace corelocker
