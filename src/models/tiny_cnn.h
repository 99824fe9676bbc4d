// A small CNN for fast tests: conv-BN-ReLU-pool twice, then two linear layers. It has every
// kind of unit (conv kernels, linear weights, BN channels with and without an eligible
// producing conv) in a network that trains on a Fashion-MNIST subset in seconds.
#pragma once

#include "models/network.h"

namespace corelocker {

class TinyCnn : public Network {
 public:
  TinyCnn(const InputShape& input, int64_t pad_to, int64_t classes, int64_t width);
  torch::Tensor forward(torch::Tensor x) override;

 private:
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr};
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
};

}  // namespace corelocker
