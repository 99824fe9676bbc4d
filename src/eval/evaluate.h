// Top-1 / top-3 accuracy of a network on a data set.
#pragma once

#include <chrono>

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
EvalResult evaluate(Network& net, const Dataset& data, const Preprocess& pp,
                    int64_t batch_size = 500);

// Top-1 / top-3 counts, shared by every evaluation: add() one batch of logits [B, classes]
// against labels [B], then result().
class HitCounter {
 public:
  void add(const torch::Tensor& logits, const torch::Tensor& labels);
  // Percentages over the images added so far, with the seconds since construction.
  EvalResult result() const;

 private:
  int64_t hit1_ = 0, hit3_ = 0, n_ = 0;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace corelocker
