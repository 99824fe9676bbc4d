#include "models/fcn.h"

#include "util/error.h"

namespace corelocker {

Fcn::Fcn(int64_t inputs, int64_t classes, int64_t depth, int64_t width, bool norm) {
  if (depth < 1 || depth > 64)
    throw UsageError("fcn depth " + std::to_string(depth) + ": must be 1..64");
  if (width < 1 || width > 65536) {
    throw UsageError("fcn width " + std::to_string(width) + ": must be 1..65536");
  }
  int64_t in = inputs;
  for (int64_t i = 1; i <= depth; ++i) {
    const std::string fc = "fc" + std::to_string(i);
    fcs_.push_back(
        register_module(fc, torch::nn::Linear(torch::nn::LinearOptions(in, width).bias(!norm))));
    const int producer = record_linear(fc, fcs_.back());
    if (norm) {
      const std::string bn = "bn" + std::to_string(i);
      bns_.push_back(register_module(bn, torch::nn::BatchNorm1d(width)));
      record_bn(bn, producer);
    }
    in = width;
  }
  out_ = register_module("out", torch::nn::Linear(in, classes));
  record_linear("out", out_);
  for (auto& fc : fcs_) {
    torch::nn::init::kaiming_normal_(fc->weight, /*a=*/0, torch::kFanIn, torch::kReLU);
  }
}

torch::Tensor Fcn::forward(torch::Tensor x) {
  x = x.flatten(1);
  for (size_t i = 0; i < fcs_.size(); ++i) {
    x = fcs_[i](x);
    if (!bns_.empty()) x = bns_[i](x);
    x = torch::relu(x);
  }
  return out_(x);
}

}  // namespace corelocker
