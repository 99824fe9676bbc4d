#include "models/cnn_lstm.h"

#include "util/error.h"

namespace corelocker {

CnnLstm::CnnLstm(int64_t in_channels, int64_t height, int64_t width, int64_t classes,
                 int64_t channels, int64_t hidden) {
  if (channels < 1 || channels > 1024) {
    throw UsageError("cnnlstm width " + std::to_string(channels) + ": must be 1..1024");
  }
  if (hidden < 1 || hidden > 8192) {
    throw UsageError("cnnlstm hidden " + std::to_string(hidden) + ": must be 1..8192");
  }
  if (height < 4 || width < 4) throw UsageError("cnnlstm needs inputs of at least 4x4");
  auto conv = [](int64_t in, int64_t out) {
    return torch::nn::Conv2d(
        torch::nn::Conv2dOptions(in, out, /*kernel_size=*/3).padding(1).bias(false));
  };
  conv1_ = register_module("conv1", conv(in_channels, channels));
  bn1_ = register_module("bn1", torch::nn::BatchNorm2d(channels));
  conv2_ = register_module("conv2", conv(channels, 2 * channels));
  bn2_ = register_module("bn2", torch::nn::BatchNorm2d(2 * channels));
  const int64_t features = 2 * channels * (width / 4);
  lstm_ = register_module(
      "lstm", torch::nn::LSTM(torch::nn::LSTMOptions(features, hidden).batch_first(true)));
  fc_ = register_module("fc", torch::nn::Linear(hidden, classes));
  const int c1 = record_conv("conv1", conv1_);
  record_bn("bn1", c1);
  const int c2 = record_conv("conv2", conv2_);
  record_bn("bn2", c2);
  record_matrix("lstm.ih", "lstm.weight_ih_l0", "lstm.bias_ih_l0");
  record_matrix("lstm.hh", "lstm.weight_hh_l0", "lstm.bias_hh_l0");
  record_linear("fc", fc_);
  for (auto* c : {&conv1_, &conv2_}) {
    torch::nn::init::kaiming_normal_((*c)->weight, /*a=*/0, torch::kFanOut, torch::kReLU);
  }
}

torch::Tensor CnnLstm::forward(torch::Tensor x) {
  x = torch::max_pool2d(torch::relu(bn1_(conv1_(x))), 2);
  x = torch::max_pool2d(torch::relu(bn2_(conv2_(x))), 2);  // [B, C, H/4, W/4]
  // One time step per row: [B, H/4, C * W/4].
  x = x.permute({0, 2, 1, 3}).flatten(2).contiguous();
  auto out = std::get<0>(lstm_(x));  // [B, T, hidden]
  return fc_(out.select(1, out.size(1) - 1));
}

}  // namespace corelocker
