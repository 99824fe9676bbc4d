// ONNX models in `eval`, `lock`, `unlock`, `fingerprint`, `inspect` (see cmd_onnx.h).
#include "cli/cmd_onnx.h"

#include <cstdio>
#include <memory>

#include "formats/onnx_eval.h"
#include "formats/onnx_lock.h"
#include "formats/onnx_runtime.h"
#include "util/error.h"

namespace corelocker::cli {
namespace {

void require_onnx_out(const std::string& out) {
  if (!is_onnx_file(out)) {
    throw UsageError("--out '" + out +
                     "': an ONNX model is written as ONNX; give a file name ending in .onnx");
  }
}

std::string model_what(const std::string& path) { return "ONNX model '" + path + "'"; }

}  // namespace

int eval_onnx(const OnnxEvalArgs& a, const KeyAccess& access) {
  set_onnx_runtime_threads(apply_threads(a.common));
  OnnxModel model = load_onnx_model(a.model);
  std::string what = model_what(a.model);
  if (!a.keys.empty()) {
    unlock_onnx_model(model, read_keys(a.keys, access));  // in memory only
    what += " (unlocked in memory)";
  }
  const ModelMeta meta = input_meta(a.input);
  const Dataset test = test_set(meta, a.common);
  check_onnx_runnable(model, test, meta.preprocess, what);
  const Json runtime = {{"runtime", onnx_runtime_name()}};
  if (onnx_lock_info(model).key_id.empty()) {
    print_eval(a.model, evaluate_onnx(model, test, meta.preprocess, what), a.json, runtime);
    return 0;
  }
  const Dataset unlabelled = effective_images(meta, a.common, a.effective);
  print_eval(a.model,
             evaluate_onnx_effective(model, test, unlabelled, meta.preprocess, what,
                                     a.effective.options()),
             a.json, runtime);
  return 0;
}

int lock_onnx(const OnnxLockArgs& a, const KeyAccess& access) {
  if (a.tiers)
    throw UsageError("--tiers / --tier-bands: tiered keys are not supported for ONNX models");
  if (!a.eval && input_args_given(a.input)) {
    throw UsageError(
        "--dataset, --mean, --std, --pad, --resize and --channels say how to feed a model that is "
        "evaluated; '" +
        a.model + "' is an ONNX file and is evaluated only with --eval (they are not stored)");
  }
  require_onnx_out(a.out);
  const KeyCredentials creds = credentials(access);
  OnnxModel model = load_onnx_model(a.model);
  // With --eval, whatever would stop the evaluation stops the lock before anything is written.
  const ModelMeta meta = input_meta(a.input);
  std::unique_ptr<Dataset> test;
  if (a.eval) {
    set_onnx_runtime_threads(apply_threads(a.common));
    test = std::make_unique<Dataset>(test_set(meta, a.common));
    check_onnx_runnable(model, *test, meta.preprocess, model_what(a.model));
  }
  LockOutcome outcome = lock_onnx_model(model, a.options);
  // The key first (a locked model without its key would be lost utility); remove it if the
  // model cannot be written.
  const uint64_t key_bytes = write_key_file(a.key_out, outcome.key, creds);
  try {
    save_onnx_model(a.out, model);
  } catch (...) {
    std::remove(a.key_out.c_str());
    throw;
  }
  const LockOptions& o = a.options;
  std::printf("locked %s with %s (scope %s, fill %s) at ratio %s\n", a.model.c_str(),
              to_string(o.criterion), to_string(o.scope), to_string(o.fill),
              fixed(o.ratio, 6).c_str());
  print_lock_stats(outcome, key_bytes);
  const KeyHeader& h = outcome.key.header;
  std::printf("  locked model:         %s (fingerprint %s, passes the ONNX checker)\n",
              a.out.c_str(), to_hex(h.locked_fingerprint).substr(0, 16).c_str());
  std::printf("  key:                  %s (key id %s%s)\n", a.key_out.c_str(),
              to_hex(h.key_id.data(), h.key_id.size()).c_str(),
              creds.kind == Encryption::kNone ? "" : ", encrypted");
  if (a.eval) {
    // The locked model in memory: what was written.
    const EffectiveEval e =
        evaluate_onnx_effective(model, *test, effective_images(meta, a.common, a.effective),
                                meta.preprocess, model_what(a.out), a.effective.options());
    std::printf("  %-21s %s (top-3 %s%%; %s)\n", "locked accuracy:", effective_text(e).c_str(),
                pct(e.plain.top3).c_str(), onnx_runtime_name().c_str());
  }
  return 0;
}

int unlock_onnx(const std::string& model_path, const std::vector<std::string>& key_paths,
                const std::string& out, const KeyAccess& access) {
  require_onnx_out(out);
  OnnxModel model = load_onnx_model(model_path);
  const std::vector<KeyFile> keys = read_keys(key_paths, access);
  unlock_onnx_model(model, keys);  // checks every fingerprint; throws before anything is written
  save_onnx_model(out, model);
  // Re-read what was written: the file on disk must be the state the last key produces.
  const Digest fp = onnx_fingerprint(load_onnx_model(out));
  if (fp != keys.back().header.original_fingerprint) {
    std::remove(out.c_str());
    throw Error("written model '" + out +
                "' does not match the fingerprint the key expects; removed it");
  }
  std::printf("restored %s -> %s\n  fingerprint %s (matches the original recorded in the key)\n",
              model_path.c_str(), out.c_str(), to_hex(fp).c_str());
  return 0;
}

int fingerprint_onnx(const std::string& path) {
  std::printf("%s\n", to_hex(onnx_fingerprint(load_onnx_model(path))).c_str());
  return 0;
}

int inspect_onnx(const std::string& path, bool json) {
  const OnnxModel model = load_onnx_model(path);
  const LockInfo lock = onnx_lock_info(model);
  Json layers = Json::array();
  for (const auto& l : model.structure()) {
    Json j = {{"name", l.name}, {"kind", to_string(l.kind)}, {"weight", l.weight}};
    if (!l.bias.empty()) j["bias"] = l.bias;
    if (l.producer >= 0) j["producer"] = model.structure()[static_cast<size_t>(l.producer)].name;
    layers.push_back(j);
  }
  uint64_t parameters = 0;
  Json storage = {{"raw_data", 0}, {"typed", 0}, {"external", 0}};
  for (const auto& t : model.initializers()) {
    if (onnx_is_float(t.data_type)) parameters += t.numel();
    storage[to_string(t.storage)] = storage[to_string(t.storage)].get<int>() + 1;
  }
  Json j = {{"type", lock.key_id.empty() ? "onnx model" : "locked onnx model"},
            {"producer", model.producer()},
            {"ir_version", model.ir_version()},
            {"opset", model.opset()},
            {"nodes", model.node_count()},
            {"initializers", model.initializers().size()},
            {"storage", storage},
            {"parameters", parameters},
            {"fingerprint", to_hex(onnx_fingerprint(model))},
            {"layers", layers}};
  if (!lock.key_id.empty()) {
    j["lock"] = {{"key_id", lock.key_id},       {"original_fingerprint", lock.original_fingerprint},
                 {"criterion", lock.criterion}, {"scope", lock.scope},
                 {"ratio", lock.ratio},         {"tool_version", lock.tool_version}};
  }
  j["file"] = path;
  if (json)
    std::printf("%s\n", j.dump().c_str());
  else
    print_json_as_text(j, 0);
  return 0;
}

}  // namespace corelocker::cli
