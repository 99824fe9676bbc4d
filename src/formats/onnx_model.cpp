#include "formats/onnx_model.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <unordered_map>

#include "onnx/checker.h"
#include "onnx/onnx_pb.h"
#include "util/atomic_file.h"
#include "util/checked.h"
#include "util/error.h"

namespace corelocker {

struct OnnxModel::Impl {
  // The whole model, except that the values of raw and external initializers are moved out
  // into OnnxModel::initializers_ (so that they are not held twice); the writer puts them back.
  onnx::ModelProto proto;
};

namespace {

using onnx::TensorProto;
using onnx::TensorProto_DataType;

// ------------------------------------------------------------------ data types

int64_t sat_numel(const std::vector<int64_t>& dims, const std::string& what) {
  uint64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0) throw FormatError(what + ": negative dimension " + std::to_string(d));
    n = checked_mul(n, static_cast<uint64_t>(d), what + ": element count");
  }
  if (n > static_cast<uint64_t>(INT64_MAX))
    throw FormatError(what + ": element count " + std::to_string(n) + " too large");
  return static_cast<int64_t>(n);
}

std::string dims_str(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// Which typed field ONNX assigns to a data type.
enum class Field { kFloat, kDouble, kInt32, kInt64, kUint64, kNone };

Field typed_field(int32_t t) {
  switch (t) {
    case TensorProto::FLOAT:
      return Field::kFloat;
    case TensorProto::DOUBLE:
      return Field::kDouble;
    case TensorProto::INT64:
      return Field::kInt64;
    case TensorProto::UINT32:
    case TensorProto::UINT64:
      return Field::kUint64;
    case TensorProto::INT32:
    case TensorProto::INT16:
    case TensorProto::INT8:
    case TensorProto::UINT16:
    case TensorProto::UINT8:
    case TensorProto::BOOL:
    case TensorProto::FLOAT16:
    case TensorProto::BFLOAT16:
      return Field::kInt32;
    default:
      return Field::kNone;
  }
}

int typed_count(const TensorProto& t) {
  return t.float_data_size() + t.double_data_size() + t.int32_data_size() + t.int64_data_size() +
         t.uint64_data_size() + t.string_data_size();
}

// The range a value of int32_data must lie in for a narrow type.
std::pair<int64_t, int64_t> int32_field_range(int32_t t) {
  switch (t) {
    case TensorProto::INT8:
      return {INT8_MIN, INT8_MAX};
    case TensorProto::UINT8:
      return {0, UINT8_MAX};
    case TensorProto::BOOL:
      return {0, 1};
    case TensorProto::INT16:
      return {INT16_MIN, INT16_MAX};
    case TensorProto::UINT16:
    case TensorProto::FLOAT16:
    case TensorProto::BFLOAT16:
      return {0, UINT16_MAX};
    default:
      return {INT32_MIN, INT32_MAX};
  }
}

template <typename T>
void put(std::vector<uint8_t>& out, size_t i, T v) {
  std::memcpy(out.data() + i * sizeof(T), &v, sizeof(T));
}
template <typename T>
T get(const std::vector<uint8_t>& in, size_t i) {
  T v;
  std::memcpy(&v, in.data() + i * sizeof(T), sizeof(T));
  return v;
}

// Decodes the typed field of `t` into little-endian bytes.
std::vector<uint8_t> decode_typed(const TensorProto& t, uint64_t numel, size_t esize,
                                  const std::string& what) {
  const Field f = typed_field(t.data_type());
  int count = 0;
  switch (f) {
    case Field::kFloat:
      count = t.float_data_size();
      break;
    case Field::kDouble:
      count = t.double_data_size();
      break;
    case Field::kInt32:
      count = t.int32_data_size();
      break;
    case Field::kInt64:
      count = t.int64_data_size();
      break;
    case Field::kUint64:
      count = t.uint64_data_size();
      break;
    case Field::kNone:
      break;
  }
  if (typed_count(t) != count) {
    throw FormatError(what + ": values in a field other than the one for data type " +
                      onnx_type_name(t.data_type()));
  }
  if (static_cast<uint64_t>(count) != numel) {
    throw FormatError(what + ": " + std::to_string(count) + " typed values, dims " +
                      dims_str({t.dims().begin(), t.dims().end()}) + " hold " +
                      std::to_string(numel));
  }
  std::vector<uint8_t> out(static_cast<size_t>(numel) * esize);
  const auto [lo, hi] = int32_field_range(t.data_type());
  for (int i = 0; i < count; ++i) {
    const size_t k = static_cast<size_t>(i);
    switch (f) {
      case Field::kFloat:
        put<float>(out, k, t.float_data(i));
        break;
      case Field::kDouble:
        put<double>(out, k, t.double_data(i));
        break;
      case Field::kInt64:
        put<int64_t>(out, k, t.int64_data(i));
        break;
      case Field::kUint64: {
        const uint64_t v = t.uint64_data(i);
        if (t.data_type() == TensorProto::UINT32) {
          if (v > UINT32_MAX)
            throw FormatError(what + ": value " + std::to_string(v) + " does not fit UINT32");
          put<uint32_t>(out, k, static_cast<uint32_t>(v));
        } else {
          put<uint64_t>(out, k, v);
        }
        break;
      }
      case Field::kInt32: {
        const int64_t v = t.int32_data(i);
        if (v < lo || v > hi) {
          throw FormatError(what + ": int32_data value " + std::to_string(v) + " does not fit " +
                            onnx_type_name(t.data_type()));
        }
        if (esize == 1)
          put<uint8_t>(out, k, static_cast<uint8_t>(v));
        else if (esize == 2)
          put<uint16_t>(out, k, static_cast<uint16_t>(v));
        else
          put<int32_t>(out, k, static_cast<int32_t>(v));
        break;
      }
      case Field::kNone:
        break;
    }
  }
  return out;
}

// Writes little-endian bytes back into the typed field of `t` (the inverse of decode_typed).
void encode_typed(TensorProto& t, const std::vector<uint8_t>& bytes, size_t esize) {
  const uint64_t n = esize ? bytes.size() / esize : 0;
  t.clear_float_data();
  t.clear_double_data();
  t.clear_int32_data();
  t.clear_int64_data();
  t.clear_uint64_data();
  const bool is_signed = t.data_type() == TensorProto::INT8 || t.data_type() == TensorProto::INT16;
  for (uint64_t i = 0; i < n; ++i) {
    const size_t k = static_cast<size_t>(i);
    switch (typed_field(t.data_type())) {
      case Field::kFloat:
        t.add_float_data(get<float>(bytes, k));
        break;
      case Field::kDouble:
        t.add_double_data(get<double>(bytes, k));
        break;
      case Field::kInt64:
        t.add_int64_data(get<int64_t>(bytes, k));
        break;
      case Field::kUint64:
        t.add_uint64_data(esize == 4 ? get<uint32_t>(bytes, k) : get<uint64_t>(bytes, k));
        break;
      case Field::kInt32:
        if (esize == 1)
          t.add_int32_data(is_signed ? get<int8_t>(bytes, k) : get<uint8_t>(bytes, k));
        else if (esize == 2)
          t.add_int32_data(is_signed ? get<int16_t>(bytes, k) : get<uint16_t>(bytes, k));
        else
          t.add_int32_data(get<int32_t>(bytes, k));
        break;
      case Field::kNone:
        break;
    }
  }
}

// ------------------------------------------------------------------ external data

std::string os_error(const std::string& action, const std::string& path) {
  return action + " '" + path + "': " + std::strerror(errno);
}

std::string real_path(const std::string& path) {
  char* r = ::realpath(path.c_str(), nullptr);
  if (r == nullptr) throw IoError(os_error("cannot resolve", path));
  std::string s(r);
  std::free(r);
  return s;
}

uint64_t parse_decimal(const std::string& s, const std::string& what) {
  if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos) {
    throw FormatError(what + " '" + s + "' is not a decimal number");
  }
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), nullptr, 10);
  if (errno == ERANGE) throw FormatError(what + " '" + s + "' is out of range");
  return v;
}

