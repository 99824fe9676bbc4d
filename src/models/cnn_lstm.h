// CNN-LSTM (the paper's Table 7): two conv-BN-ReLU-maxpool stages (`width`, 2*`width`
// channels) turn an image into a feature map; an LSTM reads its rows top to bottom (one time
// step per row, the row's channels x columns as input) and a linear layer classifies the last
// hidden state. For extraction the LSTM's input and recurrent matrices (weight_ih [4h, in],
// weight_hh [4h, h]) are linear layers of `l1` units.
#pragma once

#include "models/network.h"

namespace corelocker {

class CnnLstm : public Network {
 public:
  // Throws UsageError for sizes out of range or an input smaller than 4x4.
  CnnLstm(int64_t in_channels, int64_t height, int64_t width, int64_t classes, int64_t channels,
          int64_t hidden);
  torch::Tensor forward(torch::Tensor x) override;

 private:
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr};
  torch::nn::LSTM lstm_{nullptr};
  torch::nn::Linear fc_{nullptr};
};

}  // namespace corelocker
