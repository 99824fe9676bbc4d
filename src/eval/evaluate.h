// Top-1 / top-3 accuracy of a network on a data set.
#pragma once

#include "data/dataset.h"
#include "models/network.h"

namespace corelocker {

struct EvalResult {
  double top1 = 0.0;  // percent
  double top3 = 0.0;  // percent
  int64_t n = 0;
  double seconds = 0.0;
};

// Evaluates in eval mode without gradients. Throws Error on a shape mismatch.
EvalResult evaluate(Network& net, const Dataset& data, const Preprocess& pp, int64_t batch_size = 500);

}  // namespace corelocker