// ONNX's rules for an external data location: relative, no `..`, inside the model's folder
// after resolving symlinks, a regular file. Returns the path to open.
std::string checked_location(const std::string& location, const std::string& model_dir,
                             const std::string& what) {
  if (location.empty()) throw FormatError(what + ": empty external data location");
  if (location.find('\0') != std::string::npos)
    throw FormatError(what + ": external data location contains NUL");
  if (location.front() == '/' || location.front() == '\\') {
    throw FormatError(what + ": external data location '" + location + "' is an absolute path");
  }
  size_t start = 0;
  while (start <= location.size()) {
    size_t end = location.find_first_of("/\\", start);
    if (end == std::string::npos) end = location.size();
    if (location.compare(start, end - start, "..") == 0 && end - start == 2) {
      throw FormatError(what + ": external data location '" + location + "' has a '..' component");
    }
    start = end + 1;
  }
  if (location.size() >= 2 && location[1] == ':') {
    throw FormatError(what + ": external data location '" + location + "' is an absolute path");
  }
  const std::string path = (model_dir.empty() ? std::string(".") : model_dir) + "/" + location;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw IoError(what + ": " + os_error("cannot open external data", path));
  if (!S_ISREG(st.st_mode))
    throw FormatError(what + ": external data '" + location + "' is not a regular file");
  std::string dir = real_path(model_dir.empty() ? "." : model_dir);
  if (dir.back() != '/') dir += '/';
  const std::string file = real_path(path);
  if (file.compare(0, dir.size(), dir) != 0) {
    throw FormatError(what + ": external data location '" + location +
                      "' leaves the model's folder (resolves to '" + file + "')");
  }
  return path;
}

