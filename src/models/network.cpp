#include "models/network.h"

#include "models/resnet.h"
#include "models/tiny_cnn.h"
#include "util/error.h"

namespace corelocker {

const char* to_string(LayerKind k) {
  switch (k) {
    case LayerKind::kConv2d: return "conv2d";
    case LayerKind::kLinear: return "linear";
    case LayerKind::kBatchNorm: return "batchnorm";
    case LayerKind::kLayerNorm: return "layernorm";
  }
  return "?";
}

int Network::record_conv(const std::string& path, const torch::nn::Conv2d& conv) {
  structure_.push_back({path, LayerKind::kConv2d, path + ".weight",
                        conv->options.bias() ? path + ".bias" : "", -1});
  return static_cast<int>(structure_.size()) - 1;
}

int Network::record_linear(const std::string& path, const torch::nn::Linear& linear) {
  structure_.push_back({path, LayerKind::kLinear, path + ".weight",
                        linear->options.bias() ? path + ".bias" : "", -1});
  return static_cast<int>(structure_.size()) - 1;
}

int Network::record_bn(const std::string& path, int producer) {
  structure_.push_back({path, LayerKind::kBatchNorm, path + ".weight", path + ".bias", producer});
  return static_cast<int>(structure_.size()) - 1;
}

std::vector<ArchInfo> list_architectures() {
  return {
      {"resnet20", "CIFAR-style ResNet (BasicBlock, 16/32/64 channels), --depth 6n+2 (default 20)"},
      {"tinycnn", "two conv+BN blocks and two linear layers; for fast tests"},
  };
}

std::shared_ptr<Network> build_network(const ModelMeta& meta) {
  if (meta.arch == "resnet20" || meta.arch == "resnet") {
    return std::make_shared<ResNet>(meta.option("depth", 20), meta.input.channels, meta.classes);
  }
  if (meta.arch == "tinycnn") {
    return std::make_shared<TinyCnn>(meta.input, meta.preprocess.pad_to, meta.classes,
                                     meta.option("width", 8));
  }
  std::string known;
  for (const auto& a : list_architectures()) known += (known.empty() ? "" : ", ") + a.name;
  throw UsageError("architecture '" + meta.arch + "': unknown (known: " + known + ")");
}

std::vector<NamedTensor> named_tensors(torch::nn::Module& module) {
  std::vector<NamedTensor> out;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) out.push_back({p.key(), p.value(), false});
  for (const auto& b : module.named_buffers(/*recurse=*/true)) out.push_back({b.key(), b.value(), true});
  return out;
}

int64_t parameter_count(torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters(/*recurse=*/true)) n += p.numel();
  return n;
}

}  // namespace corelocker
