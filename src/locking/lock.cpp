#include "locking/lock.h"

#include <cstring>
#include <unordered_map>

#include "locking/fingerprint.h"
#include "util/error.h"

namespace corelocker {
namespace {

DType to_dtype(const torch::Tensor& t, const std::string& name) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return DType::kF32;
    case torch::kFloat64: return DType::kF64;
    case torch::kFloat16: return DType::kF16;
    case torch::kBFloat16: return DType::kBF16;
    default:
      throw Error("tensor '" + name + "' has dtype " + std::string(c10::toString(t.scalar_type())) +
                  ", only floating-point tensors can be locked");
  }
}

torch::ScalarType to_scalar(DType d) {
  switch (d) {
    case DType::kF32: return torch::kFloat32;
    case DType::kF64: return torch::kFloat64;
    case DType::kF16: return torch::kFloat16;
    case DType::kBF16: return torch::kBFloat16;
  }
  return torch::kFloat32;
}

std::unordered_map<std::string, torch::Tensor*> by_name(std::vector<NamedTensor>& tensors) {
  std::unordered_map<std::string, torch::Tensor*> m;
  for (auto& t : tensors) m[t.name] = &t.tensor;
  return m;
}

torch::Tensor unit_view(const torch::Tensor& t, int64_t unit_size, const std::string& name) {
  if (!t.is_contiguous()) throw Error("tensor '" + name + "' is not contiguous");
  return t.detach().view({-1, unit_size});
}

std::string short_fp(const Digest& d) { return to_hex(d).substr(0, 16); }

}  // namespace

KeyFile extract_units(std::vector<NamedTensor>& tensors, const ExtractionPlan& plan,
                      const LockOptions& options) {
  torch::NoGradGuard no_grad;
  auto named = by_name(tensors);
  KeyFile key;
  key.header.original_fingerprint = fingerprint(tensors);
  random_bytes(key.header.key_id.data(), key.header.key_id.size());
  key.header.criterion = options.criterion;
  key.header.scope = options.scope;
  key.header.include_io = options.include_io;
  key.header.random_bn_units = options.criterion == Criterion::kRandom && options.random_bn_units;
  key.header.ratio = options.ratio;
  key.header.seed = options.criterion == Criterion::kRandom ? options.seed : 0;
  key.header.units = static_cast<uint64_t>(plan.units);
  // Gather every value before zeroing anything: bn plans touch a tensor through one entry only,
  // but the order must not matter.
  for (const auto& p : plan.entries) {
    auto it = named.find(p.tensor);
    if (it == named.end()) throw Error("plan names tensor '" + p.tensor + "' which the model does not have");
    const torch::Tensor& t = *it->second;
    KeyEntry e;
    e.tensor = p.tensor;
    e.dtype = to_dtype(t, p.tensor);
    for (auto d : t.sizes()) e.shape.push_back(static_cast<uint64_t>(d));
    e.unit_size = static_cast<uint64_t>(p.unit_size);
    e.units.assign(p.units.begin(), p.units.end());
    auto idx = torch::tensor(p.units, torch::kInt64);
    auto values = unit_view(t, p.unit_size, p.tensor).index_select(0, idx).contiguous();
    e.values.resize(static_cast<size_t>(values.numel()) * values.element_size());
    if (!e.values.empty()) std::memcpy(e.values.data(), values.data_ptr(), e.values.size());
    key.entries.push_back(std::move(e));
  }
  for (const auto& p : plan.entries) {
    auto idx = torch::tensor(p.units, torch::kInt64);
    unit_view(*named[p.tensor], p.unit_size, p.tensor).index_fill_(0, idx, 0);
  }
  key.header.locked_fingerprint = fingerprint(tensors);
  return key;
}

