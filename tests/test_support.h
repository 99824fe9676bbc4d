// Shared fixtures for the torch tests: small models and a Fashion-MNIST subset.
#pragma once

#include "data/dataset.h"
#include "models/checkpoint.h"

namespace corelocker::testing {

// A freshly initialised tinycnn (28x28 Fashion-MNIST input) with distinct BN scales, so that
// the bn ranking has no ties.
LoadedModel fresh_tiny(uint64_t seed = 0, int64_t width = 8);

// resnet20 trained 2 epochs on 12,000 Fashion-MNIST training images (about a minute on two
// cores). Trained once per build folder and cached on disk; concurrent test processes wait for
// the first one instead of training in parallel.
LoadedModel trained_resnet();

// The first `n` Fashion-MNIST test images (deterministic).
Dataset fmnist_test(int64_t n);

// True when every parameter and buffer of a and b is bitwise equal.
bool same_tensors(LoadedModel& a, LoadedModel& b);

// Deep copy of a model (weights and metadata).
LoadedModel clone(LoadedModel& m);

// fresh_tiny(seed) locked in memory with the paper's l1 (per layer) at `ratio`.
LoadedModel locked_tiny(uint64_t seed, double ratio);

// The tensor of a model with this name (shares storage). Throws when there is none.
torch::Tensor tensor_of(LoadedModel& m, const std::string& name);

// The Fashion-MNIST training split, loaded once.
const Dataset& fashion_train();

}  // namespace corelocker::testing
