// Extraction and restoration on named tensors: a plan's units moved into an access key (zero or
// decoy values left in their place) and a key's values written back, with fingerprints checked on
// both sides. locking/lock.h does the same on a model.
#pragma once

#include <cstdint>
#include <vector>

#include "keyfile/key_file.h"
#include "locking/selection.h"

namespace corelocker {

// The torch dtype of a key entry's dtype.
torch::ScalarType to_scalar_type(DType d);

// Moves the plan's units out of `tensors` into a key whose header records the fingerprints
// before and after, the options and a fresh random key id. Extracted positions become 0, or
// decoys (locking/decoys.h) modelled on the units that stay (never on units in `no_donors`,
// e.g. those a later tier extracts), drawn with a seed from the OS. Throws Error.
KeyFile extract_units(std::vector<NamedTensor>& tensors, const ExtractionPlan& plan,
                      const LockOptions& options, const ExtractionPlan* no_donors = nullptr);
// Same, with the decoy generator's seed given (reproducible decoys: tests, the detector's
// training locks). Throws Error.
KeyFile extract_units(std::vector<NamedTensor>& tensors, const ExtractionPlan& plan,
                      const LockOptions& options, const ExtractionPlan* no_donors,
                      uint64_t decoy_seed);
// Same, with the seed given or not (nullptr: drawn from the OS). `spent`, when given, is `plan`
// itself, whose unit lists a zero fill may free once the key has them (the lock's peak memory is
// then the key's).
KeyFile extract_units_seeded(std::vector<NamedTensor>& tensors, const ExtractionPlan& plan,
                             const LockOptions& options, const ExtractionPlan* no_donors,
                             const uint64_t* seed, ExtractionPlan* spent = nullptr);

// Units of `larger` that are not in `smaller` (both from the same ranking).
ExtractionPlan plan_difference(const ExtractionPlan& larger, const ExtractionPlan& smaller);

// Checks that `tensors` are the locked model the key belongs to (MismatchError otherwise),
// writes the original values back and checks the result against the original fingerprint.
// Nothing is modified when a check before writing fails. Throws MismatchError / Error.
void restore_units(std::vector<NamedTensor>& tensors, const KeyFile& key);

}  // namespace corelocker
