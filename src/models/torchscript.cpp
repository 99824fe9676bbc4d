#include "models/torchscript.h"

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/script.h>

#include <algorithm>
#include <map>
#include <optional>

#include "data/dataset.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {

struct TorchScriptNetwork::Impl {
  torch::jit::Module module;
  Structure structure;
  std::vector<std::string> eval_only_norms;  // see batchnorms_fixed_in_eval()
};

namespace {

using torch::jit::Node;
using torch::jit::Value;

// The dotted attribute path of a value read through prim::GetAttr from `self`
// ("layer1.0.conv1.weight"), or nothing when the value comes from anywhere else.
std::optional<std::string> attribute_path(const Value* v, const Value* self) {
  std::vector<std::string> parts;
  while (v != self) {
    const Node* n = v->node();
    if (n->kind() != c10::prim::GetAttr) return std::nullopt;
    parts.push_back(n->s(c10::attr::name));
    v = n->input(0);
  }
  std::string path;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) path += (path.empty() ? "" : ".") + *it;
  return path;
}

std::string strip_suffix(const std::string& weight) {
  const auto dot = weight.rfind('.');
  return dot == std::string::npos ? weight : weight.substr(0, dot);
}

// Reads the extractable layers from the inlined forward graph, in execution order.
class GraphReader {
 public:
  GraphReader(const std::map<std::string, torch::Tensor>& params, const Value* self)
      : params_(params), self_(self) {}

  void read(const torch::jit::Block* block) {
    for (const Node* n : block->nodes()) {
      for (const torch::jit::Block* b : n->blocks()) read(b);
      const std::string kind = n->kind().toQualString();
      if (kind == "aten::conv2d" || kind == "aten::_convolution" || kind == "aten::convolution") {
        add_weighted(n, 1, 2, LayerKind::kConv2d, 4);
      } else if (kind == "aten::linear") {
        add_weighted(n, 1, 2, LayerKind::kLinear, 2);
      } else if (kind == "aten::batch_norm") {
        add_norm(n, 1, 2, LayerKind::kBatchNorm);
      } else if (kind == "aten::layer_norm") {
        add_norm(n, 2, 3, LayerKind::kLayerNorm);
      }
    }
  }

  Structure structure;
  std::vector<std::string>
      eval_only_norms;  // BatchNorm layers whose training flag is a constant false

 private:
  // The parameter a node input reads, or "" when it is not a parameter of the module.
  std::string param_of(const Node* n, size_t input) const {
    if (input >= n->inputs().size()) return "";
    auto path = attribute_path(n->input(input), self_);
    if (!path || params_.count(*path) == 0) return "";
    return *path;
  }

  // A conv or linear layer: the node's output is remembered so that a norm reading it can
  // name its producer. A weight used twice (shared layers) is recorded once.
  void add_weighted(const Node* n, size_t w, size_t b, LayerKind kind, int64_t dims) {
    const std::string weight = param_of(n, w);
    if (weight.empty() || params_.at(weight).dim() != dims) return;
    auto it = index_.find(weight);
    int idx;
    if (it != index_.end()) {
      idx = it->second;
    } else {
      structure.push_back({strip_suffix(weight), kind, weight, param_of(n, b), -1});
      idx = static_cast<int>(structure.size()) - 1;
      index_[weight] = idx;
    }
    producers_[n->output(0)] = idx;
  }

  void add_norm(const Node* n, size_t w, size_t b, LayerKind kind) {
    const std::string weight = param_of(n, w);
    if (weight.empty() || params_.at(weight).dim() != 1 || index_.count(weight)) return;
    int producer = -1;
    if (kind == LayerKind::kBatchNorm) {
      auto it = producers_.find(n->input(0));
      if (it != producers_.end()) producer = it->second;
    }
    structure.push_back({strip_suffix(weight), kind, weight, param_of(n, b), producer});
    index_[weight] = static_cast<int>(structure.size()) - 1;
    // aten::batch_norm(input, weight, bias, running_mean, running_var, training, ...): tracing
    // records the mode the module was traced in as a constant; scripting reads self.training.
    constexpr size_t kTrainingInput = 5;
    if (kind == LayerKind::kBatchNorm && n->inputs().size() > kTrainingInput) {
      const auto training = torch::jit::constant_as<bool>(n->input(kTrainingInput));
      if (training && !*training) eval_only_norms.push_back(structure.back().name);
    }
  }

