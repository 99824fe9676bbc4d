#include "models/vgg.h"

#include "util/error.h"

namespace corelocker {

Vgg::Vgg(int64_t in_channels, int64_t classes, int64_t width) {
  if (width < 1 || width > 512) {
    throw UsageError("vgg19 width " + std::to_string(width) + ": must be 1..512 (64 is VGG-19)");
  }
  // Channel multiples of `width`; 0 marks a 2x2 max pool.
  const int kConfig[] = {1, 1, 0, 2, 2, 0, 4, 4, 4, 4, 0, 8, 8, 8, 8, 0, 8, 8, 8, 8};
  auto features = register_module("feature", torch::nn::ModuleList());
  int64_t in = in_channels;
  for (int m : kConfig) {
    if (m == 0) {
      layers_.back().pool_after = true;
      // Keep indices of the Sequential of the reference implementation (pool layers count).
      features->push_back(torch::nn::Identity());
      continue;
    }
    const int64_t out = width * m;
    Layer l;
    l.conv = torch::nn::Conv2d(
        torch::nn::Conv2dOptions(in, out, /*kernel_size=*/3).padding(1).bias(false));
    l.bn = torch::nn::BatchNorm2d(out);
    const std::string conv_path = "feature." + std::to_string(features->size());
    features->push_back(l.conv);
    const std::string bn_path = "feature." + std::to_string(features->size());
    features->push_back(l.bn);
    features->push_back(torch::nn::Identity());  // ReLU's slot
    const int c = record_conv(conv_path, l.conv);
    record_bn(bn_path, c);
    layers_.push_back(l);
    in = out;
  }
  classifier_ = register_module("classifier", torch::nn::Linear(in, classes));
  record_linear("classifier", classifier_);

  for (auto& l : layers_) {
    torch::nn::init::kaiming_normal_(l.conv->weight, /*a=*/0, torch::kFanOut, torch::kReLU);
  }
}

torch::Tensor Vgg::forward(torch::Tensor x) {
  for (auto& l : layers_) {
    x = torch::relu(l.bn(l.conv(x)));
    if (l.pool_after) x = torch::max_pool2d(x, 2);
  }
  // The reference pools a 2x2 map with AvgPool2d(2); adaptive pooling is the same there and
  // also accepts other input sizes.
  x = torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
  return classifier_(x);
}

}  // namespace corelocker
