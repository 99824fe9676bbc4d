// The built-in architectures: a torch module that knows its extraction structure, and the
// registry that builds one from checkpoint metadata.
#pragma once

#include <torch/torch.h>

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
  int record_bn(const std::string& path, int producer);

  Structure structure_;
};

struct ArchInfo {
  std::string name;
  std::string description;
};

// The architectures `build_network` knows.
std::vector<ArchInfo> list_architectures();

// Builds an untrained network for meta.arch / meta.options / meta.input / meta.classes.
// Throws UsageError for an unknown architecture or invalid options.
std::shared_ptr<Network> build_network(const ModelMeta& meta);

// Parameters then buffers, in module registration order.
std::vector<NamedTensor> named_tensors(torch::nn::Module& module);

// Number of parameter elements (buffers excluded).
int64_t parameter_count(torch::nn::Module& module);

}  // namespace corelocker
