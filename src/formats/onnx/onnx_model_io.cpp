// Parsing, loading and saving ONNX model files, and their fingerprint.
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "formats/onnx/onnx_model_internal.h"
#include "onnx/checker.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {
namespace {

using onnx::TensorProto;

}  // namespace

using onnx_detail::encode_typed;
using onnx_detail::os_error;
using onnx_detail::read_initializer;
using onnx_detail::read_structure;

// ------------------------------------------------------------------ parse / load / save

OnnxModel parse_onnx_model(const uint8_t* data, size_t size, const std::string& model_dir,
                           const std::string& what) {
  OnnxModel m;
  // protobuf
  if (size > static_cast<size_t>(INT_MAX)) {
    throw FormatError(what + ": " + std::to_string(size) +
                      " bytes; a ModelProto is at most 2 GiB (use external data)");
  }
  onnx::ModelProto& proto = m.impl_->proto;
  if (!proto.ParseFromArray(data, static_cast<int>(size))) {
    throw FormatError(
        what + ": not a valid ONNX ModelProto (protobuf parse failed; truncated or not ONNX)");
  }
  if (!proto.has_graph()) throw FormatError(what + ": ModelProto without a graph");
  if (proto.ir_version() <= 0)
    throw FormatError(what + ": ir_version " + std::to_string(proto.ir_version()) +
                      ", expected >= 1");
  onnx::GraphProto* g = proto.mutable_graph();
  if (g->sparse_initializer_size() > 0) {
    throw FormatError(what + ": " + std::to_string(g->sparse_initializer_size()) +
                      " sparse initializers; not supported");
  }
  // initializers
  std::set<std::string> names;
  m.initializers_.reserve(static_cast<size_t>(g->initializer_size()));
  for (int i = 0; i < g->initializer_size(); ++i) {
    OnnxTensor t = read_initializer(*g->mutable_initializer(i), model_dir, what);
    if (!names.insert(t.name).second)
      throw FormatError(what + ": initializer '" + t.name + "' appears twice");
    m.initializers_.push_back(std::move(t));
  }
  // layers
  m.structure_ = read_structure(*g, m.initializers_, what);
  return m;
}

namespace {

std::string dir_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

void run_checker(const std::string& path, const std::string& what) {
  try {
    onnx::checker::check_model(path);
  } catch (const std::exception& e) {
    throw FormatError(what + ": the ONNX checker refuses it: " + e.what());
  }
}

}  // namespace

OnnxModel load_onnx_model(const std::string& path) {
  const std::vector<uint8_t> bytes = read_file(path);
  const std::string what = "ONNX model '" + path + "'";
  OnnxModel m = parse_onnx_model(bytes.data(), bytes.size(), dir_of(path), what);
  run_checker(path, what);
  return m;
}

void save_onnx_model(const std::string& path, const OnnxModel& model) {
  const std::string what = "ONNX model '" + path + "'";
  onnx::ModelProto proto =
      model.impl_->proto;  // values of raw / external initializers are not in it
  onnx::GraphProto* g = proto.mutable_graph();
  if (static_cast<size_t>(g->initializer_size()) != model.initializers_.size()) {
    throw Error(what + ": initializer list changed size");
  }
  const std::string data_name = base_of(path) + ".data";
  std::vector<uint8_t> data;  // the external data file, when any initializer is external
  for (int i = 0; i < g->initializer_size(); ++i) {
    TensorProto& t = *g->mutable_initializer(i);
    const OnnxTensor& v = model.initializers_[static_cast<size_t>(i)];
    const size_t esize = onnx_element_size(v.data_type);
    if (v.name != t.name() || v.data_type != t.data_type() || v.bytes.size() != v.numel() * esize) {
      throw Error(what + ": initializer '" + v.name + "' changed name, type or size in memory");
    }
    switch (v.storage) {
      case OnnxStorage::kRaw:
        t.set_raw_data(v.bytes.data(), v.bytes.size());
        break;
      case OnnxStorage::kTyped:
        encode_typed(t, v.bytes, esize);
        break;
      case OnnxStorage::kExternal: {
        t.clear_external_data();
        auto add = [&t](const std::string& k, const std::string& val) {
          auto* e = t.add_external_data();
          e->set_key(k);
          e->set_value(val);
        };
        add("location", data_name);
        add("offset", std::to_string(data.size()));
        add("length", std::to_string(v.bytes.size()));
        data.insert(data.end(), v.bytes.begin(), v.bytes.end());
        break;
      }
    }
  }
  std::string serialized;
  if (proto.ByteSizeLong() > static_cast<size_t>(INT_MAX) ||
      !proto.SerializeToString(&serialized)) {
    throw Error(what + ": cannot serialise the model (larger than protobuf's 2 GiB?)");
  }
  PendingFile model_file(path);
  {
    FILE* f = std::fopen(model_file.temp_path().c_str(), "wb");
    if (f == nullptr) throw IoError(os_error("cannot open", model_file.temp_path()));
    const bool ok = std::fwrite(serialized.data(), 1, serialized.size(), f) == serialized.size();
    if (std::fclose(f) != 0 || !ok) throw IoError(os_error("cannot write", model_file.temp_path()));
  }
  if (data.empty() &&
      std::none_of(model.initializers_.begin(), model.initializers_.end(),
                   [](const OnnxTensor& t) { return t.storage == OnnxStorage::kExternal; })) {
    run_checker(model_file.temp_path(), what);
    model_file.commit();
    return;
  }
  // The checker looks for the external data under its final name, so that file goes first;
  // it is removed again if the model is refused.
  const std::string data_path = dir_of(path) + "/" + data_name;
  write_file_atomic(data_path, data);
  try {
    run_checker(model_file.temp_path(), what);
    model_file.commit();
  } catch (...) {
    ::unlink(data_path.c_str());
    throw;
  }
}

Digest onnx_fingerprint(const OnnxModel& model) {
  std::vector<const OnnxTensor*> order;
  for (const auto& t : model.initializers()) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const OnnxTensor* a, const OnnxTensor* b) { return a->name < b->name; });
  Hasher h;
  h.update_str("corelocker-onnx-fingerprint-v1");
  h.update_u64(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    const OnnxTensor& t = *order[i];
    if (i > 0 && order[i - 1]->name == t.name)
      throw Error("fingerprint: duplicate initializer '" + t.name + "'");
    h.update_str(t.name);
    h.update_str(onnx_type_name(t.data_type));
    h.update_u64(t.dims.size());
    for (int64_t d : t.dims) h.update_u64(static_cast<uint64_t>(d));
    h.update_u64(t.bytes.size());
    h.update(t.bytes.data(), t.bytes.size());
  }
  return h.finish();
}

}  // namespace corelocker