std::vector<uint8_t> read_range(const std::string& path, uint64_t offset, uint64_t length,
                                const std::string& what) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw IoError(what + ": " + os_error("cannot open external data", path));
  std::vector<uint8_t> out(static_cast<size_t>(length));
  size_t got = 0;
  while (got < out.size()) {
    ssize_t n = ::pread(fd, out.data() + got, out.size() - got, static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      throw IoError(what + ": " + os_error("cannot read external data", path));
    }
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  return out;
}

std::vector<uint8_t> read_external(const TensorProto& t, uint64_t nbytes,
                                   const std::string& model_dir, const std::string& what) {
  std::map<std::string, std::string> keys;
  for (const auto& e : t.external_data()) {
    const std::string& k = e.key();
    if (k != "location" && k != "offset" && k != "length" && k != "checksum") {
      throw FormatError(what + ": unknown external data key '" + k + "'");
    }
    if (!keys.emplace(k, e.value()).second)
      throw FormatError(what + ": external data key '" + k + "' given twice");
  }
  if (!keys.count("location")) throw FormatError(what + ": external data without a location");
  const std::string path = checked_location(keys["location"], model_dir, what);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw IoError(what + ": " + os_error("cannot open external data", path));
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  const uint64_t offset =
      keys.count("offset") ? parse_decimal(keys["offset"], what + ": external data offset") : 0;
  if (offset > file_size) {
    throw FormatError(what + ": external data offset " + std::to_string(offset) +
                      " is past the end of '" + keys["location"] + "' (" +
                      std::to_string(file_size) + " bytes)");
  }
  const uint64_t length = keys.count("length")
                              ? parse_decimal(keys["length"], what + ": external data length")
                              : file_size - offset;
  const uint64_t end = checked_add(offset, length, what + ": external data offset + length");
  if (end > file_size) {
    throw FormatError(what + ": external data [" + std::to_string(offset) + ", " +
                      std::to_string(end) + ") is past the end of '" + keys["location"] + "' (" +
                      std::to_string(file_size) + " bytes)");
  }
  if (length != nbytes) {
    throw FormatError(what + ": external data length " + std::to_string(length) +
                      ", dims and data type need " + std::to_string(nbytes) + " bytes");
  }
  return read_range(path, offset, length, what);
}

// ------------------------------------------------------------------ initializers

