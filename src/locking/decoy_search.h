// The decoy search of a lock (DecoySearch, locking/lock.h) for any model held in memory: which of
// several decoy draws a lock keeps. Used by lock_model and by the ONNX lock.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

#include "locking/lock.h"

namespace corelocker {

// One try of the search on a model in memory: `fill(seed)` locks the units with decoy draw `seed`
// (nullptr: zero fill), `score()` rates the locked model (top-1 on a validation split, say),
// `reset()` puts the model back as it was before the fill.
struct DecoyTrial {
  std::function<void(const uint64_t* seed)> fill;
  std::function<double()> score;
  std::function<void()> reset;
};

// Draws `tries` decoy fills (draw i seeded with seed + i, or from the OS without a seed) and
// returns the seed of the one `target` keeps: the score nearest the zero-filled lock's (scored
// first) or the lowest; the first draw on equal scores. The model ends as it started. Throws what
// the trial throws.
uint64_t choose_decoy_draw(int tries, DecoySearch::Target target,
                           const std::optional<uint64_t>& seed, const DecoyTrial& trial);

}  // namespace corelocker
