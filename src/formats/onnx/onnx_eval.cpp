#include "formats/onnx/onnx_eval.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>

#include "formats/onnx/onnx_runtime.h"
#include "locking/lock.h"
#include "util/error.h"

namespace corelocker {
namespace {

std::string input_dims_text(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i)
    s += (i ? ", " : "") + (dims[i] < 0 ? "?" : std::to_string(dims[i]));
  return s + "]";
}

// Runs one batch; returns the graph's output (no nodes) or the outputs of `nodes`, as tensors
// that own their values.
std::vector<torch::Tensor> run(OnnxRuntime& runtime, const torch::Tensor& input,
                               const std::vector<std::string>& nodes = {}) {
  const torch::Tensor x = input.to(torch::kFloat32).contiguous();
  std::vector<FloatBlob> blobs = runtime.forward(x.data_ptr<float>(), x.sizes().vec(), nodes);
  std::vector<torch::Tensor> out;
  for (FloatBlob& b : blobs) {
    out.push_back(
        torch::from_blob(b.values.data(), c10::IntArrayRef(b.shape), torch::kFloat32).clone());
  }
  return out;
}

std::vector<uint8_t> bytes_of(const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous();
  std::vector<uint8_t> out(static_cast<size_t>(c.numel()) * c.element_size());
  if (!out.empty()) std::memcpy(out.data(), c.data_ptr(), out.size());
  return out;
}

std::string ratio_label(double r) {
  char b[32];
  std::snprintf(b, sizeof b, "prune %.2f", r);
  return b;
}

}  // namespace

torch::ScalarType onnx_scalar_type(int32_t data_type) {
  if (!onnx_is_float(data_type))
    throw Error("ONNX data type " + onnx_type_name(data_type) + " has no torch dtype");
  return to_scalar_type(onnx_key_dtype(data_type));
}

torch::Tensor onnx_to_tensor(const OnnxTensor& t) {
  return torch::from_blob(const_cast<uint8_t*>(t.bytes.data()), c10::IntArrayRef(t.dims),
                          onnx_scalar_type(t.data_type))
      .clone();
}

void check_onnx_runnable(const OnnxModel& model, const Dataset& data, const Preprocess& pp,
                         const std::string& what) {
  OnnxRuntime runtime(model.runtime_bytes(), what);  // throws when OpenCV cannot import the graph
  if (data.size() == 0) return;
  const OnnxInput in = model.input();
  const std::vector<int64_t> fed =
      preprocess_batch(data.images.narrow(0, 0, 1), pp, /*augment=*/false).sizes().vec();
  bool same = in.dims.size() == fed.size();
  for (size_t i = 1; same && i < fed.size(); ++i) same = in.dims[i] < 0 || in.dims[i] == fed[i];
  if (in.dims.empty() || same) return;  // no declared shape: OpenCV's forward pass decides
  throw UsageError(what + ": input '" + in.name + "' takes " + input_dims_text(in.dims) +
                   ", the preprocessing makes " + input_dims_text({-1, fed[1], fed[2], fed[3]}) +
                   " of the " + data.name +
                   " images: set --pad / --resize (height and width) and --channels to match");
}

torch::Tensor onnx_logits(const OnnxModel& model, const torch::Tensor& input,
                          const std::string& what) {
  OnnxRuntime runtime(model.runtime_bytes(), what);
  return run(runtime, input).front();
}

void onnx_class_scores(
    const OnnxModel& model, const torch::Tensor& images, const Preprocess& pp,
    const std::string& what, int64_t batch_size, const OnnxReplacements& replace,
    const std::function<void(int64_t first, const torch::Tensor& logits)>& on_batch) {
  if (batch_size < 1)
    throw UsageError("batch size " + std::to_string(batch_size) + ": must be >= 1");
  torch::NoGradGuard no_grad;
  OnnxRuntime runtime(model.runtime_bytes(replace), what);
  const int64_t n = images.size(0);
  for (int64_t i = 0; i < n; i += batch_size) {
    const int64_t b = std::min(batch_size, n - i);
    const torch::Tensor logits =
        run(runtime, preprocess_batch(images.narrow(0, i, b), pp, /*augment=*/false)).front();
    if (logits.dim() != 2 || logits.size(0) != b || logits.size(1) < 1) {
      throw Error(what + ": output of shape " + input_dims_text(logits.sizes().vec()) +
                  " for a batch of " + std::to_string(b) + " images, expected [" +
                  std::to_string(b) + ", classes]");
    }
    on_batch(i, logits);
  }
}

EvalResult evaluate_onnx(const OnnxModel& model, const Dataset& data, const Preprocess& pp,
                         const std::string& what, int64_t batch_size,
                         const OnnxReplacements& replace) {
  HitCounter hits;
  onnx_class_scores(model, data.images, pp, what, batch_size, replace,
                    [&](int64_t first, const torch::Tensor& logits) {
                      hits.add(logits, data.labels.narrow(0, first, logits.size(0)));
                    });
  return hits.result();
}

