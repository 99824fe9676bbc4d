// Pre-activation ResNet for CIFAR (He et al., ECCV 2016), as in Network Slimming: a 3x3 stem,
// three stages (16/32/64 base channels) of BN-ReLU-conv blocks, a final BN-ReLU, global average
// pooling and one linear layer. Shortcuts that change shape are 1x1 convolutions.
//   bottleneck (default): depth 9n+2, blocks 1x1-3x3-1x1 with 4x expansion; depth 164 has
//                         1.70M parameters on 10 classes.
//   basic (bottleneck=0): depth 6n+2, blocks 3x3-3x3, for small fast networks.
// Every BN comes before its ReLU and conv, so none has a producing filter for `bn` extraction.
#pragma once

#include "models/network.h"

namespace corelocker {

class PreResNet : public Network {
 public:
  // Throws UsageError when depth does not fit the block type.
  PreResNet(int64_t depth, bool bottleneck, int64_t in_channels, int64_t classes);
  torch::Tensor forward(torch::Tensor x) override;

 private:
  struct Block {
    std::vector<torch::nn::BatchNorm2d> bns;
    std::vector<torch::nn::Conv2d> convs;
    torch::nn::Conv2d downsample{nullptr};
  };
  torch::nn::Conv2d conv1_{nullptr};
  std::vector<Block> blocks_;
  torch::nn::BatchNorm2d bn_{nullptr};
  torch::nn::Linear fc_{nullptr};
};

}  // namespace corelocker
