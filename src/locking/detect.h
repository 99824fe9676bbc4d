// What an attacker can learn from a locked model alone: which units look extracted. Used to
// check that `--fill decoy` hides the key's positions (and that zero fill does not).
#pragma once

#include <string>
#include <vector>

#include "keyfile/key_file.h"
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

  double precision() const { return rate(hits); }
  double precision_far() const { return rate(hits_far); }
  double precision_small() const { return rate(hits_small); }
  // What flagging at random would hit: the extracted share of each tensor, weighted.
  double chance() const;
  double oracle_chance() const { return rate(oracle_chance_hits); }
  // Oracle hits above its chance level, in permutation standard deviations.
  double oracle_z() const;

 private:
  double rate(double h) const { return flagged ? h / double(flagged) : 0.0; }
};

// For every tensor the key touches, ranks its units by how extracted they look from the
// weights alone and flags as many as the key extracted there (an attacker who even knows the
// counts). Two attackers, exact-zero units first for both: unit l1 norms furthest from the
// tensor's median, and smallest unit l1 norms; the oracle takes the better one per tensor and
// is compared with its own chance level (seeded random truth sets). The key is the ground
// truth for scoring only.
// Throws MismatchError when the key names tensors the model lacks.
DetectionReport detect_extracted(const std::vector<NamedTensor>& tensors, const KeyFile& truth,
                                 int permutations = 200);

}  // namespace corelocker
