// How a network's extractable layers are laid out: their order in the forward pass, their
// parameter tensors, and how each normalisation layer is wired. Torch-free, so that formats
// other than our own checkpoints (TorchScript, ONNX, safetensors) can describe themselves too.
#pragma once

#include <string>
#include <vector>

namespace corelocker {

enum class LayerKind { kConv2d, kLinear, kBatchNorm, kLayerNorm };

const char* to_string(LayerKind k);

struct LayerSpec {
  std::string name;  // module path, e.g. "layer1.0.conv1"
  LayerKind kind;
  std::string weight;  // full tensor name, e.g. "layer1.0.conv1.weight"
  std::string bias;    // empty when the layer has none
  // For a normalisation layer fed directly by a convolution or linear layer (conv -> BN,
  // linear -> BN): that layer's index in the structure; its output filter / neuron c goes with
  // channel c. -1 in pre-activation blocks (BN -> ReLU -> conv), for norms of sums or
  // concatenations (residual streams, dense blocks, LayerNorm) and for other layers.
  int producer = -1;
};

// Extractable layers in forward order; the first and last entries are the network's first and
// last parameterised layers.
using Structure = std::vector<LayerSpec>;

}  // namespace corelocker
