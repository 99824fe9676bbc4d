#include "analysis/disparity.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "analysis/disparity_parts.h"
#include "util/error.h"

namespace corelocker {

const char* to_string(DisparityMode m) {
  return m == DisparityMode::kChain ? "chain" : "linear-map";
}

namespace disparity_parts {

torch::Tensor unit_like(const std::vector<int64_t>& shape, uint64_t seed) {
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  torch::Tensor v = at::randn(shape, gen, torch::TensorOptions().dtype(torch::kFloat64));
  return v / v.norm();
}

torch::Tensor row_norms(const torch::Tensor& t) {
  return t.reshape({t.size(0), -1}).to(torch::kFloat64).norm(2, 1);
}

std::map<std::string, torch::Tensor> ordered_tensors(LoadedModel& m) {
  std::map<std::string, torch::Tensor> out;
  for (auto& t : named_tensors(*m.net)) out[t.name] = t.tensor;
  return out;
}

LayerTensors layer_tensors(const std::map<std::string, torch::Tensor>& tensors,
                           const LayerSpec& spec, const std::string& which) {
  auto w = tensors.find(spec.weight);
  if (w == tensors.end())
    throw Error(which + " model has no tensor '" + spec.weight + "' (layer " + spec.name + ")");
  LayerTensors lt{w->second.detach(), {}};
  if (!spec.bias.empty()) {
    auto b = tensors.find(spec.bias);
    if (b == tensors.end())
      throw Error(which + " model has no tensor '" + spec.bias + "' (layer " + spec.name + ")");
    lt.bias = b->second.detach();
  }
  return lt;
}

int64_t count_changed(const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.defined()) return 0;
  return a.ne(b).sum().item<int64_t>();
}

double population_sd(const torch::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return 0.0;
  return t.to(torch::kFloat64).std(/*unbiased=*/false).item<double>();
}

torch::Tensor prepared_inputs(const Dataset& data, const Preprocess& pp, int64_t begin, int64_t end,
                              bool scale) {
  torch::Tensor x = preprocess_batch(data.images.slice(0, begin, end), pp, /*augment=*/false);
  if (scale) {
    torch::Tensor n = row_norms(x).clamp_min(1.0).to(x.scalar_type());
    std::vector<int64_t> shape(x.dim(), 1);
    shape[0] = x.size(0);
    x = x / n.reshape(shape);
  }
  return x;
}

void LayerAccumulator::add(const torch::Tensor& in_norm, const torch::Tensor& out_norm,
                           const torch::Tensor& g_n, const torch::Tensor& obs_n, double delta_norm,
                           double delta_bias, double eta_per_x, const torch::Tensor& x_norm) {
  auto a_in = in_norm.accessor<double, 1>();
  auto a_out = out_norm.accessor<double, 1>();
  auto a_g = g_n.accessor<double, 1>();
  auto a_obs = obs_n.accessor<double, 1>();
  auto a_x = x_norm.accessor<double, 1>();
  for (int64_t i = 0; i < in_norm.size(0); ++i) {
    const double gi = a_g[i], oi = a_obs[i];
    const double sb = gi + delta_norm * a_in[i] + delta_bias;
    const double ei = eta_per_x * a_x[i];
    in += a_in[i];
    out += a_out[i];
    g += gi;
    obs += oi;
    step += sb;
    eta += ei;
    const double tol = kRelTol * std::max({1e-6, gi, oi});
    if (oi < gi - tol) {
      ++thm2;
      worst = std::min(worst, (oi - gi) / gi);
    }
    if (oi > sb + tol) ++step_viol;
    if (oi > gi + ei + tol) ++thm3;
    ++n;
  }
}

void LayerAccumulator::finish(LayerDisparity& d) const {
  const double k = n ? 1.0 / double(n) : 0.0;
  d.samples = n;
  d.in_norm = in * k;
  d.out_norm = out * k;
  d.g = g * k;
  d.observed = obs * k;
  d.step_bound = step * k;
  d.eta = eta * k;
  d.thm2_violations = thm2;
  d.thm2_worst = worst;
  d.step_violations = step_viol;
  d.thm3_violations = thm3;
}

namespace {

void check_same_shape(LoadedModel& original, LoadedModel& locked) {
  if (original.meta.arch != locked.meta.arch)
    throw UsageError("models differ in architecture: original '" + original.meta.arch +
                     "', locked '" + locked.meta.arch + "'");
  auto a = named_tensors(*original.net);
  auto b = named_tensors(*locked.net);
  if (a.size() != b.size())
    throw UsageError("models differ in tensor count: " + std::to_string(a.size()) + " vs " +
                     std::to_string(b.size()));
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || !a[i].tensor.sizes().equals(b[i].tensor.sizes()))
      throw UsageError("models differ at tensor '" + a[i].name + "'");
  }
}

