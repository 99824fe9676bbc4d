#include "locking/decoy_search.h"

#include <cmath>

#include "util/hash.h"

namespace corelocker {

uint64_t choose_decoy_draw(int tries, DecoySearch::Target target,
                           const std::optional<uint64_t>& seed, const DecoyTrial& trial) {
  double reference = 0.0;
  if (target == DecoySearch::Target::kMatchZero) {
    trial.fill(nullptr);
    reference = trial.score();
    trial.reset();
  }
  double best = 0.0;
  uint64_t best_seed = 0;
  for (int i = 0; i < tries; ++i) {
    uint64_t draw = 0;
    if (seed) {
      draw = *seed + static_cast<uint64_t>(i);
    } else {
      random_bytes(&draw, sizeof draw);  // decoys must not be predictable
    }
    trial.fill(&draw);
    const double score = trial.score();
    trial.reset();
    const double distance =
        target == DecoySearch::Target::kMatchZero ? std::abs(score - reference) : score;
    if (i == 0 || distance < best) {
      best = distance;
      best_seed = draw;
    }
  }
  return best_seed;
}

}  // namespace corelocker
