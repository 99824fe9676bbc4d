// ONNX data types (formats/onnx/onnx_model.h), and the typed fields (float_data, int32_data, ...)
// that an initializer's values may be stored in.
#include <algorithm>
#include <cctype>
#include <climits>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "formats/onnx/onnx_model_internal.h"
#include "util/checked.h"
#include "util/error.h"

namespace corelocker {
namespace {

using onnx::TensorProto;
using onnx::TensorProto_DataType;

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

}  // namespace

namespace onnx_detail {

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

int typed_count(const TensorProto& t) {
  return t.float_data_size() + t.double_data_size() + t.int32_data_size() + t.int64_data_size() +
         t.uint64_data_size() + t.string_data_size();
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

}  // namespace onnx_detail

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

}  // namespace corelocker