OnnxTensor read_initializer(TensorProto& t, const std::string& model_dir,
                            const std::string& file_what) {
  const std::string what = file_what + ": initializer '" + t.name() + "'";
  if (t.name().empty()) throw FormatError(file_what + ": initializer without a name");
  OnnxTensor out;
  out.name = t.name();
  out.data_type = t.data_type();
  out.dims.assign(t.dims().begin(), t.dims().end());
  const size_t esize = onnx_element_size(t.data_type());
  if (esize == 0)
    throw FormatError(what + ": data type " + onnx_type_name(t.data_type()) + " is not supported");
  if (t.has_segment()) throw FormatError(what + ": segmented tensors are not supported");
  const uint64_t numel = static_cast<uint64_t>(sat_numel(out.dims, what));
  const uint64_t nbytes = checked_mul(numel, esize, what + ": byte count");
  const bool external = t.data_location() == TensorProto::EXTERNAL;
  if (t.data_location() != TensorProto::DEFAULT && !external) {
    throw FormatError(what + ": unknown data_location " + std::to_string(t.data_location()));
  }
  if (!external && t.external_data_size() > 0)
    throw FormatError(what + ": external_data entries without data_location EXTERNAL");
  if (external) {
    if (t.has_raw_data() || typed_count(t) > 0)
      throw FormatError(what + ": external data and values in the file");
    out.bytes = read_external(t, nbytes, model_dir, what);
    out.storage = OnnxStorage::kExternal;
  } else if (t.has_raw_data()) {
    if (typed_count(t) > 0) throw FormatError(what + ": both raw_data and typed values");
    if (t.raw_data().size() != nbytes) {
      throw FormatError(what + ": raw_data has " + std::to_string(t.raw_data().size()) +
                        " bytes, dims " + dims_str(out.dims) + " of " +
                        onnx_type_name(t.data_type()) + " need " + std::to_string(nbytes));
    }
    out.bytes.assign(t.raw_data().begin(), t.raw_data().end());
    t.clear_raw_data();
    out.storage = OnnxStorage::kRaw;
  } else {
    out.bytes = decode_typed(t, numel, esize, what);
    out.storage = OnnxStorage::kTyped;
  }
  return out;
}

// ------------------------------------------------------------------ graph wiring

Structure read_structure(const onnx::GraphProto& g, const std::vector<OnnxTensor>& inits,
                         const std::string& what) {
  std::unordered_map<std::string, const OnnxTensor*> init;
  for (const auto& t : inits) init[t.name] = &t;
  // PyTorch's exporter deduplicates equal initializers and feeds the copies through Identity
  // nodes (`Identity(layer2.bn2.bias) -> layer2.short.1.bias`): follow them.
  for (const auto& n : g.node()) {
    if (n.op_type() != "Identity" || n.input_size() != 1 || n.output_size() != 1) continue;
    if (!n.domain().empty() && n.domain() != "ai.onnx") continue;
    auto it = init.find(n.input(0));
    if (it != init.end() && !init.count(n.output(0))) init[n.output(0)] = it->second;
  }
  auto weight = [&](const onnx::NodeProto& n, int i, size_t rank) -> const OnnxTensor* {
    if (n.input_size() <= i) return nullptr;
    auto it = init.find(n.input(i));
    if (it == init.end() || !onnx_is_float(it->second->data_type) ||
        it->second->dims.size() != rank)
      return nullptr;
    return it->second;
  };
  auto bias = [&](const onnx::NodeProto& n, int i) -> std::string {
    if (n.input_size() <= i) return "";
    auto it = init.find(n.input(i));
    return it != init.end() && onnx_is_float(it->second->data_type) ? it->second->name : "";
  };
  Structure s;
  std::set<std::string> taken;                    // initializers already part of a layer
  std::unordered_map<std::string, int> conv_out;  // Conv output name -> its layer index
  for (int ni = 0; ni < g.node_size(); ++ni) {
    const onnx::NodeProto& n = g.node(ni);
    if (!n.domain().empty() && n.domain() != "ai.onnx") continue;
    LayerSpec layer;
    const OnnxTensor* w = nullptr;
    if (n.op_type() == "Conv") {
      w = weight(n, 1, 4);
      layer.kind = LayerKind::kConv2d;
      layer.bias = bias(n, 2);
    } else if (n.op_type() == "Gemm") {
      w = weight(n, 1, 2);
      layer.kind = LayerKind::kLinear;
      layer.bias = bias(n, 2);
    } else if (n.op_type() == "MatMul") {
      w = weight(n, 1, 2);
      if (w == nullptr) w = weight(n, 0, 2);
      layer.kind = LayerKind::kLinear;
    } else if (n.op_type() == "BatchNormalization") {
      w = weight(n, 1, 1);
      layer.kind = LayerKind::kBatchNorm;
      layer.bias = bias(n, 2);
      if (w != nullptr && layer.bias.empty()) w = nullptr;
      if (w != nullptr && n.input_size() > 0) {
        auto it = conv_out.find(n.input(0));
        if (it != conv_out.end()) layer.producer = it->second;
      }
    }
    if (w == nullptr || taken.count(w->name)) continue;
    // A bias shared with an earlier layer stays with this one too: a bn unit then takes beta_c
    // of both (the key holds it once).
    layer.weight = w->name;
    layer.name = n.name().empty() ? w->name : n.name();
    taken.insert(layer.weight);
    if (!layer.bias.empty()) taken.insert(layer.bias);
    if (layer.kind == LayerKind::kConv2d && n.output_size() > 0)
      conv_out[n.output(0)] = static_cast<int>(s.size());
    if (layer.kind == LayerKind::kBatchNorm && layer.producer >= 0) {
      const OnnxTensor* cw = init.at(s[static_cast<size_t>(layer.producer)].weight);
      if (cw->dims[0] != w->dims[0]) {
        throw FormatError(what + ": BatchNormalization '" + layer.name + "' has " +
                          std::to_string(w->dims[0]) + " channels, its Conv '" +
                          s[static_cast<size_t>(layer.producer)].name + "' " +
                          std::to_string(cw->dims[0]) + " filters");
      }
    }
    s.push_back(std::move(layer));
  }
  return s;
}

}  // namespace

