// `eval`, `lock`, `unlock`, `fingerprint` and `inspect` for ONNX files: the handlers in
// cmd_train.cpp and cmd_lock.cpp hand a model whose path ends in .onnx (formats/onnx_model.h:
// is_onnx_file) to these.
#pragma once

#include <string>
#include <vector>

#include "cli/common.h"
#include "formats/onnx_model.h"

namespace corelocker::cli {

struct OnnxLockArgs {
  std::string model, out, key_out;
  LockOptions options;
  bool eval = false;   // --eval: the locked model's plain and effective top-1, through OpenCV
  bool tiers = false;  // --tiers or --tier-bands given: refused
  InputArgs input;     // how to feed the model (with --eval; ONNX files store none)
  Common common;
  EffectiveArgs effective;
};

struct OnnxEvalArgs {
  std::string model;
  std::vector<std::string> keys;  // unlock in memory first
  bool json = false;
  InputArgs input;
  Common common;
  EffectiveArgs effective;
};

// Each returns the exit code; they throw corelocker errors like the other handlers.
int lock_onnx(const OnnxLockArgs& a, const KeyAccess& access);
int eval_onnx(const OnnxEvalArgs& a, const KeyAccess& access);
int unlock_onnx(const std::string& model, const std::vector<std::string>& key_paths,
                const std::string& out, const KeyAccess& access);
int fingerprint_onnx(const std::string& path);
int inspect_onnx(const std::string& path, bool json);

// Defined in cmd_lock.cpp: `inspect`'s text form of a JSON description.
void print_json_as_text(const Json& j, int indent);

}  // namespace corelocker::cli
