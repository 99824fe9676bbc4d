#include "formats/onnx/onnx_lock.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <sstream>

#include "formats/onnx/onnx_eval.h"
#include "locking/decoy_search.h"
#include "locking/decoys.h"
#include "locking/selection.h"
#include "locking/tiers.h"
#include "util/error.h"
#include "util/hash.h"

namespace corelocker {
namespace {

// The shortest decimal that reads back as exactly `r` ("0.05", not "0.050000000000000003").
std::string ratio_str(double r) {
  for (int digits = 1;; ++digits) {
    std::ostringstream s;
    s.precision(digits);
    s << r;
    if (digits >= 17 || std::stod(s.str()) == r) return s.str();
  }
}

// The key header fields a lock's options set.
void set_header(KeyHeader& h, const LockOptions& options) {
  h.criterion = options.criterion;
  h.scope = options.scope;
  h.fill = options.fill;
  h.include_io = options.include_io;
  h.random_bn_units = options.criterion == Criterion::kRandom && options.random_bn_units;
  h.ratio = options.ratio;
  h.seed = options.criterion == Criterion::kRandom ? options.seed : 0;
}

}  // namespace

std::vector<NamedTensor> onnx_layer_tensors(const OnnxModel& model) {
  std::vector<NamedTensor> out;
  for (const auto& layer : model.structure()) {
    const OnnxTensor* t = model.find(layer.weight);
    if (t == nullptr)
      throw Error("ONNX layer '" + layer.name + "': no initializer '" + layer.weight + "'");
    out.push_back({t->name, onnx_to_tensor(*t), false});
  }
  return out;
}

// Every value is gathered first, then zeroed: a bn plan touches a tensor through one entry.
int64_t take_onnx_units(OnnxModel& model, const ExtractionPlan& plan, KeyFile& key) {
  int64_t values = 0;
  for (const auto& p : plan.entries) {
    const OnnxTensor* t = model.find(p.tensor);
    if (t == nullptr)
      throw Error("plan names initializer '" + p.tensor + "' which the model does not have");
    KeyEntry e;
    e.tensor = p.tensor;
    e.dtype = onnx_key_dtype(t->data_type);
    for (int64_t d : t->dims) e.shape.push_back(static_cast<uint64_t>(d));
    e.unit_size = static_cast<uint64_t>(p.unit_size);
    e.units = p.units;
    const size_t block = static_cast<size_t>(p.unit_size) * dtype_size(e.dtype);
    if (t->numel() % e.unit_size != 0)
      throw Error("initializer '" + p.tensor + "': unit size does not divide it");
    if (!e.units.empty() && e.units.back() >= t->numel() / e.unit_size)
      throw Error("initializer '" + p.tensor + "': unit out of range");
    e.values.resize(e.units.size() * block);
    size_t i = 0;
    for (const uint64_t u : e.units) {
      std::memcpy(e.values.data() + i++ * block, t->bytes.data() + u * block, block);
    }
    values += static_cast<int64_t>(e.units.size() * e.unit_size);
    key.entries.push_back(std::move(e));
  }
  for (const auto& e : key.entries) {
    OnnxTensor* t = model.find(e.tensor);
    const size_t block = static_cast<size_t>(e.unit_size) * dtype_size(e.dtype);
    // All-zero bytes are +0.0 in every float type the key holds.
    for (uint64_t u : e.units) std::memset(t->bytes.data() + u * block, 0, block);
  }
  return values;
}

void put_back_onnx_units(OnnxModel& model, const KeyFile& key) {
  for (const auto& e : key.entries) {
    OnnxTensor* t = model.find(e.tensor);
    if (t == nullptr)
      throw MismatchError("key entry '" + e.tensor + "': model has no such initializer");
    const size_t block = static_cast<size_t>(e.unit_size) * dtype_size(e.dtype);
    size_t i = 0;
    for (const uint64_t u : e.units) {
      std::memcpy(t->bytes.data() + u * block, e.values.data() + i++ * block, block);
    }
  }
}

int64_t onnx_float_parameters(const OnnxModel& model) {
  int64_t n = 0;
  for (const auto& t : model.initializers())
    if (onnx_is_float(t.data_type)) n += static_cast<int64_t>(t.numel());
  return n;
}

namespace {

// Zeroes the plan's units in the model again (between the draws of a decoy search).
void zero_units(OnnxModel& model, const ExtractionPlan& plan) {
  for (const auto& p : plan.entries) {
    OnnxTensor* t = model.find(p.tensor);
    const size_t block =
        static_cast<size_t>(p.unit_size) * dtype_size(onnx_key_dtype(t->data_type));
    for (uint64_t u : p.units) std::memset(t->bytes.data() + u * block, 0, block);
  }
}

// Draws decoys into the plan's units (locking/decoys.h), modelled on the units no plan takes:
// the initializers are wrapped as tensors over the model's own bytes, so the decoys are written
// straight into the model.
void fill_onnx_decoys(OnnxModel& model, const ExtractionPlan& plan, const ExtractionPlan* no_donors,
                      Fill fill, uint64_t seed) {
  std::vector<NamedTensor> views;
  std::set<std::string> seen;
  for (const ExtractionPlan* p : {&plan, no_donors}) {
    if (p == nullptr) continue;
    for (const auto& e : p->entries) {
      if (!seen.insert(e.tensor).second) continue;
      OnnxTensor* t = model.find(e.tensor);
      if (t == nullptr)
        throw Error("plan names initializer '" + e.tensor + "' which the model does not have");
      views.push_back({t->name,
                       torch::from_blob(t->bytes.data(), c10::IntArrayRef(t->dims),
                                        onnx_scalar_type(t->data_type)),
                       false});
    }
  }
  fill_decoys(views, plan, no_donors, fill, seed);
}

void record_lock(OnnxModel& model, const KeyHeader& h, const Digest& original, double ratio) {
  model.set_metadata(kOnnxMetaKeyId, to_hex(h.key_id.data(), h.key_id.size()));
  model.set_metadata(kOnnxMetaOriginal, to_hex(original));
  model.set_metadata(kOnnxMetaCriterion, to_string(h.criterion));
  model.set_metadata(kOnnxMetaScope, to_string(h.scope));
  model.set_metadata(kOnnxMetaRatio, ratio_str(ratio));
  model.set_metadata(kOnnxMetaVersion, CORELOCKER_VERSION);
}

void check_lockable(const OnnxModel& model) {
  const LockInfo existing = onnx_lock_info(model);
  if (!existing.key_id.empty()) {
    throw UsageError("model is already locked (key id " + existing.key_id + "); unlock it first");
  }
}

}  // namespace

LockInfo onnx_lock_info(const OnnxModel& model) {
  LockInfo info;
  for (const auto& [k, v] : model.metadata()) {
    if (k == kOnnxMetaKeyId)
      info.key_id = v;
    else if (k == kOnnxMetaOriginal)
      info.original_fingerprint = v;
    else if (k == kOnnxMetaCriterion)
      info.criterion = v;
    else if (k == kOnnxMetaScope)
      info.scope = v;
    else if (k == kOnnxMetaVersion)
      info.tool_version = v;
    else if (k == kOnnxMetaRatio) {
      try {
        info.ratio = std::stod(v);
      } catch (const std::exception&) {
        throw FormatError("ONNX metadata '" + std::string(kOnnxMetaRatio) + "': '" + v +
                          "' is not a number");
      }
    }
  }
  return info;
}

LockOutcome lock_onnx_model(OnnxModel& model, const LockOptions& options,
                            const OnnxDecoySearch& search) {
  check_lockable(model);
  // ranked as our own checkpoints are
  return lock_onnx_model(model, rank_units(onnx_layer_tensors(model), model.structure(), options),
                         options, search);
}

LockOutcome lock_onnx_model(OnnxModel& model, const Ranking& ranking, const LockOptions& options,
                            const OnnxDecoySearch& search) {
  check_lockable(model);
  if (!(options.ratio >= 0.0 && options.ratio <= 1.0)) {
    throw UsageError("ratio " + std::to_string(options.ratio) + ": must be within [0, 1]");
  }
  const std::vector<NamedTensor> tensors = onnx_layer_tensors(model);
  const ExtractionPlan plan = plan_at(ranking, tensors, model.structure(), options.ratio);

  LockOutcome out;
  KeyHeader& h = out.key.header;
  h.original_fingerprint = onnx_fingerprint(model);
  random_bytes(h.key_id.data(), h.key_id.size());
  set_header(h, options);
  h.units = static_cast<uint64_t>(plan.units);
  out.stats.values = take_onnx_units(model, plan, out.key);
  if (options.fill != Fill::kZero) {
    uint64_t seed = 0;
    if (search.tries > 1 && search.score) {
      DecoyTrial trial;
      trial.fill = [&](const uint64_t* draw) {
        if (draw != nullptr) fill_onnx_decoys(model, plan, nullptr, options.fill, *draw);
      };
      trial.score = [&] { return search.score(model); };
      trial.reset = [&] { zero_units(model, plan); };
      seed = choose_decoy_draw(search.tries, search.target, search.seed, trial);
    } else if (search.seed) {
      seed = *search.seed;
    } else {
      random_bytes(&seed, sizeof seed);  // decoys must not be predictable
    }
    fill_onnx_decoys(model, plan, nullptr, options.fill, seed);
  }
  h.locked_fingerprint = onnx_fingerprint(model);
  out.stats.units = plan.units;
  out.stats.candidates = ranking.total_units();
  out.stats.parameters = onnx_float_parameters(model);
  record_lock(model, h, h.original_fingerprint, h.ratio);
  return out;
}

std::vector<TierOutcome> lock_onnx_model_tiers(
    OnnxModel& model, const LockOptions& options, std::vector<double> ratios,
    const std::function<void(double ratio, OnnxModel& state)>& on_state) {
  check_lockable(model);
  ratios = sorted_tier_ratios(std::move(ratios));
  const std::vector<NamedTensor> tensors = onnx_layer_tensors(model);
  const Ranking ranking = rank_units(tensors, model.structure(), options);
  std::vector<ExtractionPlan> plans;
  std::vector<uint64_t> units;
  for (const double r : ratios) {
    plans.push_back(plan_at(ranking, tensors, model.structure(), r));
    units.push_back(static_cast<uint64_t>(plans.back().units));
  }
  check_tier_units(ratios, units);
  // From the smallest ratio up: each key takes the units its ratio adds to the one below and
  // restores the state locked at that ratio (the original for the smallest).
  KeyId lock_id{};
  random_bytes(lock_id.data(), lock_id.size());
  const Digest original = onnx_fingerprint(model);
  const auto n = static_cast<uint16_t>(ratios.size());
  const int64_t parameters = onnx_float_parameters(model);
  std::vector<TierOutcome> out;
  ExtractionPlan previous;
  int64_t values = 0;
  for (size_t i = 0; i < ratios.size(); ++i) {
    LockOptions o = options;
    o.ratio = ratios[i];
    TierOutcome t;
    KeyHeader& h = t.key.header;
    h.original_fingerprint = onnx_fingerprint(model);
    h.key_id = lock_id;
    set_header(h, o);
    const ExtractionPlan step = plan_difference(plans[i], previous);
    h.units = static_cast<uint64_t>(plans[i].units - previous.units);
    values += take_onnx_units(model, step, t.key);
    if (o.fill != Fill::kZero) {
      // Decoys never modelled on units a larger tier takes (as lock_model_tiers draws them).
      uint64_t seed = 0;
      random_bytes(&seed, sizeof seed);
      fill_onnx_decoys(model, step, &plans.back(), o.fill, seed);
    }
    h.locked_fingerprint = onnx_fingerprint(model);
    h.ratio_after = i == 0 ? 0.0 : ratios[i - 1];
    h.tier = static_cast<uint16_t>(n - i);
    h.tiers = n;
    t.stats.units = plans[i].units;
    t.stats.candidates = ranking.total_units();
    t.stats.values = values;
    t.stats.parameters = parameters;
    record_lock(model, h, original, ratios[i]);
    if (on_state) on_state(ratios[i], model);
    out.push_back(std::move(t));
    previous = plans[i];
  }
  std::reverse(out.begin(), out.end());
  return out;
}

void unlock_onnx_model(OnnxModel& model, const std::vector<KeyFile>& keys) {
  if (keys.empty()) throw UsageError("unlock: no key given");
  for (const KeyFile& key : keys) {
    check_key_applies(onnx_fingerprint(model), key.header);
    // Check every entry before writing any of them.
    for (const auto& e : key.entries) {
      const OnnxTensor* t = model.find(e.tensor);
      if (t == nullptr)
        throw MismatchError("key entry '" + e.tensor + "': model has no such initializer");
      if (!onnx_is_float(t->data_type) || onnx_key_dtype(t->data_type) != e.dtype) {
        throw MismatchError("key entry '" + e.tensor + "': dtype " + to_string(e.dtype) +
                            ", initializer is " + onnx_type_name(t->data_type));
      }
      const std::vector<uint64_t> dims(t->dims.begin(), t->dims.end());
      if (dims != e.shape)
        throw MismatchError("key entry '" + e.tensor + "': shape differs from the initializer's");
      if (e.unit_size == 0 || t->numel() % e.unit_size != 0 ||
          e.values.size() != e.units.size() * e.unit_size * dtype_size(e.dtype)) {
        throw MismatchError("key entry '" + e.tensor + "': unit size " +
                            std::to_string(e.unit_size) + " does not fit the initializer's " +
                            std::to_string(t->numel()) + " elements");
      }
      if (!e.units.empty() && e.units.back() >= t->numel() / e.unit_size) {
        throw MismatchError("key entry '" + e.tensor + "': unit " + std::to_string(e.units.back()) +
                            " out of range");
      }
    }
    put_back_onnx_units(model, key);
    check_key_restored(onnx_fingerprint(model), key.header);
  }
  const KeyHeader& last = keys.back().header;
  if (last.ratio_after > 0.0) {
    model.set_metadata(kOnnxMetaRatio, ratio_str(last.ratio_after));
  } else {
    for (const char* k : {kOnnxMetaKeyId, kOnnxMetaOriginal, kOnnxMetaCriterion, kOnnxMetaScope,
                          kOnnxMetaRatio, kOnnxMetaVersion}) {
      model.set_metadata(k, "");
    }
  }
}

}  // namespace corelocker
