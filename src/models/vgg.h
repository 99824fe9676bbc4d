// VGG-19 with BatchNorm, CIFAR variant of Network Slimming (Liu et al., ICCV 2017): sixteen
// 3x3 conv-BN-ReLU layers (64,64,M,128,128,M,256x4,M,512x4,M,512x4), average pooling and one
// linear classifier. 20.04M parameters on 3x32x32 input with 10 classes. `width` scales every
// stage (64 is the paper's network; smaller widths make fast tests).
#pragma once

#include "models/network.h"

namespace corelocker {

class Vgg : public Network {
 public:
  // Throws UsageError for a width outside 1..512.
  Vgg(int64_t in_channels, int64_t classes, int64_t width);
  torch::Tensor forward(torch::Tensor x) override;

 private:
  struct Layer {
    torch::nn::Conv2d conv{nullptr};
    torch::nn::BatchNorm2d bn{nullptr};
    bool pool_after = false;
  };
  std::vector<Layer> layers_;
  torch::nn::Linear classifier_{nullptr};
};

}  // namespace corelocker
