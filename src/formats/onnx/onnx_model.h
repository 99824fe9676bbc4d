// ONNX model files (ModelProto, through Debian's libonnx / protobuf): initializers in and out in
// every storage form, the layer wiring of the graph, and a fingerprint over the initializers.
// Torch-free, and free of protobuf / onnx headers: the ModelProto lives behind a pointer.
//
// Reading an initializer (TensorProto):
//   raw_data           little-endian bytes; their count must be numel x element size
//   typed data         float_data / double_data / int32_data / int64_data / uint64_data, the
//                      field ONNX assigns to the data type; the count must be numel
//   external data      data_location = EXTERNAL and the keys location (required), offset,
//                      length (decimal), checksum (ignored); location is relative to the
//                      model's folder, has no `..` component, is not absolute, and does not
//                      leave the folder through a symlink; offset + length lies inside the file
//                      and length is numel x element size
// Each initializer is decoded into row-major little-endian bytes (OnnxTensor::bytes); the
// writer puts them back in the form they came in, so unchanged initializers keep their bytes.
//
// Layers, in the order of the graph's nodes (topologically sorted in valid ONNX):
//   Conv                 input 1 an initializer of rank 4       -> conv layer (bias: input 2)
//   Gemm                 input 1 an initializer of rank 2       -> linear layer (bias: input 2)
//   MatMul               one input an initializer of rank 2     -> linear layer (no bias)
//   BatchNormalization   inputs 1, 2 initializers (scale, B)    -> norm layer; when input 0
//                        is the output of a Conv layer, that Conv is its producer
// An input may reach an initializer through Identity nodes (PyTorch's exporter deduplicates
// equal initializers that way). A weight used by two layers is taken by the first only; a bias
// shared by two layers stays with both.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "keyfile/key_file.h"
#include "models/structure.h"
#include "util/hash.h"

namespace corelocker {

// How an initializer's values are stored in its file.
enum class OnnxStorage { kRaw, kTyped, kExternal };

const char* to_string(OnnxStorage s);

struct OnnxTensor {
  std::string name;
  int32_t data_type = 0;       // onnx::TensorProto::DataType
  std::vector<int64_t> dims;   // empty for a scalar
  std::vector<uint8_t> bytes;  // row-major, little-endian, numel x element size
  OnnxStorage storage = OnnxStorage::kRaw;

  uint64_t numel() const;
};

// ONNX's name of a data type ("FLOAT", "INT64", ...; "UNDEFINED(n)" for unknown codes).
std::string onnx_type_name(int32_t data_type);
// Bytes per element of the data types corelocker reads; 0 for others (string, complex, ...).
size_t onnx_element_size(int32_t data_type);
// The key-file dtype of a float type (FLOAT, DOUBLE, FLOAT16, BFLOAT16). Throws Error for others.
DType onnx_key_dtype(int32_t data_type);
// True when the model can hold lockable units of this type.
bool onnx_is_float(int32_t data_type);

// True when `path` ends in ".onnx" (any case): the CLI's cue to take the ONNX path.
bool is_onnx_file(const std::string& path);

// A BatchNormalization node whose running statistics are initializers (OnnxModel::batchnorms).
struct OnnxBatchNorm {
  std::string node;         // its name, as in OnnxModel::runtime_bytes
  std::string input;        // the tensor it normalises
  std::string producer;     // the node whose output `input` is; empty when `input` is a graph input
  int producer_output = 0;  // which output of `producer`
  std::string mean;         // input 3 (running mean): an initializer, or an Identity of one
  std::string var;          // input 4 (running variance), the same
  int32_t data_type = 0;    // of mean and var
  int64_t channels = 0;     // elements of mean and var
};

// The graph input the data goes into: the first input that is not an initializer.
struct OnnxInput {
  std::string name;
  std::vector<int64_t> dims;  // -1 where the dimension is symbolic or unknown
};

class OnnxModel {
 public:
  OnnxModel();
  ~OnnxModel();
  OnnxModel(OnnxModel&&) noexcept;
  OnnxModel& operator=(OnnxModel&&) noexcept;

  // Initializers of the main graph, in file order.
  std::vector<OnnxTensor>& initializers() { return initializers_; }
  const std::vector<OnnxTensor>& initializers() const { return initializers_; }
  // The initializer called `name`, or nullptr.
  OnnxTensor* find(const std::string& name);
  const OnnxTensor* find(const std::string& name) const;

  // Extractable layers in node order, read from the graph's wiring (see the top of this file).
  const Structure& structure() const { return structure_; }

  // Graph facts for `inspect`.
  std::string producer() const;  // producer_name and producer_version
  int64_t ir_version() const;
  int64_t opset() const;  // of the default domain; 0 when not imported
  size_t node_count() const;

  // The graph input that takes the data. Throws FormatError when every input is an initializer.
  OnnxInput input() const;
  // BatchNormalization nodes in node order whose inputs 3 and 4 (running mean and variance) are
  // float initializers (directly or through an Identity) of equal size.
  std::vector<OnnxBatchNorm> batchnorms() const;
  // The model serialised for a runtime (formats/onnx/onnx_runtime.h), not for a file: every
  // initializer inline as raw_data with its current value, or with `replace[name]` (same byte
  // count; a name may also be an Identity's output), Identity nodes of initializers folded into
  // initializers of their own (OpenCV cannot import them; PyTorch's exporter writes them for
  // equal initializers), and unnamed nodes named "node<i>" (i: the node's index). Throws Error
  // when a replacement names no initializer or has the wrong size, or the model is over 2 GiB.
  std::string runtime_bytes(const std::map<std::string, std::vector<uint8_t>>& replace = {}) const;

  // metadata_props, in file order.
  std::vector<std::pair<std::string, std::string>> metadata() const;
  // Sets (or, with an empty value, removes) one metadata_props entry.
  void set_metadata(const std::string& key, const std::string& value);

  struct Impl;

 private:
  friend OnnxModel parse_onnx_model(const uint8_t*, size_t, const std::string&, const std::string&);
  friend void save_onnx_model(const std::string&, const OnnxModel&);
  std::unique_ptr<Impl> impl_;
  std::vector<OnnxTensor> initializers_;
  Structure structure_;
};

// Parses a ModelProto from memory; external data is resolved against `model_dir`; `what` names
// the source in errors. Throws FormatError (malformed protobuf, initializer or external data
// reference, graph wiring), IoError (an external data file cannot be read).
OnnxModel parse_onnx_model(const uint8_t* data, size_t size, const std::string& model_dir,
                           const std::string& what);

// Reads a .onnx file (and its external data files) and checks it with onnx::checker.
// Throws what parse_onnx_model throws, and FormatError when the checker refuses the model.
OnnxModel load_onnx_model(const std::string& path);

// Writes the model atomically with its initializers' current values, each in the storage form
// it was read in. Externally stored initializers go, one after another, into one data file
// `<file name of path>.data` beside `path`. The written model is checked with onnx::checker
// before it replaces `path`; nothing is left behind when anything fails. Throws IoError /
// FormatError (the checker refused the model).
void save_onnx_model(const std::string& path, const OnnxModel& model);

// BLAKE2b-256 over the initializers sorted by name (docs/key-format.md, "ONNX fingerprints").
// Throws Error on duplicate names.
Digest onnx_fingerprint(const OnnxModel& model);

}  // namespace corelocker
