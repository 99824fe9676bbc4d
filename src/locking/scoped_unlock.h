// Unlocking for a while: a model unlocked in memory for inference that must return to its locked
// state afterwards (Python's `with corelocker.unlocked(model, key):`). What the key overwrites is
// kept aside, the size of the key, and written back at the end; no copy of the model is made.
#pragma once

#include <vector>

#include "keyfile/key_file.h"
#include "models/network.h"

namespace corelocker {

// Unlocks `tensors` with `key` (restore_units: every check first, nothing written when one
// fails) and returns the key that locks them again: the values the key's units held before, with
// the two fingerprints swapped. Throws MismatchError / Error as restore_units does.
KeyFile unlock_reversibly(std::vector<NamedTensor>& tensors, const KeyFile& key);

// Writes `undo` (from unlock_reversibly) back into `tensors` whatever else changed meanwhile, and
// returns the fingerprint afterwards: undo.header.original_fingerprint, the locked model's, unless
// other values changed while it was unlocked. Throws MismatchError, before writing anything, when
// a tensor of the key is gone or has another shape or dtype.
Digest relock(std::vector<NamedTensor>& tensors, const KeyFile& undo);

}  // namespace corelocker
