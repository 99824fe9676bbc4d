// Fully connected ReLU network (the paper's section 5.1 study): the flattened image, `depth`
// hidden layers of `width` neurons, one linear output layer. With `norm` (the default) each
// hidden layer is linear -> BatchNorm1d -> ReLU, and a `bn` unit takes the neuron's incoming
// weights along with its scaling factor; without it the network has no normalisation and only
// `l1` and `random` apply.
#pragma once

#include "models/network.h"

namespace corelocker {

class Fcn : public Network {
 public:
  // Throws UsageError for depth outside 1..64 or width outside 1..65536.
  Fcn(int64_t inputs, int64_t classes, int64_t depth, int64_t width, bool norm);
  torch::Tensor forward(torch::Tensor x) override;

 private:
  std::vector<torch::nn::Linear> fcs_;
  std::vector<torch::nn::BatchNorm1d> bns_;
  torch::nn::Linear out_{nullptr};
};

}  // namespace corelocker
