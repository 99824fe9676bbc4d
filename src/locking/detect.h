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
  int64_t units = 0;      // units of this tensor (at the key's granularity)
  int64_t extracted = 0;  // truly extracted, per the key
  int64_t flagged = 0;    // the detector flags as many units as were extracted
  int64_t hits = 0;       // flagged and truly extracted
  int64_t exact_zero = 0; // units that are exactly zero
};

struct DetectionReport {
  std::vector<DetectionLayer> layers;
  int64_t flagged = 0, hits = 0, extracted = 0, units = 0;
  // Fraction of flagged units that were extracted, and what flagging at random would give.
  double precision() const { return flagged ? double(hits) / double(flagged) : 0.0; }
  double chance() const;
};

// For every tensor the key touches, ranks its units by how extracted they look from the
// weights alone and flags as many as the key extracted there (an attacker who even knows the
// counts). Two rankings, exact-zero units first in both: unit l1 norms furthest from the
// tensor's median, and smallest unit l1 norms; each tensor counts the better one. The key is
// the ground truth for scoring only.
// Throws MismatchError when the key names tensors the model lacks.
DetectionReport detect_extracted(const std::vector<NamedTensor>& tensors, const KeyFile& truth);

}  // namespace corelocker