// The chain mode (fcn): BatchNorm folded into each layer, the measurements layer by layer.

struct FoldedLayer {
  std::string name;
  int structure_index = -1;
  torch::Tensor w, b;  // float64, BatchNorm folded in
  bool relu = true;
};

std::vector<FoldedLayer> fold_fcn(LoadedModel& m, const std::string& which) {
  const auto tensors = ordered_tensors(m);
  const Structure& s = m.net->structure();
  auto index_of = [&](const std::string& name) {
    for (size_t i = 0; i < s.size(); ++i)
      if (s[i].name == name) return int(i);
    throw Error(which + " fcn has no layer '" + name + "'");
  };
  auto get = [&](const std::string& name) {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw Error(which + " fcn has no tensor '" + name + "'");
    return it->second.detach().to(torch::kFloat64);
  };
  const int64_t depth = m.meta.option("depth", 0);
  const bool norm = m.meta.option("norm", 1) != 0;
  std::vector<FoldedLayer> layers;
  for (int64_t i = 1; i <= depth; ++i) {
    const std::string fc = "fc" + std::to_string(i);
    FoldedLayer l;
    l.name = fc;
    l.structure_index = index_of(fc);
    l.w = get(fc + ".weight");
    l.b = norm ? torch::zeros({l.w.size(0)}, torch::kFloat64) : get(fc + ".bias");
    if (norm) {
      const std::string bn = "bn" + std::to_string(i);
      const torch::Tensor scale =
          get(bn + ".weight") / torch::sqrt(get(bn + ".running_var") + 1e-5);
      l.w = l.w * scale.unsqueeze(1);
      l.b = (l.b - get(bn + ".running_mean")) * scale + get(bn + ".bias");
    }
    layers.push_back(l);
  }
  FoldedLayer out;
  out.name = "out";
  out.structure_index = index_of("out");
  out.w = get("out.weight");
  out.b = get("out.bias");
  out.relu = false;
  layers.push_back(out);
  return layers;
}

torch::Tensor apply(const FoldedLayer& l, const torch::Tensor& w, const torch::Tensor& b,
                    const torch::Tensor& y) {
  torch::Tensor a = torch::addmm(b, y, w.t());
  return l.relu ? torch::relu(a) : a;
}

