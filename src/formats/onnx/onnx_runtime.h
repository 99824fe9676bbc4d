// ONNX graphs run through OpenCV's dnn module (Debian's libopencv-dnn-dev): the forward pass of
// ONNX evaluation. Torch-free and free of OpenCV headers: the network lives behind a pointer.
//
// OpenCV imports the graph from serialised bytes (onnx_runtime_bytes in formats/onnx/onnx_model.h
// gives them for a model in memory) and runs float32 batches in inference mode. A graph it cannot
// import (an op it lacks, an attribute it does not handle) is refused with FormatError naming the
// node and op where OpenCV's message does. OpenCV's own log output is silenced while it imports.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace corelocker {

// A dense float32 array, row-major.
struct FloatBlob {
  std::vector<int64_t> shape;
  std::vector<float> values;
};

class OnnxRuntime {
 public:
  // Builds the network from a serialised ModelProto with every initializer inline; `what` names
  // the model in errors. `fuse` false keeps every layer's own output (OpenCV otherwise folds a
  // BatchNormalization into the Conv before it). Throws FormatError when OpenCV refuses the graph.
  OnnxRuntime(const std::string& serialized, const std::string& what, bool fuse = true);
  ~OnnxRuntime();
  OnnxRuntime(OnnxRuntime&&) noexcept;
  OnnxRuntime& operator=(OnnxRuntime&&) noexcept;

  // Runs one batch (`shape` [N, ...], values row-major) through the graph. Returns the graph's
  // first output when `nodes` is empty, else output 0 of each ONNX node named in `nodes`, in that
  // order (OpenCV then runs only as far as they need). Throws Error (OpenCV's message, with the
  // input shape) when the forward pass fails, and Error when a node has no layer in the network.
  std::vector<FloatBlob> forward(const float* input, const std::vector<int64_t>& shape,
                                 const std::vector<std::string>& nodes = {});

  // Whether OpenCV's network has a layer for the ONNX node called `node`.
  bool has_node(const std::string& node) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Sets the number of threads OpenCV's forward passes use (n >= 1).
void set_onnx_runtime_threads(int n);

// "OpenCV 4.6.0 (dnn)": what runs ONNX models in this build.
std::string onnx_runtime_name();

}  // namespace corelocker
