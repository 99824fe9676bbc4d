// The layers of an ONNX graph, read from its wiring (formats/onnx/onnx_model.h lists the rules).
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "formats/onnx/onnx_model_internal.h"
#include "util/error.h"

namespace corelocker::onnx_detail {

Structure read_structure(const onnx::GraphProto& g, const std::vector<OnnxTensor>& inits,
                         const std::string& what) {
  std::unordered_map<std::string, const OnnxTensor*> init;
  for (const auto& t : inits) init[t.name] = &t;
  // PyTorch's exporter deduplicates equal initializers and feeds the copies through Identity
  // nodes (`Identity(layer2.bn2.bias) -> layer2.short.1.bias`): follow them.
  for (const auto& n : g.node()) {
    if (n.op_type() != "Identity" || n.input_size() != 1 || n.output_size() != 1) continue;
    if (!n.domain().empty() && n.domain() != "ai.onnx") continue;
    auto it = init.find(n.input(0));
    if (it != init.end() && !init.count(n.output(0))) init[n.output(0)] = it->second;
  }
  auto weight = [&](const onnx::NodeProto& n, int i, size_t rank) -> const OnnxTensor* {
    if (n.input_size() <= i) return nullptr;
    auto it = init.find(n.input(i));
    if (it == init.end() || !onnx_is_float(it->second->data_type) ||
        it->second->dims.size() != rank)
      return nullptr;
    return it->second;
  };
  auto bias = [&](const onnx::NodeProto& n, int i) -> std::string {
    if (n.input_size() <= i) return "";
    auto it = init.find(n.input(i));
    return it != init.end() && onnx_is_float(it->second->data_type) ? it->second->name : "";
  };
  Structure s;
  std::set<std::string> taken;                    // initializers already part of a layer
  std::unordered_map<std::string, int> conv_out;  // Conv output name -> its layer index
  for (int ni = 0; ni < g.node_size(); ++ni) {
    const onnx::NodeProto& n = g.node(ni);
    if (!n.domain().empty() && n.domain() != "ai.onnx") continue;
    LayerSpec layer;
    const OnnxTensor* w = nullptr;
    if (n.op_type() == "Conv") {
      w = weight(n, 1, 4);
      layer.kind = LayerKind::kConv2d;
      layer.bias = bias(n, 2);
    } else if (n.op_type() == "Gemm") {
      w = weight(n, 1, 2);
      layer.kind = LayerKind::kLinear;
      layer.bias = bias(n, 2);
    } else if (n.op_type() == "MatMul") {
      w = weight(n, 1, 2);
      if (w == nullptr) w = weight(n, 0, 2);
      layer.kind = LayerKind::kLinear;
    } else if (n.op_type() == "BatchNormalization") {
      w = weight(n, 1, 1);
      layer.kind = LayerKind::kBatchNorm;
      layer.bias = bias(n, 2);
      if (w != nullptr && layer.bias.empty()) w = nullptr;
      if (w != nullptr && n.input_size() > 0) {
        auto it = conv_out.find(n.input(0));
        if (it != conv_out.end()) layer.producer = it->second;
      }
    }
    if (w == nullptr || taken.count(w->name)) continue;
    // A bias shared with an earlier layer stays with this one too: a bn unit then takes beta_c
    // of both (the key holds it once).
    layer.weight = w->name;
    layer.name = n.name().empty() ? w->name : n.name();
    taken.insert(layer.weight);
    if (!layer.bias.empty()) taken.insert(layer.bias);
    if (layer.kind == LayerKind::kConv2d && n.output_size() > 0)
      conv_out[n.output(0)] = static_cast<int>(s.size());
    if (layer.kind == LayerKind::kBatchNorm && layer.producer >= 0) {
      const OnnxTensor* cw = init.at(s[static_cast<size_t>(layer.producer)].weight);
      if (cw->dims[0] != w->dims[0]) {
        throw FormatError(what + ": BatchNormalization '" + layer.name + "' has " +
                          std::to_string(w->dims[0]) + " channels, its Conv '" +
                          s[static_cast<size_t>(layer.producer)].name + "' " +
                          std::to_string(cw->dims[0]) + " filters");
      }
    }
    s.push_back(std::move(layer));
  }
  return s;
}

}  // namespace corelocker::onnx_detail
