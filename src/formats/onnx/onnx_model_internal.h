// Internal to the ONNX model pieces (src/formats/onnx/onnx_model_*.cpp): OnnxModel's protobuf
// state and the helpers the pieces share. The onnx / protobuf headers stay inside these files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "formats/onnx/onnx_model.h"
#include "models/structure.h"
#include "onnx/onnx_pb.h"

namespace corelocker {

struct OnnxModel::Impl {
  // The whole model, except that the values of raw and external initializers are moved out
  // into OnnxModel::initializers_ (so that they are not held twice); the writer puts them back.
  onnx::ModelProto proto;
};

namespace onnx_detail {

// The element count of `dims`; throws FormatError for a negative dimension or an overflow.
// In onnx_model_types.cpp, as are the next four.
int64_t sat_numel(const std::vector<int64_t>& dims, const std::string& what);
// "[d0, d1, ...]", for errors.
std::string dims_str(const std::vector<int64_t>& dims);
// The number of values in all typed fields of `t` together.
int typed_count(const onnx::TensorProto& t);
// Decodes the typed field of `t` into little-endian bytes.
std::vector<uint8_t> decode_typed(const onnx::TensorProto& t, uint64_t numel, size_t esize,
                                  const std::string& what);
// Writes little-endian bytes back into the typed field of `t` (the inverse of decode_typed).
void encode_typed(onnx::TensorProto& t, const std::vector<uint8_t>& bytes, size_t esize);

// "<action> '<path>': <strerror(errno)>". In onnx_model_initializers.cpp.
std::string os_error(const std::string& action, const std::string& path);
// An initializer's values decoded from whichever storage form it uses (raw_data is moved out of
// `t`); `file_what` names the model in errors. In onnx_model_initializers.cpp.
OnnxTensor read_initializer(onnx::TensorProto& t, const std::string& model_dir,
                            const std::string& file_what);

// The extractable layers, read from the graph's wiring (formats/onnx/onnx_model.h lists the rules).
// In onnx_model_structure.cpp.
Structure read_structure(const onnx::GraphProto& g, const std::vector<OnnxTensor>& inits,
                         const std::string& what);

}  // namespace onnx_detail
}  // namespace corelocker
