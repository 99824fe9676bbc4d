#include "analysis/disparity.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include "util/error.h"

namespace corelocker {

const char* to_string(DisparityMode m) {
  return m == DisparityMode::kChain ? "chain" : "linear-map";
}

namespace {

constexpr double kRelTol = 1e-5;

torch::Tensor unit_like(const std::vector<int64_t>& shape, uint64_t seed) {
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  torch::Tensor v = at::randn(shape, gen, torch::TensorOptions().dtype(torch::kFloat64));
  return v / v.norm();
}

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
torch::Tensor row_norms(const torch::Tensor& t) {
  return t.reshape({t.size(0), -1}).to(torch::kFloat64).norm(2, 1);
}

struct LayerTensors {
  torch::Tensor weight, bias;  // bias undefined when the layer has none
};

std::map<std::string, torch::Tensor> tensor_map(LoadedModel& m) {
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

// Accumulates one layer's per-sample measurements.
struct LayerAccumulator {
  double in = 0, out = 0, g = 0, obs = 0, step = 0, eta = 0;
  int64_t n = 0, thm2 = 0, step_viol = 0, thm3 = 0;
  double worst = 0.0;

  void add(const torch::Tensor& in_norm, const torch::Tensor& out_norm, const torch::Tensor& g_n,
           const torch::Tensor& obs_n, double delta_norm, double delta_bias, double eta_per_x,
           const torch::Tensor& x_norm) {
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

  void finish(LayerDisparity& d) const {
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
};

// The samples, preprocessed as the original model expects and (optionally) scaled to norm <= 1.
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

// ------------------------------------------------------------------ chain mode (fcn)

struct FoldedLayer {
  std::string name;
  int structure_index = -1;
  torch::Tensor w, b;  // float64, BatchNorm folded in
  bool relu = true;
};

std::vector<FoldedLayer> fold_fcn(LoadedModel& m, const std::string& which) {
  const auto tensors = tensor_map(m);
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

// ------------------------------------------------------------------ linear-map mode

// What a conv / linear call received, captured from the dispatcher while a network runs.
struct Captured {
  torch::Tensor input;
  bool conv = false;
  ConvGeometry geometry;
  int calls = 0;
};

struct CaptureState {
  std::map<const void*, int> layer_of;  // weight data pointer -> structure index
  std::map<int, Captured> seen;
  int depth = 0;
  int open_depth = -1;  // depth of the op being captured (nested ops are its implementation)
};

thread_local CaptureState* g_capture = nullptr;

const std::set<std::string>& captured_ops() {
  static const std::set<std::string> ops = {
      "aten::conv2d", "aten::convolution", "aten::_convolution", "aten::linear",
      "aten::addmm",  "aten::mm",          "aten::matmul"};
  return ops;
}

bool int_list(const c10::IValue& v, std::vector<int64_t>& out) {
  if (!v.isIntList()) return false;
  out = v.toIntVector();
  if (out.size() == 1) out.push_back(out[0]);
  return out.size() == 2;
}

std::unique_ptr<at::ObserverContext> capture_start(const at::RecordFunction& fn) {
  CaptureState* st = g_capture;
  if (!st) return nullptr;
  const int depth = st->depth++;
  if (st->open_depth >= 0) return nullptr;
  const std::string name = fn.name();
  if (!captured_ops().count(name)) return nullptr;
  const auto inputs = fn.inputs();
  int layer = -1;
  size_t weight_arg = 0;
  for (size_t i = 0; i < inputs.size() && layer < 0; ++i) {
    if (!inputs[i].isTensor()) continue;
    const torch::Tensor& t = inputs[i].toTensor();
    if (!t.defined()) continue;
    auto it = st->layer_of.find(t.data_ptr());
    if (it != st->layer_of.end()) {
      layer = it->second;
      weight_arg = i;
    }
  }
  if (layer < 0) return nullptr;
  Captured& c = st->seen[layer];
  st->open_depth = depth;
  if (c.calls++ > 0) return nullptr;  // shared or recurrent weights: counted, then skipped
  const size_t x_arg = name == "aten::addmm" ? 1 : (weight_arg == 0 ? 1 : 0);
  if (x_arg >= inputs.size() || !inputs[x_arg].isTensor()) return nullptr;
  c.input = inputs[x_arg].toTensor().detach().clone();
  if (name == "aten::conv2d" || name == "aten::convolution" || name == "aten::_convolution") {
    c.conv = true;
    const bool full = name != "aten::conv2d";  // (.., transposed, output_padding, groups, ..)
    const size_t groups_arg = full ? 8 : 6;
    bool ok = inputs.size() > groups_arg && int_list(inputs[3], c.geometry.stride) &&
              int_list(inputs[4], c.geometry.padding) && int_list(inputs[5], c.geometry.dilation) &&
              inputs[groups_arg].isInt();
    if (full && ok) ok = inputs[6].isBool() && !inputs[6].toBool();
    if (ok) {
      c.geometry.groups = inputs[groups_arg].toInt();
    } else {
      c.input = torch::Tensor();  // padding="same" or a transposed convolution: not analysed
    }
  }
  return nullptr;
}

void capture_end(const at::RecordFunction&, at::ObserverContext*) {
  CaptureState* st = g_capture;
  if (!st) return;
  --st->depth;
  if (st->depth == st->open_depth) st->open_depth = -1;
}

// Runs `net` on `x` and returns what each conv / linear layer of the structure received.
std::map<int, Captured> capture_inputs(LoadedModel& model, const torch::Tensor& x) {
  CaptureState st;
  const Structure& s = model.net->structure();
  const auto tensors = tensor_map(model);
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i].kind != LayerKind::kConv2d && s[i].kind != LayerKind::kLinear) continue;
    auto it = tensors.find(s[i].weight);
    if (it != tensors.end()) st.layer_of[it->second.data_ptr()] = int(i);
  }
  g_capture = &st;
  auto handle = at::addThreadLocalCallback(at::RecordFunctionCallback(capture_start, capture_end)
                                               .needsInputs(true)
                                               .scopes({at::RecordScope::FUNCTION}));
  try {
    torch::NoGradGuard no_grad;
    model.net->eval();
    model.net->forward(x);
  } catch (...) {
    at::removeCallback(handle);
    g_capture = nullptr;
    throw;
  }
  at::removeCallback(handle);
  g_capture = nullptr;
  return std::move(st.seen);
}

torch::Tensor apply_layer(const Captured& c, const torch::Tensor& x, const LayerTensors& t,
                          bool with_bias) {
  const torch::Tensor w = t.weight.to(torch::kFloat64);
  const torch::Tensor b =
      with_bias && t.bias.defined() ? t.bias.to(torch::kFloat64) : torch::Tensor();
  const torch::Tensor xd = x.to(torch::kFloat64);
  if (c.conv) {
    return torch::conv2d(xd, w, b, c.geometry.stride, c.geometry.padding, c.geometry.dilation,
                         c.geometry.groups);
  }
  return torch::linear(xd, w, b);
}

// The sample axis of a captured input: 0 for [B, ...] inputs, 1 for sequence-first [T, B, ...].
int sample_axis(const torch::Tensor& input, int64_t batch) {
  if (input.dim() >= 1 && input.size(0) == batch) return 0;
  if (input.dim() >= 2 && input.size(1) == batch) return 1;
  return -1;
}

void analyze_linear_map(LoadedModel& original, LoadedModel& locked, const Dataset& data,
                        const DisparityOptions& o, DisparityReport& r) {
  const Structure& s = original.net->structure();
  const auto orig_tensors = tensor_map(original);
  const auto lock_tensors = tensor_map(locked);
  std::map<int, LayerDisparity> rows;
  std::map<int, LayerAccumulator> acc;
  std::map<int, std::string> skipped;
  const int64_t n = std::min<int64_t>(o.samples, data.size());
  std::vector<int> order;  // layers in the order the forward pass first used them
  bool first_batch = true;
  for (int64_t begin = 0; begin < n; begin += o.batch_size) {
    const int64_t end = std::min(n, begin + o.batch_size);
    const int64_t batch = end - begin;
    const torch::Tensor x =
        prepared_inputs(data, original.meta.preprocess, begin, end, o.scale_inputs);
    const torch::Tensor x_norm = row_norms(x);
    r.input_norm += x_norm.sum().item<double>();
    auto cap_o = capture_inputs(original, x);
    auto cap_l = capture_inputs(locked, x);
    if (first_batch) {
      // Norms of the weights, once, from the first batch's input sizes.
      for (size_t i = 0; i < s.size(); ++i) {
        if (s[i].kind != LayerKind::kConv2d && s[i].kind != LayerKind::kLinear) continue;
        auto co = cap_o.find(int(i));
        if (co == cap_o.end()) {
          skipped[int(i)] = "not called as a convolution or linear op in the forward pass";
          continue;
        }
        if (co->second.calls > 1) {
          skipped[int(i)] = "used " + std::to_string(co->second.calls) +
                            " times in one forward pass (a recurrent or shared weight: every use "
                            "sees another input, which a per-layer reading does not model)";
          continue;
        }
        if (!co->second.input.defined()) {
          skipped[int(i)] =
              "a convolution this analysis does not model (padding='same' or transposed)";
          continue;
        }
        if (sample_axis(co->second.input, batch) < 0) {
          skipped[int(i)] = "its input has no batch axis";
          continue;
        }
        const LayerTensors to = layer_tensors(orig_tensors, s[i], "original");
        const LayerTensors tl = layer_tensors(lock_tensors, s[i], "locked");
        const torch::Tensor& in = co->second.input;
        const bool fits =
            co->second.conv
                ? in.dim() == 4 && to.weight.dim() == 4 &&
                      in.size(1) == to.weight.size(1) * co->second.geometry.groups
                : in.dim() >= 1 && to.weight.dim() == 2 && in.size(-1) == to.weight.size(1);
        if (!fits) {
          // For example a weight multiplied from the left (W @ x) in a TorchScript model.
          skipped[int(i)] = "its weight is applied in a way this analysis does not model";
          continue;
        }
        LayerDisparity d;
        d.layer = int(i);
        d.name = s[i].name;
        d.kind = s[i].kind;
        d.changed = count_changed(to.weight, tl.weight) + count_changed(to.bias, tl.bias);
        const torch::Tensor delta = (tl.weight.to(torch::kFloat64) - to.weight.to(torch::kFloat64));
        const Captured& c = co->second;
        if (c.conv) {
          ConvGeometry g = c.geometry;
          g.input = {c.input.size(1), c.input.size(2), c.input.size(3)};
          d.delta_norm = conv_operator_norm(delta, g, o.power_iterations, o.seed + i);
          d.weight_norm = conv_operator_norm(to.weight, g, o.power_iterations, o.seed + i);
          d.random_estimate = std::numeric_limits<double>::quiet_NaN();
        } else {
          d.delta_norm = spectral_norm(delta, o.power_iterations, o.seed + i);
          d.weight_norm = spectral_norm(to.weight, o.power_iterations, o.seed + i);
          d.random_estimate = population_sd(to.weight) * (std::sqrt(double(to.weight.size(1))) +
                                                          std::sqrt(double(to.weight.size(0))));
        }
        if (to.bias.defined()) {
          // A bias is added at every output position of one sample.
          const torch::Tensor one =
              apply_layer(c, c.input.narrow(sample_axis(c.input, batch), 0, 1), to, false);
          const double positions = double(one.numel()) / double(to.bias.numel());
          d.delta_bias =
              (tl.bias.to(torch::kFloat64) - to.bias.to(torch::kFloat64)).norm().item<double>() *
              std::sqrt(positions);
        }
        rows[int(i)] = d;
        order.push_back(int(i));
      }
      std::sort(order.begin(), order.end());
      for (size_t k = 0; k < order.size(); ++k) {
        rows[order[k]].m = int(k) + 1;
        r.lambda = std::max(r.lambda, rows[order[k]].weight_norm);
      }
      first_batch = false;
    }
    for (int i : order) {
      LayerDisparity& d = rows[i];
      const Captured& co = cap_o.at(i);
      auto cl_it = cap_l.find(i);
      if (cl_it == cap_l.end() || !cl_it->second.input.defined() ||
          !cl_it->second.input.sizes().equals(co.input.sizes()))
        throw Error("layer " + d.name +
                    ": the locked network used it differently from the original");
      const int axis = sample_axis(co.input, batch);
      const LayerTensors to = layer_tensors(orig_tensors, s[i], "original");
      const LayerTensors tl = layer_tensors(lock_tensors, s[i], "locked");
      const torch::Tensor xs = co.input, xl = cl_it->second.input;
      const torch::Tensor zs = apply_layer(co, xs, to, true);
      const torch::Tensor zl = apply_layer(co, xl, tl, true);
      const torch::Tensor cross = apply_layer(co, xs, tl, true);
      auto per_sample = [&](const torch::Tensor& t) {
        return row_norms(axis == 0 ? t : t.transpose(0, 1));
      };
      const double eta = d.delta_norm * std::pow(r.lambda, double(d.m - 1));
      acc[i].add(per_sample(xs), per_sample(zs), per_sample(zl - cross), per_sample(zl - zs),
                 d.delta_norm, d.delta_bias, eta, x_norm);
    }
  }
  r.samples = n;
  r.input_norm /= double(n);
  for (int i : order) {
    acc[i].finish(rows[i]);
    r.layers.push_back(rows[i]);
  }
  for (const auto& [i, why] : skipped) r.skipped.push_back(s[i].name + ": " + why);
  r.variance.applicable = false;
  r.variance.reason =
      "Theorem 1 is stated for fully connected ReLU networks; this is not one (use an fcn)";
}

}  // namespace

double spectral_norm(const torch::Tensor& matrix, int iterations, uint64_t seed) {
  if (matrix.dim() != 2)
    throw Error("spectral_norm: expected a matrix, got " + std::to_string(matrix.dim()) +
                " dimensions");
  const torch::Tensor a = matrix.detach().to(torch::kFloat64);
  if (a.numel() == 0) return 0.0;
  return power_iteration(
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
  return power_iteration(
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
  check_same_shape(original, locked);
  DisparityReport r;
  r.mode = original.meta.arch == "fcn" ? DisparityMode::kChain : DisparityMode::kLinearMap;
  original.net->eval();
  locked.net->eval();
  if (r.mode == DisparityMode::kChain) {
    analyze_chain(original, locked, data, options, r);
  } else {
    analyze_linear_map(original, locked, data, options, r);
  }
  return r;
}

}  // namespace corelocker
