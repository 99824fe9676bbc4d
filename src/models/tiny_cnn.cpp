#include "models/tiny_cnn.h"

#include <algorithm>

#include "util/error.h"

namespace corelocker {

TinyCnn::TinyCnn(const InputShape& input, int64_t pad_to, int64_t classes, int64_t width) {
  if (width < 1 || width > 1024)
    throw UsageError("tinycnn width " + std::to_string(width) + ": must be 1..1024");
  const int64_t h = std::max(input.height, pad_to), w = std::max(input.width, pad_to);
  if (h < 4 || w < 4) throw UsageError("tinycnn needs inputs of at least 4x4");
  conv1_ = register_module(
      "conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(input.channels, width, 3).padding(1)));
  bn1_ = register_module("bn1", torch::nn::BatchNorm2d(width));
  conv2_ = register_module(
      "conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(width, 2 * width, 3).padding(1)));
  bn2_ = register_module("bn2", torch::nn::BatchNorm2d(2 * width));
  fc1_ = register_module("fc1", torch::nn::Linear(2 * width * (h / 4) * (w / 4), 64));
  fc2_ = register_module("fc2", torch::nn::Linear(64, classes));
  int c1 = record_conv("conv1", conv1_);
  record_bn("bn1", c1);
  int c2 = record_conv("conv2", conv2_);
  record_bn("bn2", c2);
  record_linear("fc1", fc1_);
  record_linear("fc2", fc2_);
}

torch::Tensor TinyCnn::forward(torch::Tensor x) {
  x = torch::max_pool2d(torch::relu(bn1_(conv1_(x))), 2);
  x = torch::max_pool2d(torch::relu(bn2_(conv2_(x))), 2);
  x = torch::relu(fc1_(x.flatten(1)));
  return fc2_(x);
}

}  // namespace corelocker
