// The pieces the two modes of analyze_disparity share: the chain mode and the public functions
// in analysis/disparity.cpp, the linear-map mode in analysis/disparity_linear_map.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "analysis/disparity.h"

namespace corelocker::disparity_parts {

constexpr double kRelTol = 1e-5;

// A random unit vector of `shape` (float64) from `seed`.
torch::Tensor unit_like(const std::vector<int64_t>& shape, uint64_t seed);

// Power iteration on A^T A given A and A^T as functions; returns ||A||_2.
template <typename Fwd, typename Adj>
double power_iteration(const std::vector<int64_t>& shape, Fwd forward, Adj adjoint, int iterations,
                       uint64_t seed) {
  torch::NoGradGuard no_grad;
  torch::Tensor v = unit_like(shape, seed);
  double sigma = 0.0;
  for (int i = 0; i < std::max(1, iterations); ++i) {
    torch::Tensor u = forward(v);
    const double next = u.norm().item<double>();
    if (next == 0.0) return 0.0;
    torch::Tensor w = adjoint(u);
    const double wn = w.norm().item<double>();
    if (wn == 0.0) return next;
    v = w / wn;
    const bool settled = i > 2 && std::abs(next - sigma) <= 1e-9 * next;
    sigma = next;
    if (settled) break;
  }
  return sigma;
}

// Per-sample L2 norm of a batch (all dimensions but the first).
torch::Tensor row_norms(const torch::Tensor& t);

struct LayerTensors {
  torch::Tensor weight, bias;  // bias undefined when the layer has none
};

// The model's tensors by name.
std::map<std::string, torch::Tensor> ordered_tensors(LoadedModel& m);
// The weight and bias of `spec` among `tensors`; `which` ("original", "locked") names the model
// in the error when one is missing. Throws Error.
LayerTensors layer_tensors(const std::map<std::string, torch::Tensor>& tensors,
                           const LayerSpec& spec, const std::string& which);
// Elements where a and b differ (0 when a is undefined).
int64_t count_changed(const torch::Tensor& a, const torch::Tensor& b);
// The population standard deviation (0 for an undefined or empty tensor).
double population_sd(const torch::Tensor& t);

// Accumulates one layer's per-sample measurements.
struct LayerAccumulator {
  double in = 0, out = 0, g = 0, obs = 0, step = 0, eta = 0;
  int64_t n = 0, thm2 = 0, step_viol = 0, thm3 = 0;
  double worst = 0.0;

  void add(const torch::Tensor& in_norm, const torch::Tensor& out_norm, const torch::Tensor& g_n,
           const torch::Tensor& obs_n, double delta_norm, double delta_bias, double eta_per_x,
           const torch::Tensor& x_norm);
  void finish(LayerDisparity& d) const;
};

// The samples, preprocessed as the original model expects and (optionally) scaled to norm <= 1.
torch::Tensor prepared_inputs(const Dataset& data, const Preprocess& pp, int64_t begin, int64_t end,
                              bool scale);

// analyze_disparity for any network whose layers the dispatcher shows as conv / linear calls.
void analyze_linear_map(LoadedModel& original, LoadedModel& locked, const Dataset& data,
                        const DisparityOptions& o, DisparityReport& r);

}  // namespace corelocker::disparity_parts