  const std::map<std::string, torch::Tensor>& params_;
  const Value* self_;
  std::map<std::string, int> index_;
  std::map<const Value*, int> producers_;
};

struct GraphFacts {
  Structure structure;
  std::vector<std::string> eval_only_norms;
};

GraphFacts read_graph(torch::jit::Module& module, const std::string& what) {
  std::map<std::string, torch::Tensor> params;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) params[p.name] = p.value;
  auto method = module.find_method("forward");
  if (!method) throw FormatError(what + ": TorchScript module has no forward method");
  auto graph = method->graph()->copy();
  torch::jit::Inline(*graph);
  torch::jit::ConstantPropagation(graph);
  torch::jit::EliminateDeadCode(graph);
  GraphReader reader(params, graph->inputs().at(0));
  reader.read(graph->block());
  return {reader.structure, reader.eval_only_norms};
}

// nn::Module names may not contain dots.
std::string registered_name(const std::string& dotted) {
  std::string s = dotted;
  std::replace(s.begin(), s.end(), '.', '/');
  return s;
}

}  // namespace

TorchScriptNetwork::TorchScriptNetwork(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {
  structure_ = impl_->structure;
  // Registered so that parameters() and parameter_count see them; tensors() gives the names.
  for (const auto& p : impl_->module.named_parameters(/*recurse=*/true)) {
    register_parameter(registered_name(p.name), p.value, p.value.requires_grad());
  }
}

TorchScriptNetwork::~TorchScriptNetwork() = default;

torch::Tensor TorchScriptNetwork::forward(torch::Tensor x) {
  c10::IValue out = impl_->module.forward({std::move(x)});
  if (out.isTensor()) return out.toTensor();
  if (out.isTuple()) {
    const auto& elements = out.toTupleRef().elements();
    if (!elements.empty() && elements[0].isTensor()) return elements[0].toTensor();
  }
  throw FormatError("TorchScript model's forward returned " + std::string(out.tagKind()) +
                    ", expected a tensor of class scores");
}

void TorchScriptNetwork::train(bool on) {
  Network::train(on);
  impl_->module.train(on);
}

std::shared_ptr<TorchScriptNetwork> TorchScriptNetwork::deep_copy() const {
  auto copy = std::make_shared<Impl>(*impl_);
  {
    // Without gradients the cloned tensors are leaves, which an optimizer can take.
    torch::NoGradGuard no_grad;
    copy->module = impl_->module.deepcopy();
  }
  // The copy's parameters are fresh tensors; they train as the originals do.
  std::map<std::string, bool> grad;
  for (const auto& p : impl_->module.named_parameters(/*recurse=*/true))
    grad[p.name] = p.value.requires_grad();
  for (const auto& p : copy->module.named_parameters(/*recurse=*/true))
    p.value.requires_grad_(grad.at(p.name));
  auto net = std::make_shared<TorchScriptNetwork>(copy);
  net->train(is_training());
  return net;
}

void TorchScriptNetwork::freeze_batchnorm_statistics() {
  for (auto sub : impl_->module.modules()) {
    bool mean = false, var = false;
    for (const auto& b : sub.named_buffers(/*recurse=*/false)) {
      mean = mean || b.name == "running_mean";
      var = var || b.name == "running_var";
    }
    if (mean && var) sub.train(false);
  }
}

const std::vector<std::string>& TorchScriptNetwork::batchnorms_fixed_in_eval() const {
  return impl_->eval_only_norms;
}

std::vector<NamedTensor> TorchScriptNetwork::tensors() const {
  std::vector<NamedTensor> out;
  for (const auto& p : impl_->module.named_parameters(/*recurse=*/true))
    out.push_back({p.name, p.value, false});
  for (const auto& b : impl_->module.named_buffers(/*recurse=*/true))
    out.push_back({b.name, b.value, true});
  return out;
}

void TorchScriptNetwork::save(const std::string& path, const std::string& extra_meta_json) const {
  torch::jit::ExtraFilesMap extra{{kTorchScriptMetaFile, extra_meta_json}};
  impl_->module.save(path, extra);
}

LoadedModel load_torchscript(const std::string& path) {
  const std::string what = "model '" + path + "'";
  if (!file_exists(path)) throw IoError("cannot open " + what + ": no such file");
  torch::jit::ExtraFilesMap extra{{kTorchScriptMetaFile, ""}};
  auto impl = std::make_shared<TorchScriptNetwork::Impl>();
  try {
    impl->module = torch::jit::load(path, torch::kCPU, extra);
  } catch (const c10::Error& e) {
    throw FormatError(what + ": not a TorchScript file (LibTorch could not read it: " +
                      std::string(e.what_without_backtrace()) + ")");
  }
  impl->module.eval();
  GraphFacts facts = read_graph(impl->module, what);
  impl->structure = std::move(facts.structure);
  impl->eval_only_norms = std::move(facts.eval_only_norms);
  if (impl->structure.empty()) {
    throw FormatError(
        what +
        ": its forward graph uses no conv2d, linear, batch_norm or layer_norm on a parameter: "
        "nothing to extract");
  }
  LoadedModel m;
  const std::string& meta_json = extra[kTorchScriptMetaFile];
  if (!meta_json.empty()) {
    m.meta = meta_from_json(meta_json, what + " (" + kTorchScriptMetaFile + ")");
    if (m.meta.arch != kTorchScriptArch) {
      throw FormatError(what + ": " + kTorchScriptMetaFile + " names architecture '" + m.meta.arch +
                        "', expected '" + kTorchScriptArch + "'");
    }
  } else {
    m.meta_stored = false;
    m.meta.arch = kTorchScriptArch;
    use_dataset(dataset_info("fashion-mnist"), m.meta);
  }
  m.net = std::make_shared<TorchScriptNetwork>(impl);
  m.meta.tensors.clear();
  for (const auto& t : named_tensors(*m.net)) m.meta.tensors.push_back(t.name);
  return m;
}

LoadedModel wrap_torchscript(const torch::jit::Module& module, const std::string& what) {
  auto impl = std::make_shared<TorchScriptNetwork::Impl>();
  impl->module = module;  // a handle: the same module object, not a copy
  GraphFacts facts = read_graph(impl->module, what);
  impl->structure = std::move(facts.structure);
  impl->eval_only_norms = std::move(facts.eval_only_norms);
  if (impl->structure.empty()) {
    throw FormatError(
        what +
        ": its forward graph uses no conv2d, linear, batch_norm or layer_norm on a parameter: "
        "nothing to extract");
  }
  LoadedModel m;
  m.meta_stored = false;
  m.meta.arch = kTorchScriptArch;
  auto net = std::make_shared<TorchScriptNetwork>(impl);
  // The wrapper's own flag follows the module's (what callers that switch modes put back), set
  // without TorchScriptNetwork::train, which would give every submodule the same mode.
  net->torch::nn::Module::train(impl->module.is_training());
  m.net = net;
  for (const auto& t : named_tensors(*m.net)) m.meta.tensors.push_back(t.name);
  return m;
}

void save_torchscript(const std::string& path, LoadedModel& model) {
  auto* net = dynamic_cast<TorchScriptNetwork*>(model.net.get());
  if (net == nullptr)
    throw UsageError("model of architecture '" + model.meta.arch + "' is not a TorchScript module");
  model.meta.tensors.clear();
  for (const auto& t : net->tensors()) model.meta.tensors.push_back(t.name);
  PendingFile pending(path);
  try {
    net->save(pending.temp_path(), meta_to_json(model.meta));
  } catch (const c10::Error& e) {
    throw IoError("cannot write model '" + path + "': " + e.what_without_backtrace());
  }
  pending.commit();
}

}  // namespace corelocker