// ------------------------------------------------------------------ public helpers

const char* to_string(OnnxStorage s) {
  switch (s) {
    case OnnxStorage::kRaw:
      return "raw_data";
    case OnnxStorage::kTyped:
      return "typed";
    case OnnxStorage::kExternal:
      return "external";
  }
  return "?";
}

uint64_t OnnxTensor::numel() const {
  uint64_t n = 1;
  for (int64_t d : dims) n *= static_cast<uint64_t>(d);
  return n;
}

std::string onnx_type_name(int32_t data_type) {
  if (!onnx::TensorProto_DataType_IsValid(data_type))
    return "UNDEFINED(" + std::to_string(data_type) + ")";
  return onnx::TensorProto_DataType_Name(static_cast<TensorProto_DataType>(data_type));
}

size_t onnx_element_size(int32_t t) {
  switch (t) {
    case TensorProto::FLOAT:
      return 4;
    case TensorProto::DOUBLE:
      return 8;
    case TensorProto::FLOAT16:
      return 2;
    case TensorProto::BFLOAT16:
      return 2;
    case TensorProto::INT8:
      return 1;
    case TensorProto::UINT8:
      return 1;
    case TensorProto::BOOL:
      return 1;
    case TensorProto::INT16:
      return 2;
    case TensorProto::UINT16:
      return 2;
    case TensorProto::INT32:
      return 4;
    case TensorProto::UINT32:
      return 4;
    case TensorProto::INT64:
      return 8;
    case TensorProto::UINT64:
      return 8;
    default:
      return 0;
  }
}

bool onnx_is_float(int32_t t) {
  return t == TensorProto::FLOAT || t == TensorProto::DOUBLE || t == TensorProto::FLOAT16 ||
         t == TensorProto::BFLOAT16;
}

DType onnx_key_dtype(int32_t t) {
  switch (t) {
    case TensorProto::FLOAT:
      return DType::kF32;
    case TensorProto::DOUBLE:
      return DType::kF64;
    case TensorProto::FLOAT16:
      return DType::kF16;
    case TensorProto::BFLOAT16:
      return DType::kBF16;
    default:
      throw Error("ONNX data type " + onnx_type_name(t) + " has no key dtype");
  }
}

bool is_onnx_file(const std::string& path) {
  if (path.size() < 5) return false;
  std::string ext = path.substr(path.size() - 5);
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return ext == ".onnx";
}

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
