#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include "analysis/disparity_parts.h"
#include "util/error.h"

namespace corelocker::disparity_parts {
namespace {

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
  const auto tensors = ordered_tensors(model);
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

}  // namespace

void analyze_linear_map(LoadedModel& original, LoadedModel& locked, const Dataset& data,
                        const DisparityOptions& o, DisparityReport& r) {
  const Structure& s = original.net->structure();
  const auto orig_tensors = ordered_tensors(original);
  const auto lock_tensors = ordered_tensors(locked);
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

}  // namespace corelocker::disparity_parts
