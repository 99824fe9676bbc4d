// OnnxModel's view of its graph: graph facts and metadata, the data input, the batch norms, and
// the model serialised for a runtime.
#include <climits>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "formats/onnx/onnx_model_internal.h"
#include "util/error.h"

namespace corelocker {
namespace {

using onnx::TensorProto;

}  // namespace

// ------------------------------------------------------------------ OnnxModel

OnnxModel::OnnxModel() : impl_(std::make_unique<Impl>()) {}
OnnxModel::~OnnxModel() = default;
OnnxModel::OnnxModel(OnnxModel&&) noexcept = default;
OnnxModel& OnnxModel::operator=(OnnxModel&&) noexcept = default;

OnnxTensor* OnnxModel::find(const std::string& name) {
  for (auto& t : initializers_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const OnnxTensor* OnnxModel::find(const std::string& name) const {
  return const_cast<OnnxModel*>(this)->find(name);
}

std::string OnnxModel::producer() const {
  const auto& p = impl_->proto;
  return p.producer_name() + (p.producer_version().empty() ? "" : " " + p.producer_version());
}

int64_t OnnxModel::ir_version() const { return impl_->proto.ir_version(); }

int64_t OnnxModel::opset() const {
  for (const auto& o : impl_->proto.opset_import()) {
    if (o.domain().empty() || o.domain() == "ai.onnx") return o.version();
  }
  return 0;
}

size_t OnnxModel::node_count() const {
  return static_cast<size_t>(impl_->proto.graph().node_size());
}

std::vector<std::pair<std::string, std::string>> OnnxModel::metadata() const {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& e : impl_->proto.metadata_props()) out.emplace_back(e.key(), e.value());
  return out;
}

void OnnxModel::set_metadata(const std::string& key, const std::string& value) {
  auto* props = impl_->proto.mutable_metadata_props();
  for (int i = 0; i < props->size(); ++i) {
    if (props->Get(i).key() != key) continue;
    if (value.empty()) {
      props->DeleteSubrange(i, 1);
    } else {
      props->Mutable(i)->set_value(value);
    }
    return;
  }
  if (value.empty()) return;
  auto* e = props->Add();
  e->set_key(key);
  e->set_value(value);
}

// ------------------------------------------------------------------ for a runtime

namespace {

bool is_default_domain(const onnx::NodeProto& n) {
  return n.domain().empty() || n.domain() == "ai.onnx";
}

// The name a runtime knows a node by (OnnxModel::runtime_bytes names unnamed nodes).
std::string node_name(const onnx::NodeProto& n, int index) {
  return n.name().empty() ? "node" + std::to_string(index) : n.name();
}

// Initializers by name, with the outputs of Identity nodes of initializers as further names of
// the same initializer.
std::unordered_map<std::string, const OnnxTensor*> initializer_aliases(
    const onnx::GraphProto& g, const std::vector<OnnxTensor>& inits) {
  std::unordered_map<std::string, const OnnxTensor*> out;
  for (const auto& t : inits) out[t.name] = &t;
  for (const auto& n : g.node()) {
    if (n.op_type() != "Identity" || !is_default_domain(n) || n.input_size() != 1 ||
        n.output_size() != 1)
      continue;
    auto it = out.find(n.input(0));
    if (it != out.end() && !out.count(n.output(0))) out[n.output(0)] = it->second;
  }
  return out;
}

}  // namespace

OnnxInput OnnxModel::input() const {
  const onnx::GraphProto& g = impl_->proto.graph();
  for (const auto& in : g.input()) {
    if (find(in.name()) != nullptr) continue;  // IR < 4 lists initializers as inputs too
    OnnxInput out;
    out.name = in.name();
    if (in.type().has_tensor_type() && in.type().tensor_type().has_shape()) {
      for (const auto& d : in.type().tensor_type().shape().dim()) {
        out.dims.push_back(d.has_dim_value() && d.dim_value() > 0 ? d.dim_value() : -1);
      }
    }
    return out;
  }
  throw FormatError("ONNX graph '" + g.name() +
                    "': every input is an initializer; no input takes data");
}

std::vector<OnnxBatchNorm> OnnxModel::batchnorms() const {
  const onnx::GraphProto& g = impl_->proto.graph();
  const auto init = initializer_aliases(g, initializers_);
  std::unordered_map<std::string, std::pair<int, int>> producer;  // tensor -> (node, output)
  std::vector<OnnxBatchNorm> out;
  for (int i = 0; i < g.node_size(); ++i) {
    const onnx::NodeProto& n = g.node(i);
    for (int k = 0; k < n.output_size(); ++k) producer.emplace(n.output(k), std::make_pair(i, k));
    if (n.op_type() != "BatchNormalization" || !is_default_domain(n) || n.input_size() < 5)
      continue;
    auto mean = init.find(n.input(3));
    auto var = init.find(n.input(4));
    if (mean == init.end() || var == init.end()) continue;
    const OnnxTensor& m = *mean->second;
    const OnnxTensor& v = *var->second;
    if (!onnx_is_float(m.data_type) || m.data_type != v.data_type || m.numel() != v.numel())
      continue;
    OnnxBatchNorm b;
    b.node = node_name(n, i);
    b.input = n.input(0);
    b.mean = n.input(3);
    b.var = n.input(4);
    b.data_type = m.data_type;
    b.channels = static_cast<int64_t>(m.numel());
    auto p = producer.find(b.input);
    if (p != producer.end()) {
      b.producer = node_name(g.node(p->second.first), p->second.first);
      b.producer_output = p->second.second;
    }
    out.push_back(std::move(b));
  }
  return out;
}

std::string OnnxModel::runtime_bytes(
    const std::map<std::string, std::vector<uint8_t>>& replace) const {
  onnx::ModelProto proto = impl_->proto;  // values of raw / external initializers are not in it
  onnx::GraphProto* g = proto.mutable_graph();
  std::set<std::string> used;
  // The value `name` gets: its replacement, else its initializer's replacement, else the
  // initializer's current value.
  auto value = [&](const std::string& name,
                   const OnnxTensor& source) -> const std::vector<uint8_t>& {
    for (const std::string* key : {&name, &source.name}) {
      auto it = replace.find(*key);
      if (it == replace.end()) continue;
      if (it->second.size() != source.bytes.size()) {
        throw Error("ONNX initializer '" + *key + "': replacement of " +
                    std::to_string(it->second.size()) + " bytes, the initializer has " +
                    std::to_string(source.bytes.size()));
      }
      used.insert(*key);
      return it->second;
    }
    return source.bytes;
  };
  auto set_inline = [](TensorProto& t, const std::vector<uint8_t>& bytes) {
    t.clear_float_data();
    t.clear_double_data();
    t.clear_int32_data();
    t.clear_int64_data();
    t.clear_uint64_data();
    t.clear_external_data();
    t.set_data_location(TensorProto::DEFAULT);
    t.set_raw_data(bytes.data(), bytes.size());
  };
  if (static_cast<size_t>(g->initializer_size()) != initializers_.size())
    throw Error("ONNX initializer list changed size");
  for (int i = 0; i < g->initializer_size(); ++i) {
    const OnnxTensor& v = initializers_[static_cast<size_t>(i)];
    set_inline(*g->mutable_initializer(i), value(v.name, v));
  }
  // Identity nodes of initializers become initializers; every other node stays, named.
  const auto init = initializer_aliases(*g, initializers_);
  google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
  for (int i = 0; i < g->node_size(); ++i) {
    onnx::NodeProto& n = *g->mutable_node(i);
    const bool folded = n.op_type() == "Identity" && is_default_domain(n) && n.input_size() == 1 &&
                        n.output_size() == 1 && init.count(n.input(0)) &&
                        find(n.output(0)) == nullptr;
    if (folded) {
      const OnnxTensor& source = *init.at(n.input(0));
      TensorProto* t = g->add_initializer();
      t->set_name(n.output(0));
      t->set_data_type(source.data_type);
      for (int64_t d : source.dims) t->add_dims(d);
      set_inline(*t, value(n.output(0), source));
      continue;
    }
    n.set_name(node_name(n, i));
    *nodes.Add() = std::move(n);
  }
  g->mutable_node()->Swap(&nodes);
  for (const auto& [name, bytes] : replace) {
    if (!used.count(name)) throw Error("ONNX model has no initializer '" + name + "' to replace");
  }
  std::string out;
  if (proto.ByteSizeLong() > static_cast<size_t>(INT_MAX) || !proto.SerializeToString(&out)) {
    throw Error("ONNX model: cannot serialise it for the runtime (larger than protobuf's 2 GiB?)");
  }
  return out;
}

}  // namespace corelocker
