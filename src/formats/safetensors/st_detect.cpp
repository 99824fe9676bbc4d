// `detect` of a safetensors file (formats/safetensors/st_torch.h), and the parts LibTorch gives
// the torch-free safetensors format.
#include <map>
#include <string>
#include <vector>

#include "formats/format.h"
#include "formats/safetensors/st_torch.h"
#include "util/error.h"

namespace corelocker {
namespace {

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::string module_of(const std::string& weight) {
  return ends_with(weight, "weight") ? weight.substr(0, weight.size() - 6) : weight;
}

}  // namespace

Structure st_structure(const StHeader& header) {
  std::map<std::string, const StTensor*> by_name;
  for (const auto& t : header.tensors) by_name[t.name] = &t;
  const std::vector<StLayer> layers = st_layers(header, /*include_io=*/false);
  const StBatchNorms norms = st_batchnorms(header);
  auto spec_of = [&](const StLayer& l) {
    LayerSpec s;
    s.name = module_of(l.tensor);
    if (!s.name.empty() && s.name.back() == '.') s.name.pop_back();
    s.kind = l.kind == StLayerKind::kConv ? LayerKind::kConv2d : LayerKind::kLinear;
    s.weight = l.tensor;
    const auto w = by_name.find(l.tensor);
    const auto b = by_name.find(module_of(l.tensor) + "bias");
    if (w != by_name.end() && b != by_name.end() && st_is_float(b->second->dtype) &&
        b->second->shape.size() == 1 && !w->second->shape.empty() &&
        b->second->shape[0] == w->second->shape[0])
      s.bias = b->first;
    return s;
  };
  // The two layers left alone go first and last; every BatchNorm follows the layer feeding it
  // (those fed by nothing the rule finds, and by the last layer, come before the last layer).
  std::vector<const StLayer*> order, alone;
  for (const auto& l : layers) (l.eligible ? order : alone).push_back(&l);
  if (!alone.empty()) order.insert(order.begin(), alone.front());
  const StLayer* last = alone.size() > 1 ? alone.back() : nullptr;
  Structure s;
  // The BatchNorms `producer` feeds, each with the producer's structure index `at`.
  auto add_norms_fed_by = [&](const std::string& producer, int at) {
    for (const auto& bn : norms.layers) {
      if (bn.producer != producer) continue;
      LayerSpec n;
      n.name = bn.path;
      n.kind = LayerKind::kBatchNorm;
      n.weight = bn.weight;
      n.bias = bn.bias;
      n.producer = at;
      s.push_back(n);
    }
  };
  for (const StLayer* l : order) {
    s.push_back(spec_of(*l));
    add_norms_fed_by(l->tensor, static_cast<int>(s.size()) - 1);
  }
  add_norms_fed_by("", -1);
  if (last != nullptr) {  // it stays last: the norms it feeds go before it
    const size_t norms_at = s.size();
    add_norms_fed_by(last->tensor, -1);
    for (size_t i = norms_at; i < s.size(); ++i) s[i].producer = static_cast<int>(s.size());
    s.push_back(spec_of(*last));
  }
  return s;
}

void detect_safetensors(const std::string& path, const KeyFile& key, const DetectOptions& options,
                        DetectionReport& report) {
  const StFile file(path);
  check_key_applies(st_fingerprint(file), key, path);
  std::vector<NamedTensor> tensors;
  torch::NoGradGuard no_grad;
  for (const auto& t : file.header.tensors) {
    if (!st_is_float(t.dtype)) continue;
    const bool statistics = ends_with(t.name, "running_mean") || ends_with(t.name, "running_var");
    tensors.push_back(
        {t.name, st_float_copy(file.tensor_data(t), t.dtype, t.shape, t.name), statistics});
  }
  report = detect_extracted(tensors, st_structure(file.header), key, options);
}

StTorchParts safetensors_torch_parts() {
  StTorchParts parts;
  parts.decoys = draw_safetensors_decoys;
  parts.detect = detect_safetensors;
  return parts;
}

}  // namespace corelocker