void restore_units(std::vector<NamedTensor>& tensors, const KeyFile& key) {
  torch::NoGradGuard no_grad;
  const Digest fp = fingerprint(tensors);
  if (fp != key.header.locked_fingerprint) {
    if (fp == key.header.original_fingerprint) {
      throw MismatchError("model is already unlocked (its fingerprint " + short_fp(fp) +
                          "... is the original this key restores)");
    }
    throw MismatchError("key belongs to another model: key expects locked model " +
                        short_fp(key.header.locked_fingerprint) + "..., this model is " +
                        short_fp(fp) + "...");
  }
  auto named = by_name(tensors);
  // Check every entry before writing any of them.
  for (const auto& e : key.entries) {
    auto it = named.find(e.tensor);
    if (it == named.end()) throw MismatchError("key entry '" + e.tensor + "': model has no such tensor");
    const torch::Tensor& t = *it->second;
    if (to_dtype(t, e.tensor) != e.dtype) {
      throw MismatchError("key entry '" + e.tensor + "': dtype " + to_string(e.dtype) + ", tensor is " +
                          c10::toString(t.scalar_type()));
    }
    std::vector<int64_t> shape(e.shape.begin(), e.shape.end());
    if (t.sizes() != c10::IntArrayRef(shape)) {
      throw MismatchError("key entry '" + e.tensor + "': shape " + c10::str(c10::IntArrayRef(shape)) +
                          ", tensor is " + c10::str(t.sizes()));
    }
  }
  for (const auto& e : key.entries) {
    const auto k = static_cast<int64_t>(e.units.size()), s = static_cast<int64_t>(e.unit_size);
    std::vector<int64_t> units(e.units.begin(), e.units.end());
    auto values = torch::from_blob(const_cast<uint8_t*>(e.values.data()), {k, s}, to_scalar(e.dtype));
    unit_view(*named[e.tensor], s, e.tensor).index_copy_(0, torch::tensor(units, torch::kInt64), values);
  }
  const Digest restored = fingerprint(tensors);
  if (restored != key.header.original_fingerprint) {
    throw Error("restored model's fingerprint " + short_fp(restored) + "... differs from the original " +
                short_fp(key.header.original_fingerprint) + "... recorded in the key");
  }
}

LockOutcome lock_model(LoadedModel& model, const LockOptions& options) {
  if (!(options.ratio >= 0.0 && options.ratio <= 1.0)) {
    throw UsageError("ratio " + std::to_string(options.ratio) + ": must be within [0, 1]");
  }
  auto tensors = named_tensors(*model.net);
  return lock_model(model, rank_units(tensors, model.net->structure(), options), options.ratio);
}

LockOutcome lock_model(LoadedModel& model, const Ranking& ranking, double ratio) {
  if (model.meta.lock) {
    throw UsageError("model is already locked (key id " + model.meta.lock->key_id + "); unlock it first");
  }
  auto tensors = named_tensors(*model.net);
  LockOptions options = ranking.options;
  options.ratio = ratio;
  ExtractionPlan plan = plan_at(ranking, tensors, model.net->structure(), ratio);
  LockOutcome out;
  out.key = extract_units(tensors, plan, options);
  out.stats.units = plan.units;
  out.stats.candidates = ranking.total_units();
  out.stats.values = static_cast<int64_t>(out.key.value_count());
  out.stats.parameters = parameter_count(*model.net);
  model.meta.lock = LockInfo{to_hex(out.key.header.key_id.data(), out.key.header.key_id.size()),
                             to_hex(out.key.header.original_fingerprint),
                             to_string(options.criterion),
                             to_string(options.scope),
                             ratio,
                             CORELOCKER_VERSION};
  return out;
}

void unlock_model(LoadedModel& model, const KeyFile& key) {
  auto tensors = named_tensors(*model.net);
  restore_units(tensors, key);
  model.meta.lock.reset();
}

void zero_weights(LoadedModel& model) {
  torch::NoGradGuard no_grad;
  auto tensors = named_tensors(*model.net);
  for (const auto& layer : model.net->structure()) {
    for (auto& t : tensors) {
      if (t.name == layer.weight) t.tensor.zero_();
    }
  }
}

Digest model_fingerprint(LoadedModel& model) { return fingerprint(named_tensors(*model.net)); }

}  // namespace corelocker
