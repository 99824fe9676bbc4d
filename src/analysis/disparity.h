// The paper's section 4 made measurable on a real model: for every extraction layer m, how far
// the locked network's layer output y^(m) moves from the original's y*^(m), next to the
// quantities the theorems bound it with.
//
//   G^(m) = || y^(m) - phi(W^(m) y*^(m-1)) ||_2   the locked layer fed the original's input
//   Theorem 2 (lower bound):  || y^(m) - y*^(m) ||_2 >= G^(m)
//   Theorem 3/4 (upper bound): || y^(m) - y*^(m) ||_2 <= G^(m) + L ||W^(m) - W*^(m)||_2
//                              ||y*^(m-1)||_2 <= G^(m) + mu L^m lambda^(m-1) ||x||_2
//   Theorem 1: V(y*^(M)) <= ||x||^2 prod (L^2 N sigma_w^2) + bias terms  (fully connected nets)
//
// W is the locked weight, W* the original (the paper's notation). Two ways to read "layer":
//
//   chain       the `fcn` architecture, exactly as the paper's theorems state it: y^(m) =
//               ReLU(W^(m) y^(m-1) + b^(m)) with BatchNorm (eval mode) folded into W and b;
//               the last layer has no activation. L = 1.
//   linear-map  every other network (residual, dense, attention, TorchScript): y^(m) is the
//               output of the m-th convolution / linear layer itself (before normalisation
//               and activation) and y^(m-1) the input that layer received in the network's
//               own forward pass, captured while it runs. phi is the identity, L = 1. A weight
//               used more than once per forward pass (LSTM matrices, shared layers) is skipped.
//
// The library only measures; nothing is printed. Operator norms are spectral norms by power
// iteration; a convolution's is the norm of the convolution as a linear map on its actual input
// size (stride, padding and all), not of the reshaped kernel.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "models/checkpoint.h"

namespace corelocker {

struct DisparityOptions {
  int64_t samples = 256;  // test inputs used (the first N of `data`)
  int64_t batch_size = 64;
  bool scale_inputs = true;  // x / max(1, ||x||_2): the paper's ||x||_2 <= 1
  int power_iterations = 200;
  uint64_t seed = 0;  // power-iteration start vectors
};

enum class DisparityMode { kChain, kLinearMap };
const char* to_string(DisparityMode m);

struct LayerDisparity {
  int layer = -1;  // index into the structure
  std::string name;
  LayerKind kind = LayerKind::kLinear;
  int m = 0;                 // 1-based position among the measured layers (the paper's m)
  int64_t changed = 0;       // weight and bias entries that differ from the original
  double delta_norm = 0.0;   // ||W - W*||_2, the operator norm (mu in Theorems 3/4)
  double weight_norm = 0.0;  // ||W*||_2 (what Properties 2/4 bound by lambda)
  // sigma(W*) (sqrt(fan_in) + sqrt(fan_out)): the operator norm a random matrix of the same
  // shape and spread would have (Property 2); NaN for convolutions.
  double random_estimate = 0.0;
  double delta_bias = 0.0;  // ||b - b*||_2 over the output (a conv bias counts at every position)
  // Means over the samples.
  double in_norm = 0.0;     // ||y*^(m-1)||_2
  double out_norm = 0.0;    // ||y*^(m)||_2
  double g = 0.0;           // G^(m)
  double observed = 0.0;    // ||y^(m) - y*^(m)||_2
  double step_bound = 0.0;  // G + L (||W - W*||_2 ||y*^(m-1)||_2 + ||b - b*||_2)
  double eta = 0.0;         // mu L^m lambda^(m-1) ||x||_2 with mu = delta_norm
  // Per-sample checks (a relative tolerance of 1e-5 absorbs rounding).
  int64_t samples = 0;
  int64_t thm2_violations = 0;  // observed < G
  double thm2_worst = 0.0;      // smallest (observed - G) / G over the violating samples
  int64_t step_violations = 0;  // observed > step_bound (cannot happen in exact arithmetic)
  int64_t thm3_violations = 0;  // observed > G + eta
};

// Theorem 1: the variance of the network output across the inputs (summed over outputs) against
// the theorem's bound computed from each model's own weight and bias spreads.
struct VarianceCheck {
  bool applicable = false;
  std::string reason;  // why not, when not applicable
  double measured_original = 0.0, bound_original = 0.0;
  double measured_locked = 0.0, bound_locked = 0.0;
};

struct DisparityReport {
  DisparityMode mode = DisparityMode::kLinearMap;
  int64_t samples = 0;
  double input_norm = 0.0;  // mean ||x||_2 of the inputs used
  double lipschitz = 1.0;   // L
  double lambda = 0.0;      // max_m ||W*^(m)||_2, the lambda of the eta column
  std::vector<LayerDisparity> layers;
  std::vector<std::string> skipped;  // structure layers not measured, each with the reason
  VarianceCheck variance;
};

// Compares `locked` with `original` (the same architecture; any weight difference counts as
// extraction) on the first options.samples images of `data`, preprocessed with the original's
// metadata. Throws UsageError (models of different architecture or shape, no samples) / Error.
DisparityReport analyze_disparity(LoadedModel& original, LoadedModel& locked, const Dataset& data,
                                  const DisparityOptions& options);

// Largest singular value of a matrix by power iteration (in double precision).
double spectral_norm(const torch::Tensor& matrix, int iterations, uint64_t seed);

// How a convolution is applied: what its operator norm depends on besides the kernel.
struct ConvGeometry {
  std::vector<int64_t> stride{1, 1}, padding{0, 0}, dilation{1, 1};
  int64_t groups = 1;
  std::vector<int64_t> input;  // [C, H, W] of one sample
};

// Operator norm of x -> conv2d(x, kernel) on inputs of geometry.input, by power iteration with
// the convolution and its adjoint (the transposed convolution).
double conv_operator_norm(const torch::Tensor& kernel, const ConvGeometry& geometry, int iterations,
                          uint64_t seed);

// The report as `analyze --json` and `attack` write it: mode, samples, input_norm, lipschitz,
// lambda, one object a layer (its fields; NaN estimates as null), skipped, and theorem1 (the
// variance bound: measured and bound for the original and the locked model, or the reason it
// does not apply).
nlohmann::json disparity_to_json(const DisparityReport& r);

}  // namespace corelocker
