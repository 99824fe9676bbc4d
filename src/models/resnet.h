// CIFAR-style ResNet (He et al. 2016, section 4.2): a 3x3 stem, three stages of n BasicBlocks
// with 16/32/64 channels, identity shortcuts that subsample and zero-pad channels (option A),
// global average pooling and one linear layer. depth = 6n + 2 (20, 32, 44, 56, 110).
#pragma once

#include "models/network.h"

namespace corelocker {

class ResNet : public Network {
 public:
  // Throws UsageError when depth is not 6n+2.
  ResNet(int64_t depth, int64_t in_channels, int64_t classes);
  torch::Tensor forward(torch::Tensor x) override;

 private:
  struct Block {
    torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
    torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
    int64_t stride = 1;
    int64_t in_planes = 0, planes = 0;
  };
  torch::nn::Conv2d conv1_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr};
  std::vector<Block> blocks_;
  torch::nn::Linear fc_{nullptr};
};

}  // namespace corelocker
