#include "models/densenet.h"

#include <cmath>

#include "util/error.h"

namespace corelocker {

DenseNet::DenseNet(int64_t depth, int64_t growth, int64_t in_channels, int64_t classes) {
  if (depth < 7 || (depth - 4) % 3 != 0) {
    throw UsageError("densenet depth " + std::to_string(depth) + ": must be 3n+4 (e.g. 40)");
  }
  if (growth < 1 || growth > 256) {
    throw UsageError("densenet growth " + std::to_string(growth) + ": must be 1..256");
  }
  const int64_t n = (depth - 4) / 3;
  // Huang et al. (section 3): the stem has 16 output channels in DenseNet without bottlenecks
  // and compression (2*growth is the DenseNet-BC choice).
  int64_t channels = 16;
  conv1_ = register_module(
      "conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, channels, /*kernel_size=*/3)
                                     .padding(1)
                                     .bias(false)));
  record_conv("conv1", conv1_);
  for (int block = 1; block <= 3; ++block) {
    auto dense = register_module("dense" + std::to_string(block), torch::nn::ModuleList());
    for (int64_t i = 0; i < n; ++i) {
      auto layer = std::make_shared<torch::nn::Module>();
      Unit u;
      u.bn = layer->register_module("bn1", torch::nn::BatchNorm2d(channels));
      u.conv = layer->register_module(
          "conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, growth, /*kernel_size=*/3)
                                         .padding(1)
                                         .bias(false)));
      dense->push_back(layer);
      const std::string path = "dense" + std::to_string(block) + "." + std::to_string(i);
      record_bn(path + ".bn1", -1);
      record_conv(path + ".conv1", u.conv);
      units_.push_back(u);
      channels += growth;
    }
    if (block < 3) {
      const std::string path = "trans" + std::to_string(block);
      auto trans = register_module(path, std::make_shared<torch::nn::Module>());
      Unit u;
      u.transition = true;
      u.bn = trans->register_module("bn1", torch::nn::BatchNorm2d(channels));
      u.conv = trans->register_module(
          "conv1",
          torch::nn::Conv2d(
              torch::nn::Conv2dOptions(channels, channels, /*kernel_size=*/1).bias(false)));
      record_bn(path + ".bn1", -1);
      record_conv(path + ".conv1", u.conv);
      units_.push_back(u);
    }
  }
  bn_ = register_module("bn", torch::nn::BatchNorm2d(channels));
  record_bn("bn", -1);
  fc_ = register_module("fc", torch::nn::Linear(channels, classes));
  record_linear("fc", fc_);

  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* c = m->as<torch::nn::Conv2d>()) {
      const auto& k = c->options.kernel_size();
      const double fan = double((*k)[0] * (*k)[1] * c->options.out_channels());
      torch::nn::init::normal_(c->weight, 0.0, std::sqrt(2.0 / fan));
    }
  }
}

torch::Tensor DenseNet::forward(torch::Tensor x) {
  x = conv1_(x);
  for (auto& u : units_) {
    auto out = u.conv(torch::relu(u.bn(x)));
    x = u.transition ? torch::avg_pool2d(out, 2) : torch::cat({x, out}, 1);
  }
  x = torch::relu(bn_(x));
  x = torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
  return fc_(x);
}

}  // namespace corelocker
