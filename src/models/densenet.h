// DenseNet for CIFAR (Huang et al., CVPR 2017; the DenseNet-40 of Network Slimming): a 3x3 stem
// of 16 channels, three dense blocks of (depth-4)/3 BN-ReLU-conv3x3 layers each adding `growth`
// channels by concatenation, BN-ReLU-conv1x1-avgpool transitions (no compression), a final
// BN-ReLU, global average pooling and one linear layer. Depth 40, growth 12: 1.02M
// parameters on 10 classes (Huang et al.: 1.0M; Network Slimming: 1.02M). Every BN normalises a
// concatenation (or the stem's output through one), so none has a producing filter for `bn`
// extraction.
#pragma once

#include "models/network.h"

namespace corelocker {

class DenseNet : public Network {
 public:
  // Throws UsageError when depth is not 3n+4 or growth is out of range.
  DenseNet(int64_t depth, int64_t growth, int64_t in_channels, int64_t classes);
  torch::Tensor forward(torch::Tensor x) override;

 private:
  struct Unit {  // BN-ReLU-conv, followed by concatenation (dense layer) or pooling (transition)
    torch::nn::BatchNorm2d bn{nullptr};
    torch::nn::Conv2d conv{nullptr};
    bool transition = false;
  };
  torch::nn::Conv2d conv1_{nullptr};
  std::vector<Unit> units_;
  torch::nn::BatchNorm2d bn_{nullptr};
  torch::nn::Linear fc_{nullptr};
};

}  // namespace corelocker
