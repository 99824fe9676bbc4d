#include "models/network.h"

#include <algorithm>

#include "models/cnn_lstm.h"
#include "models/densenet.h"
#include "models/fcn.h"
#include "models/preresnet.h"
#include "models/resnet.h"
#include "models/tiny_cnn.h"
#include "models/torchscript.h"
#include "models/vgg.h"
#include "models/vit.h"
#include "util/error.h"

namespace corelocker {

const char* to_string(LayerKind k) {
  switch (k) {
    case LayerKind::kConv2d:
      return "conv2d";
    case LayerKind::kLinear:
      return "linear";
    case LayerKind::kBatchNorm:
      return "batchnorm";
    case LayerKind::kLayerNorm:
      return "layernorm";
  }
  return "?";
}

int Network::record_conv(const std::string& path, const torch::nn::Conv2d& conv) {
  structure_.push_back(
      {path, LayerKind::kConv2d, path + ".weight", conv->options.bias() ? path + ".bias" : "", -1});
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

int Network::record_layernorm(const std::string& path) {
  structure_.push_back({path, LayerKind::kLayerNorm, path + ".weight", path + ".bias", -1});
  return static_cast<int>(structure_.size()) - 1;
}

int Network::record_matrix(const std::string& name, const std::string& weight,
                           const std::string& bias) {
  structure_.push_back({name, LayerKind::kLinear, weight, bias, -1});
  return static_cast<int>(structure_.size()) - 1;
}

std::vector<ArchInfo> list_architectures() {
  return {
      {"resnet20",
       "CIFAR ResNet (basic blocks, 16/32/64 channels), depth 6n+2",
       {{"depth", 20, "6n+2"}},
       32},
      {"vgg19",
       "VGG-19 with BatchNorm, CIFAR variant (Network Slimming)",
       {{"width", 64, "channels of the first stage (64: VGG-19)"}},
       32},
      {"preresnet",
       "pre-activation ResNet (Network Slimming), bottleneck depth 9n+2",
       {{"depth", 164, "9n+2 (bottleneck) or 6n+2 (basic)"},
        {"bottleneck", 1, "1: bottleneck blocks, 0: basic blocks"}},
       32},
      {"densenet",
       "DenseNet (BN-ReLU-conv, 3 dense blocks), depth 3n+4",
       {{"depth", 40, "3n+4"}, {"growth", 12, "growth rate"}},
       32},
      {"fcn",
       "fully connected ReLU network: depth hidden layers of width neurons",
       {{"depth", 4, "hidden layers"},
        {"width", 256, "neurons per hidden layer"},
        {"norm", 1, "1: BatchNorm1d after each hidden layer, 0: none"}},
       0},
      {"vit",
       "small Vision Transformer (patches, LayerNorm, multi-head attention, MLP)",
       {{"patch", 4, "patch size"},
        {"dim", 128, "embedding width"},
        {"depth", 6, "transformer blocks"},
        {"heads", 4, "attention heads"},
        {"mlp", 256, "MLP hidden width"}},
       0},
      {"cnnlstm",
       "conv feature extractor feeding an LSTM over rows",
       {{"width", 32, "channels of the first conv (the second has twice as many)"},
        {"hidden", 128, "LSTM hidden size"}},
       0},
      {"tinycnn",
       "two conv+BN blocks and two linear layers; for fast tests",
       {{"width", 8, "channels of the first conv"}},
       0},
  };
}

ArchInfo architecture(const std::string& name) {
  const std::string canonical = name == "resnet" ? "resnet20" : name;
  std::string known;
  for (const auto& a : list_architectures()) {
    if (a.name == canonical) return a;
    known += (known.empty() ? "" : ", ") + a.name;
  }
  throw UsageError("architecture '" + name + "': unknown (known: " + known + ")");
}

std::map<std::string, int64_t> resolve_options(const ArchInfo& arch,
                                               const std::map<std::string, int64_t>& given) {
  std::map<std::string, int64_t> out;
  for (const auto& o : arch.options) out[o.name] = o.fallback;
  for (const auto& [key, value] : given) {
    if (out.count(key) == 0) {
      std::string known;
      for (const auto& o : arch.options) known += (known.empty() ? "" : ", ") + o.name;
      throw UsageError("architecture '" + arch.name + "' has no option '" + key +
                       "' (options: " + known + ")");
    }
    out[key] = value;
  }
  return out;
}

std::shared_ptr<Network> build_network(const ModelMeta& meta) {
  const ArchInfo arch = architecture(meta.arch);
  const auto opt = resolve_options(arch, meta.options);
  const InputShape& in = meta.input;
  const int64_t h = std::max(in.height, meta.preprocess.pad_to);
  const int64_t w = std::max(in.width, meta.preprocess.pad_to);
  if (in.channels < 1 || h < 1 || w < 1 || meta.classes < 2) {
    throw UsageError("model input " + std::to_string(in.channels) + "x" + std::to_string(h) + "x" +
                     std::to_string(w) + " with " + std::to_string(meta.classes) +
                     " classes: need at least one channel, one pixel and two classes");
  }
  if (arch.name == "resnet20")
    return std::make_shared<ResNet>(opt.at("depth"), in.channels, meta.classes);
  if (arch.name == "vgg19")
    return std::make_shared<Vgg>(in.channels, meta.classes, opt.at("width"));
  if (arch.name == "preresnet") {
    return std::make_shared<PreResNet>(opt.at("depth"), opt.at("bottleneck") != 0, in.channels,
                                       meta.classes);
  }
  if (arch.name == "densenet") {
    return std::make_shared<DenseNet>(opt.at("depth"), opt.at("growth"), in.channels, meta.classes);
  }
  if (arch.name == "fcn") {
    return std::make_shared<Fcn>(in.channels * h * w, meta.classes, opt.at("depth"),
                                 opt.at("width"), opt.at("norm") != 0);
  }
  if (arch.name == "vit") {
    VitOptions v;
    v.patch = opt.at("patch");
    v.dim = opt.at("dim");
    v.depth = opt.at("depth");
    v.heads = opt.at("heads");
    v.mlp = opt.at("mlp");
    return std::make_shared<Vit>(in.channels, h, w, meta.classes, v);
  }
  if (arch.name == "cnnlstm") {
    return std::make_shared<CnnLstm>(in.channels, h, w, meta.classes, opt.at("width"),
                                     opt.at("hidden"));
  }
  return std::make_shared<TinyCnn>(in, meta.preprocess.pad_to, meta.classes, opt.at("width"));
}

std::vector<NamedTensor> named_tensors(torch::nn::Module& module) {
  // A TorchScript module keeps its own (dotted) names.
  if (auto* script = dynamic_cast<TorchScriptNetwork*>(&module)) return script->tensors();
  std::vector<NamedTensor> out;
  for (const auto& p : module.named_parameters(/*recurse=*/true))
    out.push_back({p.key(), p.value(), false});
  for (const auto& b : module.named_buffers(/*recurse=*/true))
    out.push_back({b.key(), b.value(), true});
  return out;
}

std::vector<NamedTensor> named_parameters_of(torch::nn::Module& module) {
  std::vector<NamedTensor> out;
  for (auto& t : named_tensors(module)) {
    if (!t.is_buffer) out.push_back(std::move(t));
  }
  return out;
}

void freeze_batchnorm_statistics(torch::nn::Module& module) {
  if (auto* script = dynamic_cast<TorchScriptNetwork*>(&module))
    return script->freeze_batchnorm_statistics();
  for (auto& m : module.modules(/*include_self=*/false)) {
    if (m->as<torch::nn::BatchNorm2d>() || m->as<torch::nn::BatchNorm1d>()) m->eval();
  }
}

int64_t parameter_count(torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters(/*recurse=*/true)) n += p.numel();
  return n;
}

}  // namespace corelocker
