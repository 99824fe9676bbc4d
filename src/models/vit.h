// A small Vision Transformer (Dosovitskiy et al., ICLR 2021) for 28x28 / 32x32 images: a
// patch embedding (conv with stride = patch), a class token and learned position embeddings,
// `depth` pre-norm blocks of LayerNorm -> multi-head self-attention and LayerNorm -> GELU MLP
// (both residual), a final LayerNorm and a linear head on the class token.
// For extraction, the attention projections (qkv, proj) and MLP matrices are linear layers
// (`l1` units), and the LayerNorm gammas are the scaling factors of `bn` (no producer: each
// LayerNorm normalises the residual stream).
#pragma once

#include "models/network.h"

namespace corelocker {

struct VitOptions {
  int64_t patch = 4;
  int64_t dim = 192;
  int64_t depth = 6;
  int64_t heads = 3;
  int64_t mlp = 384;
};

class Vit : public Network {
 public:
  // Throws UsageError for sizes that do not fit (patch not dividing the image, dim not
  // divisible by heads, ...).
  Vit(int64_t in_channels, int64_t height, int64_t width, int64_t classes, const VitOptions& o);
  torch::Tensor forward(torch::Tensor x) override;

 private:
  struct Block {
    torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
    torch::nn::Linear qkv{nullptr}, proj{nullptr}, fc1{nullptr}, fc2{nullptr};
  };
  VitOptions o_;
  torch::nn::Conv2d patch_embed_{nullptr};
  torch::Tensor cls_token_, pos_embed_;
  std::vector<Block> blocks_;
  torch::nn::LayerNorm norm_{nullptr};
  torch::nn::Linear head_{nullptr};
};

}  // namespace corelocker
