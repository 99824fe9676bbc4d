// ONNX graphs as a CurveModel (control/curve_model.h): `calibrate`, `bands`, `sweep` and tiers by
// utility band lock the model's initializers in memory at each ratio (formats/onnx/onnx_lock.h)
// and run the graph through OpenCV's dnn module (formats/onnx/onnx_eval.h). OpenCV runs in one
// process: a group of several ranks (torchrun) is refused.
#pragma once

#include <memory>
#include <string>

#include "control/curve_model.h"
#include "formats/onnx/onnx_model.h"

namespace corelocker {

// `model` is used in place and must outlive the result; `meta` describes its input (ONNX files
// store none); `what` names it in errors.
std::unique_ptr<CurveModel> onnx_curve_model(OnnxModel& model, const ModelMeta& meta,
                                             const std::string& what);
// Same, holding the model.
std::unique_ptr<CurveModel> onnx_curve_model(OnnxModel&& model, const ModelMeta& meta,
                                             const std::string& what);

}  // namespace corelocker