void analyze_chain(LoadedModel& original, LoadedModel& locked, const Dataset& data,
                   const DisparityOptions& o, DisparityReport& r) {
  const auto orig = fold_fcn(original, "original");
  const auto lock = fold_fcn(locked, "locked");
  const size_t M = orig.size();
  std::vector<LayerDisparity> rows(M);
  std::vector<LayerAccumulator> acc(M);
  const Structure& s = original.net->structure();
  r.lambda = 0.0;
  for (size_t m = 0; m < M; ++m) {
    LayerDisparity& d = rows[m];
    d.layer = orig[m].structure_index;
    d.name = orig[m].name;
    d.kind = s[d.layer].kind;
    d.m = int(m) + 1;
    d.changed = count_changed(orig[m].w, lock[m].w) + count_changed(orig[m].b, lock[m].b);
    d.delta_norm = spectral_norm(lock[m].w - orig[m].w, o.power_iterations, o.seed + m);
    d.weight_norm = spectral_norm(orig[m].w, o.power_iterations, o.seed + m);
    d.random_estimate = population_sd(orig[m].w) * (std::sqrt(double(orig[m].w.size(1))) +
                                                    std::sqrt(double(orig[m].w.size(0))));
    d.delta_bias = (lock[m].b - orig[m].b).norm().item<double>();
    r.lambda = std::max(r.lambda, d.weight_norm);
  }
  // Theorem 1 accumulators: per-output sums over the samples of both networks' outputs.
  const int64_t classes = orig.back().w.size(0);
  torch::Tensor sum_o = torch::zeros({classes}, torch::kFloat64), sq_o = sum_o.clone();
  torch::Tensor sum_l = sum_o.clone(), sq_l = sum_o.clone();
  double x2 = 0.0;
  const int64_t n = std::min<int64_t>(o.samples, data.size());
  torch::NoGradGuard no_grad;
  original.net->eval();
  for (int64_t begin = 0; begin < n; begin += o.batch_size) {
    const int64_t end = std::min(n, begin + o.batch_size);
    const torch::Tensor images =
        prepared_inputs(data, original.meta.preprocess, begin, end, o.scale_inputs);
    torch::Tensor x = images.flatten(1).to(torch::kFloat64);
    const torch::Tensor x_norm = row_norms(x);
    r.input_norm += x_norm.sum().item<double>();
    x2 += x_norm.pow(2).sum().item<double>();
    torch::Tensor ys = x, y = x;  // y*^(m-1) (original), y^(m-1) (locked)
    for (size_t m = 0; m < M; ++m) {
      const torch::Tensor ys_next = apply(orig[m], orig[m].w, orig[m].b, ys);
      const torch::Tensor y_next = apply(lock[m], lock[m].w, lock[m].b, y);
      const torch::Tensor cross = apply(lock[m], lock[m].w, lock[m].b, ys);
      double eta = rows[m].delta_norm * std::pow(r.lambda, double(m));  // L = 1
      acc[m].add(row_norms(ys), row_norms(ys_next), row_norms(y_next - cross),
                 row_norms(y_next - ys_next), rows[m].delta_norm, rows[m].delta_bias, eta, x_norm);
      ys = ys_next;
      y = y_next;
    }
    // The folded chain must be the network: compare with the model's own forward pass.
    const torch::Tensor net_out = original.net->forward(images).to(torch::kFloat64);
    const double scale = 1.0 + net_out.abs().max().item<double>();
    const double diff = (net_out - ys).abs().max().item<double>();
    if (diff > 1e-3 * scale)
      throw Error("fcn analysis: the folded layers disagree with the network's forward pass by " +
                  std::to_string(diff));
    sum_o += ys.sum(0);
    sq_o += ys.pow(2).sum(0);
    sum_l += y.sum(0);
    sq_l += y.pow(2).sum(0);
  }
  r.samples = n;
  r.input_norm /= double(n);
  for (size_t m = 0; m < M; ++m) acc[m].finish(rows[m]);
  r.layers = rows;

  // Theorem 1: measured output variance (population, over the inputs, summed over outputs) and
  // the bound B_M from B_0 = mean ||x||^2, B_m = L^2 N^(m) (sigma_w^2 B_(m-1) + sigma_b^2).
  auto variance = [&](const torch::Tensor& sum, const torch::Tensor& sq) {
    const torch::Tensor mean = sum / double(n);
    return (sq / double(n) - mean.pow(2)).clamp_min(0.0).sum().item<double>();
  };
  auto bound = [&](const std::vector<FoldedLayer>& layers) {
    double b = x2 / double(n);
    for (const auto& l : layers) {
      const double sw = population_sd(l.w), sb = population_sd(l.b);
      b = double(l.w.size(0)) * (sw * sw * b + sb * sb);
    }
    return b;
  };
  r.variance.applicable = true;
  r.variance.measured_original = variance(sum_o, sq_o);
  r.variance.measured_locked = variance(sum_l, sq_l);
  r.variance.bound_original = bound(orig);
  r.variance.bound_locked = bound(lock);
}

}  // namespace
}  // namespace disparity_parts

double spectral_norm(const torch::Tensor& matrix, int iterations, uint64_t seed) {
  if (matrix.dim() != 2)
    throw Error("spectral_norm: expected a matrix, got " + std::to_string(matrix.dim()) +
                " dimensions");
  const torch::Tensor a = matrix.detach().to(torch::kFloat64);
  if (a.numel() == 0) return 0.0;
  return disparity_parts::power_iteration(
      {a.size(1)}, [&](const torch::Tensor& v) { return torch::mv(a, v); },
      [&](const torch::Tensor& u) { return torch::mv(a.t(), u); }, iterations, seed);
}

