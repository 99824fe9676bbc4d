// The built-in architectures: a torch module that knows its extraction structure, and the
// registry that builds one from checkpoint metadata.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/model_meta.h"
#include "models/structure.h"

namespace corelocker {

// One named parameter or buffer; `tensor` shares storage with the module.
struct NamedTensor {
  std::string name;
  torch::Tensor tensor;
  bool is_buffer = false;
};

class Network : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(torch::Tensor x) = 0;
  const Structure& structure() const { return structure_; }

 protected:
  // Register helpers that also record the layer in the structure; return its index there.
  int record_conv(const std::string& path, const torch::nn::Conv2d& conv);
  int record_linear(const std::string& path, const torch::nn::Linear& linear);
  // A normalisation layer; `producer` is the index of the conv or linear layer feeding it
  // directly, -1 when it is fed by anything else (a sum, a concatenation, a pre-activation).
  int record_bn(const std::string& path, int producer);
  int record_layernorm(const std::string& path);
  // A weight matrix that is not a torch::nn::Linear (LSTM gates, fused projections): its
  // entries are l1 units like a linear layer's. `bias` may be empty.
  int record_matrix(const std::string& name, const std::string& weight, const std::string& bias);

  Structure structure_;
};

// An integer option of an architecture, stored in ModelMeta.options.
struct ArchOption {
  std::string name;
  int64_t fallback;
  std::string help;
};

struct ArchInfo {
  std::string name;
  std::string description;
  std::vector<ArchOption> options;  // every option the architecture reads, with its default
  int64_t pad_to = 0;               // input padding (CIFAR-style networks take 28x28 as 32x32)
};

// The architectures `build_network` knows.
std::vector<ArchInfo> list_architectures();

// One architecture (aliases resolved). Throws UsageError for an unknown name.
ArchInfo architecture(const std::string& name);

// The architecture's options with defaults filled in and `given` applied over them.
// Throws UsageError for an option the architecture does not have.
std::map<std::string, int64_t> resolve_options(const ArchInfo& arch,
                                               const std::map<std::string, int64_t>& given);

// Builds an untrained network for meta.arch / meta.options / meta.input / meta.classes.
// Throws UsageError for an unknown architecture or invalid options.
std::shared_ptr<Network> build_network(const ModelMeta& meta);

// Parameters then buffers, in module registration order.
std::vector<NamedTensor> named_tensors(torch::nn::Module& module);

// The parameters of named_tensors (buffers left out), under the same names: what trains, by the
// names that the structure, keys and masks use (a TorchScript module's own dotted names).
std::vector<NamedTensor> named_parameters_of(torch::nn::Module& module);

// Puts every BatchNorm layer in evaluation mode, so that its running statistics stay as they are
// while the rest of the network trains (built-in networks and TorchScript modules alike).
void freeze_batchnorm_statistics(torch::nn::Module& module);

// Number of parameter elements (buffers excluded).
int64_t parameter_count(torch::nn::Module& module);

}  // namespace corelocker
