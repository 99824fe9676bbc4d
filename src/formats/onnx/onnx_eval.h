// Evaluating ONNX models: the project's data sets and preprocessing (data/dataset.h) feed the
// forward pass of OpenCV's dnn module (formats/onnx/onnx_runtime.h), and top-1 / top-3 are counted
// as for our own networks (eval/evaluate.h). The effective accuracy (attacks/effective.h) is
// measured the same way: global magnitude pruning and BatchNorm re-estimation write new values
// into a serialised copy of the model (OnnxModel::runtime_bytes), never into the model itself.
//
// BatchNorm re-estimation without a training mode: OpenCV runs graphs in inference mode only, so
// the statistics are re-estimated layer by layer in node order. For each BatchNormalization node,
// the network with the statistics of every node before it already re-estimated runs over the
// images, its input is read at the node that produces it, and the running mean and variance
// become the plain averages of the per-batch mean and unbiased variance (the estimate
// reestimate_batchnorm makes for our networks, which normalise each batch by its own statistics
// instead of by the re-estimated ones; the two agree as batches grow). One pass over the images
// per BatchNormalization node.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "attacks/effective.h"
#include "formats/onnx/onnx_model.h"

namespace corelocker {

// New values of initializers by name (OnnxModel::runtime_bytes).
using OnnxReplacements = std::map<std::string, std::vector<uint8_t>>;

// The torch dtype of an ONNX float type. Throws Error for other types.
torch::ScalarType onnx_scalar_type(int32_t data_type);
// A copy of an initializer's values as a tensor of its own dtype and shape. Throws Error for a
// type that is not a float type.
torch::Tensor onnx_to_tensor(const OnnxTensor& t);

// Checks, before anything runs, that OpenCV imports the model and that the graph's input takes
// what `pp` makes of `data`'s images. `what` names the model in errors. Throws FormatError
// (OpenCV refuses the graph, naming the node), UsageError (the graph's input has other channels,
// height or width than the preprocessed images: the message names both shapes and the options
// that change them).
void check_onnx_runnable(const OnnxModel& model, const Dataset& data, const Preprocess& pp,
                         const std::string& what);

// The graph's output for one batch of network input [N, ...] (float32 after conversion).
// Throws what OnnxRuntime throws.
torch::Tensor onnx_logits(const OnnxModel& model, const torch::Tensor& input,
                          const std::string& what);

// The model's class scores, with `replace` over its initializers, for `images` (uint8
// [N, C, H, W]) fed as `pp` says (the same preprocessing as evaluate), in batches of `batch_size`
// through one import of the graph: `on_batch(first image, logits [b, classes])`. Throws
// UsageError for a batch size below 1, what OnnxRuntime throws, and Error when an output is not
// [batch, classes].
void onnx_class_scores(
    const OnnxModel& model, const torch::Tensor& images, const Preprocess& pp,
    const std::string& what, int64_t batch_size, const OnnxReplacements& replace,
    const std::function<void(int64_t first, const torch::Tensor& logits)>& on_batch);

// Top-1 / top-3 of the model, with `replace` over its initializers, on `data` fed as `pp` says
// (the same preprocessing as evaluate), in batches of `batch_size`. Throws what
// check_onnx_runnable and OnnxRuntime throw, and Error when the output is not [batch, classes].
EvalResult evaluate_onnx(const OnnxModel& model, const Dataset& data, const Preprocess& pp,
                         const std::string& what, int64_t batch_size = 500,
                         const OnnxReplacements& replace = {});

struct OnnxReestimation {
  ReestimateResult result;
  OnnxReplacements stats;  // the new running mean and variance of every BatchNormalization node
};

// Re-estimates the running statistics of every BatchNormalization node (OnnxModel::batchnorms)
// on `images` (labels never read), layer by layer as described at the top of this file. The
// model does not change. Throws UsageError (no such node, no images), Error naming the node when
// its input cannot be read from OpenCV's network or has another channel count.
OnnxReestimation reestimate_onnx_batchnorm(const OnnxModel& model, const Dataset& images,
                                           const Preprocess& pp, const std::string& what,
                                           int64_t batch_size = 128);

// Global magnitude pruning as prune_smallest does it for our networks: the round(ratio * n)
// smallest-magnitude values over the weights of every Conv / Gemm / MatMul layer of the model's
// structure (first and last included; ties by position) become zero. Returns the pruned weights;
// the model does not change. Throws UsageError when ratio is outside [0, 1].
OnnxReplacements prune_onnx_smallest(const OnnxModel& model, double ratio);

// The effective accuracy of an ONNX model (attacks/effective.h: plain, after BatchNorm
// re-estimation on `unlabelled`, after pruning at options.prune_ratios; the highest top-1 of
// them). A re-estimation that cannot be done is left out with the reason in reestimate_note.
// The model does not change. Throws what evaluate_onnx throws.
EffectiveEval evaluate_onnx_effective(const OnnxModel& model, const Dataset& test,
                                      const Dataset& unlabelled, const Preprocess& pp,
                                      const std::string& what,
                                      const EffectiveOptions& options = {});

}  // namespace corelocker
