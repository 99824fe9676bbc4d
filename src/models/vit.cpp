#include "models/vit.h"

#include <cmath>

#include "util/error.h"

namespace corelocker {

// Initialised as timm does: normal(0, 0.02) (its truncation at +-2 never bites at that std).
Vit::Vit(int64_t in_channels, int64_t height, int64_t width, int64_t classes, const VitOptions& o)
    : o_(o) {
  auto bad = [](const std::string& what) { throw UsageError("vit " + what); };
  if (o.patch < 1 || height % o.patch != 0 || width % o.patch != 0) {
    bad("patch " + std::to_string(o.patch) + ": must divide the " + std::to_string(height) + "x" +
        std::to_string(width) + " input");
  }
  if (o.depth < 1 || o.depth > 64) bad("depth " + std::to_string(o.depth) + ": must be 1..64");
  if (o.heads < 1 || o.dim < 1 || o.dim % o.heads != 0) {
    bad("dim " + std::to_string(o.dim) + ": must be a positive multiple of heads (" +
        std::to_string(o.heads) + ")");
  }
  if (o.mlp < 1) bad("mlp " + std::to_string(o.mlp) + ": must be >= 1");
  const int64_t tokens = (height / o.patch) * (width / o.patch) + 1;
  patch_embed_ = register_module(
      "patch_embed",
      torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, o.dim, o.patch).stride(o.patch)));
  record_conv("patch_embed", patch_embed_);
  cls_token_ = register_parameter("cls_token", torch::zeros({1, 1, o.dim}));
  pos_embed_ = register_parameter("pos_embed", torch::zeros({1, tokens, o.dim}));
  {
    torch::NoGradGuard no_grad;
    torch::nn::init::normal_(pos_embed_, 0.0, 0.02);
    torch::nn::init::normal_(cls_token_, 0.0, 0.02);
  }
  auto blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.depth; ++i) {
    auto m = std::make_shared<torch::nn::Module>();
    Block b;
    b.norm1 =
        m->register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.dim})));
    b.qkv = m->register_module("qkv", torch::nn::Linear(o.dim, 3 * o.dim));
    b.proj = m->register_module("proj", torch::nn::Linear(o.dim, o.dim));
    b.norm2 =
        m->register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.dim})));
    b.fc1 = m->register_module("fc1", torch::nn::Linear(o.dim, o.mlp));
    b.fc2 = m->register_module("fc2", torch::nn::Linear(o.mlp, o.dim));
    blocks->push_back(m);
    const std::string p = "blocks." + std::to_string(i);
    record_layernorm(p + ".norm1");
    record_linear(p + ".qkv", b.qkv);
    record_linear(p + ".proj", b.proj);
    record_layernorm(p + ".norm2");
    record_linear(p + ".fc1", b.fc1);
    record_linear(p + ".fc2", b.fc2);
    blocks_.push_back(b);
  }
  norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.dim})));
  record_layernorm("norm");
  head_ = register_module("head", torch::nn::Linear(o.dim, classes));
  record_linear("head", head_);
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* l = m->as<torch::nn::Linear>()) {
      torch::nn::init::normal_(l->weight, 0.0, 0.02);
      torch::nn::init::zeros_(l->bias);
    }
  }
}

torch::Tensor Vit::forward(torch::Tensor x) {
  const int64_t b = x.size(0);
  x = patch_embed_(x).flatten(2).transpose(1, 2);  // [B, N, D]
  x = torch::cat({cls_token_.expand({b, 1, o_.dim}), x}, 1) + pos_embed_;
  const int64_t t = x.size(1), hd = o_.dim / o_.heads;
  const double scale = 1.0 / std::sqrt(double(hd));
  for (auto& blk : blocks_) {
    auto qkv = blk.qkv(blk.norm1(x)).reshape({b, t, 3, o_.heads, hd}).permute({2, 0, 3, 1, 4});
    auto q = qkv[0], k = qkv[1], v = qkv[2];  // [B, H, T, hd]
    auto attn = torch::softmax(torch::matmul(q, k.transpose(-2, -1)) * scale, -1);
    auto y = torch::matmul(attn, v).transpose(1, 2).reshape({b, t, o_.dim});
    x = x + blk.proj(y);
    x = x + blk.fc2(torch::gelu(blk.fc1(blk.norm2(x))));
  }
  x = norm_(x);
  return head_(x.select(1, 0));
}

}  // namespace corelocker