double conv_operator_norm(const torch::Tensor& kernel, const ConvGeometry& g, int iterations,
                          uint64_t seed) {
  if (kernel.dim() != 4 || g.input.size() != 3)
    throw Error("conv_operator_norm: expected a 4-D kernel and a [C, H, W] input");
  const torch::Tensor k = kernel.detach().to(torch::kFloat64);
  const std::vector<int64_t> shape{1, g.input[0], g.input[1], g.input[2]};
  std::vector<int64_t> out_pad(2);
  std::vector<int64_t> out_size(2);
  for (int d = 0; d < 2; ++d) {
    const int64_t in = g.input[1 + d], ks = k.size(2 + d);
    out_size[d] = (in + 2 * g.padding[d] - g.dilation[d] * (ks - 1) - 1) / g.stride[d] + 1;
    if (out_size[d] < 1) throw Error("conv_operator_norm: kernel larger than the padded input");
    out_pad[d] =
        in - ((out_size[d] - 1) * g.stride[d] - 2 * g.padding[d] + g.dilation[d] * (ks - 1) + 1);
  }
  return disparity_parts::power_iteration(
      shape,
      [&](const torch::Tensor& v) {
        return torch::conv2d(v, k, {}, g.stride, g.padding, g.dilation, g.groups);
      },
      [&](const torch::Tensor& u) {
        return torch::conv_transpose2d(u, k, {}, g.stride, g.padding, out_pad, g.groups,
                                       g.dilation);
      },
      iterations, seed);
}

DisparityReport analyze_disparity(LoadedModel& original, LoadedModel& locked, const Dataset& data,
                                  const DisparityOptions& options) {
  if (options.samples < 1)
    throw UsageError("samples " + std::to_string(options.samples) + ": must be at least 1");
  if (options.batch_size < 1)
    throw UsageError("batch size " + std::to_string(options.batch_size) + ": must be at least 1");
  if (data.size() < 1) throw UsageError("analysis needs at least one input; the data set is empty");
  disparity_parts::check_same_shape(original, locked);
  DisparityReport r;
  r.mode = original.meta.arch == "fcn" ? DisparityMode::kChain : DisparityMode::kLinearMap;
  original.net->eval();
  locked.net->eval();
  if (r.mode == DisparityMode::kChain) {
    disparity_parts::analyze_chain(original, locked, data, options, r);
  } else {
    disparity_parts::analyze_linear_map(original, locked, data, options, r);
  }
  return r;
}

nlohmann::json disparity_to_json(const DisparityReport& r) {
  using Json = nlohmann::json;
  auto number_or_null = [](double v) { return std::isnan(v) ? Json(nullptr) : Json(v); };
  Json layers = Json::array();
  for (const auto& d : r.layers) {
    layers.push_back({{"m", d.m},
                      {"layer", d.name},
                      {"kind", to_string(d.kind)},
                      {"changed", d.changed},
                      {"delta_norm", d.delta_norm},
                      {"weight_norm", d.weight_norm},
                      {"random_estimate", number_or_null(d.random_estimate)},
                      {"delta_bias", d.delta_bias},
                      {"in_norm", d.in_norm},
                      {"out_norm", d.out_norm},
                      {"G", d.g},
                      {"observed", d.observed},
                      {"step_bound", d.step_bound},
                      {"eta", d.eta},
                      {"paper_bound", d.g + d.eta},
                      {"samples", d.samples},
                      {"theorem2_violations", d.thm2_violations},
                      {"theorem2_worst_relative", d.thm2_worst},
                      {"step_violations", d.step_violations},
                      {"theorem3_violations", d.thm3_violations}});
  }
  Json var = {{"applicable", r.variance.applicable}};
  if (r.variance.applicable) {
    var["original"] = {{"measured", r.variance.measured_original},
                       {"bound", r.variance.bound_original}};
    var["locked"] = {{"measured", r.variance.measured_locked}, {"bound", r.variance.bound_locked}};
  } else {
    var["reason"] = r.variance.reason;
  }
  return {{"mode", to_string(r.mode)}, {"samples", r.samples}, {"input_norm", r.input_norm},
          {"lipschitz", r.lipschitz},  {"lambda", r.lambda},   {"layers", layers},
          {"skipped", r.skipped},      {"theorem1", var}};
}

}  // namespace corelocker
