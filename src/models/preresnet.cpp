#include "models/preresnet.h"

#include <cmath>

#include "util/error.h"

namespace corelocker {
namespace {

torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride) {
  return torch::nn::Conv2d(
      torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2).bias(false));
}

}  // namespace

PreResNet::PreResNet(int64_t depth, bool bottleneck, int64_t in_channels, int64_t classes) {
  const int64_t per = bottleneck ? 9 : 6;
  if (depth < per + 2 || (depth - 2) % per != 0) {
    throw UsageError("preresnet depth " + std::to_string(depth) + ": must be " +
                     (bottleneck ? "9n+2 with bottleneck blocks (e.g. 164)"
                                 : "6n+2 with basic blocks (e.g. 20)"));
  }
  const int64_t n = (depth - 2) / per;
  const int64_t expansion = bottleneck ? 4 : 1;
  conv1_ = register_module("conv1", conv(in_channels, 16, 3, 1));
  record_conv("conv1", conv1_);

  int64_t in_planes = 16;
  const int64_t widths[3] = {16, 32, 64};
  for (int stage = 0; stage < 3; ++stage) {
    auto layer = register_module("layer" + std::to_string(stage + 1), torch::nn::ModuleList());
    for (int64_t i = 0; i < n; ++i) {
      const int64_t planes = widths[stage];
      const int64_t stride = (stage > 0 && i == 0) ? 2 : 1;
      const std::string path = "layer" + std::to_string(stage + 1) + "." + std::to_string(i);
      auto block = std::make_shared<torch::nn::Module>();
      Block b;
      // (input channels, output channels, kernel, stride) of each BN-ReLU-conv step.
      struct Step {
        int64_t in, out, kernel, stride;
      };
      std::vector<Step> steps;
      if (bottleneck) {
        steps = {
            {in_planes, planes, 1, 1}, {planes, planes, 3, stride}, {planes, planes * 4, 1, 1}};
      } else {
        steps = {{in_planes, planes, 3, stride}, {planes, planes, 3, 1}};
      }
      for (size_t k = 0; k < steps.size(); ++k) {
        const std::string idx = std::to_string(k + 1);
        b.bns.push_back(block->register_module("bn" + idx, torch::nn::BatchNorm2d(steps[k].in)));
        b.convs.push_back(block->register_module(
            "conv" + idx, conv(steps[k].in, steps[k].out, steps[k].kernel, steps[k].stride)));
        record_bn(path + ".bn" + idx, /*producer=*/-1);
        record_conv(path + ".conv" + idx, b.convs.back());
      }
      if (stride != 1 || in_planes != planes * expansion) {
        b.downsample =
            block->register_module("downsample", conv(in_planes, planes * expansion, 1, stride));
        record_conv(path + ".downsample", b.downsample);
      }
      layer->push_back(block);
      blocks_.push_back(b);
      in_planes = planes * expansion;
    }
  }
  bn_ = register_module("bn", torch::nn::BatchNorm2d(in_planes));
  record_bn("bn", -1);  // fed by the residual sum
  fc_ = register_module("fc", torch::nn::Linear(in_planes, classes));
  record_linear("fc", fc_);

  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* c = m->as<torch::nn::Conv2d>()) {
      // As the reference: normal(0, sqrt(2 / (k*k*out_channels))).
      const auto& k = c->options.kernel_size();
      const double fan = double((*k)[0] * (*k)[1] * c->options.out_channels());
      torch::nn::init::normal_(c->weight, 0.0, std::sqrt(2.0 / fan));
    }
  }
}

torch::Tensor PreResNet::forward(torch::Tensor x) {
  x = conv1_(x);
  for (auto& b : blocks_) {
    auto out = x;
    for (size_t k = 0; k < b.convs.size(); ++k) out = b.convs[k](torch::relu(b.bns[k](out)));
    x = out + (b.downsample ? b.downsample(x) : x);
  }
  x = torch::relu(bn_(x));
  x = torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
  return fc_(x);
}

}  // namespace corelocker