OnnxReestimation reestimate_onnx_batchnorm(const OnnxModel& model, const Dataset& images,
                                           const Preprocess& pp, const std::string& what,
                                           int64_t batch_size) {
  if (batch_size < 1)
    throw UsageError("batch size " + std::to_string(batch_size) + ": must be >= 1");
  const std::vector<OnnxBatchNorm> bns = model.batchnorms();
  if (bns.empty())
    throw UsageError(what + ": no BatchNormalization node with running statistics to re-estimate");
  if (images.size() == 0) throw UsageError("no images to re-estimate BatchNorm statistics on");
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> batches;
  for (int64_t i = 0; i < images.size(); i += batch_size) {
    const int64_t b = std::min(batch_size, images.size() - i);
    batches.push_back(preprocess_batch(images.images.narrow(0, i, b), pp, /*augment=*/false));
  }
  const std::string data_input = model.input().name;
  OnnxReestimation out;
  for (const OnnxBatchNorm& bn : bns) {
    const std::string node = "BatchNormalization node '" + bn.node + "'";
    if (bn.producer.empty() && bn.input != data_input) {
      throw Error(what + ": " + node + " normalises '" + bn.input + "', which no node produces");
    }
    if (bn.producer_output != 0) {
      throw Error(what + ": " + node + " normalises output " + std::to_string(bn.producer_output) +
                  " of node '" + bn.producer + "'; OpenCV's network gives only output 0 of a node");
    }
    // The network with every earlier node's statistics re-estimated.
    std::unique_ptr<OnnxRuntime> runtime;
    if (!bn.producer.empty()) {
      runtime = std::make_unique<OnnxRuntime>(model.runtime_bytes(out.stats), what, /*fuse=*/false);
    }
    torch::Tensor sum_mean = torch::zeros({bn.channels}, torch::kFloat64);
    torch::Tensor sum_var = torch::zeros({bn.channels}, torch::kFloat64);
    for (const torch::Tensor& x : batches) {
      const torch::Tensor a = runtime ? run(*runtime, x, {bn.producer}).front() : x;
      if (a.dim() < 2 || a.size(1) != bn.channels || a.numel() / bn.channels < 2) {
        throw Error(what + ": " + node + " has " + std::to_string(bn.channels) +
                    " channels, its input '" + bn.input + "' is " +
                    input_dims_text(a.sizes().vec()) + " in OpenCV's network");
      }
      const torch::Tensor per_channel =
          a.transpose(0, 1).reshape({bn.channels, -1}).to(torch::kFloat64);
      sum_mean += per_channel.mean(1);
      sum_var += per_channel.var(1, /*unbiased=*/true);
    }
    const double n = static_cast<double>(batches.size());
    const torch::ScalarType dtype = onnx_scalar_type(bn.data_type);
    out.stats[bn.mean] = bytes_of((sum_mean / n).to(dtype));
    out.stats[bn.var] = bytes_of((sum_var / n).to(dtype));
  }
  out.result.layers = static_cast<int64_t>(bns.size());
  out.result.images = images.size();
  out.result.batches = static_cast<int64_t>(batches.size());
  return out;
}

OnnxReplacements prune_onnx_smallest(const OnnxModel& model, double ratio) {
  if (!(ratio >= 0.0 && ratio <= 1.0))
    throw UsageError("prune ratio " + std::to_string(ratio) + ": must be within [0, 1]");
  std::vector<const OnnxTensor*> weights;
  std::set<std::string> seen;
  for (const LayerSpec& layer : model.structure()) {
    if (layer.kind != LayerKind::kConv2d && layer.kind != LayerKind::kLinear) continue;
    const OnnxTensor* t = model.find(layer.weight);
    if (t == nullptr)
      throw Error("ONNX layer '" + layer.name + "': no initializer '" + layer.weight + "'");
    if (seen.insert(t->name).second) weights.push_back(t);
  }
  OnnxReplacements out;
  if (weights.empty()) return out;
  std::vector<torch::Tensor> values, flat;
  for (const OnnxTensor* t : weights) {
    values.push_back(onnx_to_tensor(*t));
    flat.push_back(values.back().to(torch::kFloat32).reshape({-1}));
  }
  const torch::Tensor all = torch::cat(flat).abs();
  const int64_t pruned = static_cast<int64_t>(std::llround(ratio * double(all.numel())));
  // A stable sort breaks ties by position, so exactly `pruned` positions go.
  const torch::Tensor order =
      std::get<1>(torch::sort(all, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  torch::Tensor kept = torch::ones({all.numel()}, torch::kBool);
  kept.index_fill_(0, order.narrow(0, 0, pruned), false);
  int64_t offset = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    torch::Tensor& w = values[i];
    w.masked_fill_(kept.narrow(0, offset, w.numel()).reshape(w.sizes()).logical_not(), 0);
    offset += w.numel();
    out[weights[i]->name] = bytes_of(w);
  }
  return out;
}

EffectiveEval evaluate_onnx_effective(const OnnxModel& model, const Dataset& test,
                                      const Dataset& unlabelled, const Preprocess& pp,
                                      const std::string& what, const EffectiveOptions& options) {
  EffectiveEval out;
  out.plain = evaluate_onnx(model, test, pp, what, options.batch_size);
  out.top1_effective = out.plain.top1;
  if (unlabelled.size() == 0) {
    out.reestimate_note = "no unlabelled images given";
  } else if (model.batchnorms().empty()) {
    out.reestimate_note = "the model has no BatchNormalization node with running statistics";
  } else {
    try {
      const OnnxReestimation r =
          reestimate_onnx_batchnorm(model, unlabelled, pp, what, options.reestimate_batch);
      out.reestimate_images = r.result.images;
      out.reestimated = evaluate_onnx(model, test, pp, what, options.batch_size, r.stats);
      out.consider(out.reestimated->top1, "bn re-estimation");
    } catch (const UsageError&) {
      throw;
    } catch (const Error& e) {
      out.reestimate_note = e.what();
    }
  }
  for (double ratio : options.prune_ratios) {
    PrunedEval p{ratio, evaluate_onnx(model, test, pp, what, options.batch_size,
                                      prune_onnx_smallest(model, ratio))};
    out.consider(p.eval.top1, ratio_label(ratio));
    out.pruned.push_back(p);
  }
  return out;
}

}  // namespace corelocker
