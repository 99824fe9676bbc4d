#include "models/resnet.h"

#include "util/error.h"

namespace corelocker {
namespace {

torch::nn::Conv2d conv3x3(int64_t in, int64_t out, int64_t stride) {
  return torch::nn::Conv2d(
      torch::nn::Conv2dOptions(in, out, /*kernel_size=*/3).stride(stride).padding(1).bias(false));
}

}  // namespace

ResNet::ResNet(int64_t depth, int64_t in_channels, int64_t classes) {
  if (depth < 8 || (depth - 2) % 6 != 0) {
    throw UsageError("resnet depth " + std::to_string(depth) +
                     ": must be 6n+2 (20, 32, 44, 56, 110)");
  }
  const int64_t n = (depth - 2) / 6;
  conv1_ = register_module("conv1", conv3x3(in_channels, 16, 1));
  bn1_ = register_module("bn1", torch::nn::BatchNorm2d(16));
  int c = record_conv("conv1", conv1_);
  record_bn("bn1", c);

  int64_t in_planes = 16;
  const int64_t widths[3] = {16, 32, 64};
  for (int stage = 0; stage < 3; ++stage) {
    auto layer = register_module("layer" + std::to_string(stage + 1), torch::nn::ModuleList());
    for (int64_t i = 0; i < n; ++i) {
      Block b;
      b.stride = (stage > 0 && i == 0) ? 2 : 1;
      b.in_planes = in_planes;
      b.planes = widths[stage];
      auto block = std::make_shared<torch::nn::Module>();
      b.conv1 = block->register_module("conv1", conv3x3(in_planes, b.planes, b.stride));
      b.bn1 = block->register_module("bn1", torch::nn::BatchNorm2d(b.planes));
      b.conv2 = block->register_module("conv2", conv3x3(b.planes, b.planes, 1));
      b.bn2 = block->register_module("bn2", torch::nn::BatchNorm2d(b.planes));
      layer->push_back(block);
      const std::string path = "layer" + std::to_string(stage + 1) + "." + std::to_string(i);
      int c1 = record_conv(path + ".conv1", b.conv1);
      record_bn(path + ".bn1", c1);
      int c2 = record_conv(path + ".conv2", b.conv2);
      record_bn(path + ".bn2", c2);
      blocks_.push_back(b);
      in_planes = b.planes;
    }
  }
  fc_ = register_module("fc", torch::nn::Linear(64, classes));
  record_linear("fc", fc_);

  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* conv = m->as<torch::nn::Conv2d>()) {
      torch::nn::init::kaiming_normal_(conv->weight, /*a=*/0, torch::kFanOut, torch::kReLU);
    } else if (auto* bn = m->as<torch::nn::BatchNorm2d>()) {
      torch::nn::init::ones_(bn->weight);
      torch::nn::init::zeros_(bn->bias);
    }
  }
}

torch::Tensor ResNet::forward(torch::Tensor x) {
  x = torch::relu(bn1_(conv1_(x)));
  for (auto& b : blocks_) {
    auto out = torch::relu(b.bn1(b.conv1(x)));
    out = b.bn2(b.conv2(out));
    torch::Tensor shortcut = x;
    if (b.stride != 1 || b.in_planes != b.planes) {
      // Option A: subsample spatially and zero-pad the new channels (no parameters).
      shortcut =
          x.index({torch::indexing::Slice(), torch::indexing::Slice(),
                   torch::indexing::Slice(torch::indexing::None, torch::indexing::None, b.stride),
                   torch::indexing::Slice(torch::indexing::None, torch::indexing::None, b.stride)});
      const int64_t extra = b.planes - b.in_planes;
      shortcut = torch::constant_pad_nd(shortcut, {0, 0, 0, 0, extra / 2, extra - extra / 2});
    }
    x = torch::relu(out + shortcut);
  }
  x = torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
  return fc_(x);
}

}  // namespace corelocker
