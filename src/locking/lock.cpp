#include "locking/lock.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <unordered_map>

#include "locking/decoys.h"
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

ExtractionPlan plan_difference(const ExtractionPlan& larger, const ExtractionPlan& smaller) {
  ExtractionPlan out;
  out.units = larger.units - smaller.units;
  for (const auto& e : larger.entries) {
    const PlanEntry* s = nullptr;
    for (const auto& c : smaller.entries) {
      if (c.tensor == e.tensor) s = &c;
    }
    PlanEntry d{e.tensor, e.unit_size, {}};
    if (s == nullptr) {
      d.units = e.units;
    } else {
      std::set_difference(e.units.begin(), e.units.end(), s->units.begin(), s->units.end(),
                          std::back_inserter(d.units));
    }
    if (!d.units.empty()) out.entries.push_back(std::move(d));
  }
  return out;
}

namespace {

int64_t plan_values(const ExtractionPlan& plan) {
  int64_t n = 0;
  for (const auto& e : plan.entries) n += static_cast<int64_t>(e.units.size()) * e.unit_size;
  return n;
}

}  // namespace

namespace {

// extract_units with the decoy generator's seed given (nullptr: drawn from the OS).
KeyFile extract_units_seeded(std::vector<NamedTensor>& tensors, const ExtractionPlan& plan,
                             const LockOptions& options, const ExtractionPlan* no_donors,
                             const uint64_t* seed) {
  torch::NoGradGuard no_grad;
  auto named = by_name(tensors);
  KeyFile key;
  key.header.original_fingerprint = fingerprint(tensors);
  random_bytes(key.header.key_id.data(), key.header.key_id.size());
  key.header.criterion = options.criterion;
  key.header.fill = options.fill;
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
  if (options.fill == Fill::kZero) {
    for (const auto& p : plan.entries) {
      unit_view(*named[p.tensor], p.unit_size, p.tensor).index_fill_(0, torch::tensor(p.units, torch::kInt64), 0);
    }
  } else {
    uint64_t decoy_seed = 0;
    if (seed != nullptr) {
      decoy_seed = *seed;
    } else {
      random_bytes(&decoy_seed, sizeof decoy_seed);  // decoys must not be predictable
    }
    for (const auto& p : plan.entries) unit_view(*named[p.tensor], p.unit_size, p.tensor);  // contiguity checks
    fill_decoys(tensors, plan, no_donors, options.fill, decoy_seed);
  }
  key.header.locked_fingerprint = fingerprint(tensors);
  return key;
}

}  // namespace

KeyFile extract_units(std::vector<NamedTensor>& tensors, const ExtractionPlan& plan,
                      const LockOptions& options, const ExtractionPlan* no_donors) {
  return extract_units_seeded(tensors, plan, options, no_donors, nullptr);
}

KeyFile extract_units(std::vector<NamedTensor>& tensors, const ExtractionPlan& plan, const LockOptions& options,
                      const ExtractionPlan* no_donors, uint64_t decoy_seed) {
  return extract_units_seeded(tensors, plan, options, no_donors, &decoy_seed);
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
  return lock_model(model, ranking, ratio, DecoySearch{});
}

LockOutcome lock_model(LoadedModel& model, const Ranking& ranking, double ratio, const DecoySearch& search) {
  if (model.meta.lock) {
    throw UsageError("model is already locked (key id " + model.meta.lock->key_id + "); unlock it first");
  }
  if (search.tries < 1 || search.tries > 1000) {
    throw UsageError("decoy tries " + std::to_string(search.tries) + ": must be within [1, 1000]");
  }
  auto tensors = named_tensors(*model.net);
  LockOptions options = ranking.options;
  options.ratio = ratio;
  ExtractionPlan plan = plan_at(ranking, tensors, model.net->structure(), ratio);
  LockOutcome out;
  uint64_t best_seed = 0;
  const bool searching = options.fill != Fill::kZero && search.tries > 1 && search.score;
  if (searching) {
    torch::NoGradGuard no_grad;
    // Copies of the tensors the plan touches, to put back between tries.
    std::vector<std::pair<torch::Tensor, torch::Tensor>> saved;
    for (auto& t : tensors) {
      for (const auto& e : plan.entries) {
        if (e.tensor == t.name) saved.emplace_back(t.tensor, t.tensor.clone());
      }
    }
    double reference = 0.0;
    if (search.target == DecoySearch::Target::kMatchZero) {
      LockOptions zero = options;
      zero.fill = Fill::kZero;
      extract_units_seeded(tensors, plan, zero, nullptr, nullptr);
      reference = search.score(model);
      for (auto& [live, copy] : saved) live.copy_(copy);
    }
    double best = 0.0;
    for (int i = 0; i < search.tries; ++i) {
      uint64_t seed = 0;
      if (search.seed) {
        seed = *search.seed + static_cast<uint64_t>(i);
      } else {
        random_bytes(&seed, sizeof seed);
      }
      extract_units_seeded(tensors, plan, options, nullptr, &seed);
      const double score = search.score(model);
      const double distance =
          search.target == DecoySearch::Target::kMatchZero ? std::abs(score - reference) : score;
      if (i == 0 || distance < best) {
        best = distance;
        best_seed = seed;
      }
      for (auto& [live, copy] : saved) live.copy_(copy);
    }
  }
  if (!searching && search.seed.has_value()) best_seed = *search.seed;
  const bool seeded = searching || search.seed.has_value();
  out.key = extract_units_seeded(tensors, plan, options, nullptr, seeded ? &best_seed : nullptr);
  out.stats.units = plan.units;
  out.stats.candidates = ranking.total_units();
  out.stats.values = static_cast<int64_t>(out.key.value_count());
  out.stats.parameters = parameter_count(*model.net);
  model.meta.lock = LockInfo{to_hex(out.key.header.key_id.data(), out.key.header.key_id.size()),
                             to_hex(out.key.header.original_fingerprint),
                             to_string(options.criterion),
                             to_string(options.scope),
                             ratio,
                             CORELOCKER_VERSION,
                             to_string(options.fill),
                             1};
  return out;
}

void unlock_model(LoadedModel& model, const KeyFile& key) {
  auto tensors = named_tensors(*model.net);
  const auto& h = key.header;
  const std::string key_id = to_hex(h.key_id.data(), h.key_id.size());
  try {
    restore_units(tensors, key);
  } catch (const MismatchError&) {
    if (h.tiers > 1 && model.meta.lock && model.meta.lock->key_id == key_id) {
      throw MismatchError("tier key " + std::to_string(h.tier) + " of " + std::to_string(h.tiers) +
                          " applies to the model locked at ratio " + std::to_string(h.ratio) +
                          ", but this model is locked at ratio " + std::to_string(model.meta.lock->ratio) +
                          ": apply the tier keys in order, largest ratio first");
    }
    throw;
  }
  if (h.ratio_after > 0.0 && model.meta.lock) {
    model.meta.lock->ratio = h.ratio_after;
    model.meta.lock->tiers = h.tiers - h.tier;
  } else {
    model.meta.lock.reset();
  }
}

void unlock_model(LoadedModel& model, const std::vector<KeyFile>& keys) {
  for (const auto& k : keys) unlock_model(model, k);
}

LoadedModel load_unlocked(const std::string& locked_path, const std::vector<KeyFile>& keys) {
  LoadedModel m = load_model(locked_path);
  unlock_model(m, keys);
  return m;
}

std::vector<TierOutcome> lock_model_tiers(LoadedModel& model, const LockOptions& options, std::vector<double> ratios,
                                          const std::function<void(double, LoadedModel&)>& on_state) {
  if (ratios.empty()) throw UsageError("tiers: give at least one ratio");
  if (ratios.size() > 1000) throw UsageError("tiers: " + std::to_string(ratios.size()) + " ratios (at most 1000)");
  std::sort(ratios.begin(), ratios.end());
  for (size_t i = 0; i < ratios.size(); ++i) {
    if (!(ratios[i] > 0.0 && ratios[i] <= 1.0)) {
      throw UsageError("tier ratio " + std::to_string(ratios[i]) + ": must be within (0, 1]");
    }
    if (i > 0 && ratios[i] == ratios[i - 1]) throw UsageError("tier ratio " + std::to_string(ratios[i]) + " given twice");
  }
  if (model.meta.lock) {
    throw UsageError("model is already locked (key id " + model.meta.lock->key_id + "); unlock it first");
  }
  auto tensors = named_tensors(*model.net);
  const Ranking ranking = rank_units(tensors, model.net->structure(), options);
  std::vector<ExtractionPlan> plans;
  for (size_t i = 0; i < ratios.size(); ++i) {
    plans.push_back(plan_at(ranking, tensors, model.net->structure(), ratios[i]));
    if (i > 0 && plans[i].units == plans[i - 1].units) {
      throw UsageError("tiers " + std::to_string(ratios[i - 1]) + " and " + std::to_string(ratios[i]) + " both extract " +
                       std::to_string(plans[i].units) + " units: choose ratios further apart");
    }
  }
  if (plans.front().units == 0) {
    throw UsageError("tier ratio " + std::to_string(ratios.front()) + " extracts no unit");
  }
  KeyId lock_id{};
  random_bytes(lock_id.data(), lock_id.size());
  const uint16_t n = static_cast<uint16_t>(ratios.size());
  std::vector<TierOutcome> out;
  ExtractionPlan previous;
  for (size_t i = 0; i < ratios.size(); ++i) {
    LockOptions o = options;
    o.ratio = ratios[i];
    TierOutcome t;
    t.key = extract_units(tensors, plan_difference(plans[i], previous), o, &plans.back());
    t.key.header.key_id = lock_id;
    t.key.header.ratio_after = i == 0 ? 0.0 : ratios[i - 1];
    t.key.header.tier = static_cast<uint16_t>(n - i);
    t.key.header.tiers = n;
    t.stats.units = plans[i].units;
    t.stats.candidates = ranking.total_units();
    t.stats.values = plan_values(plans[i]);
    t.stats.parameters = parameter_count(*model.net);
    model.meta.lock = LockInfo{to_hex(lock_id.data(), lock_id.size()),
                               to_hex(t.key.header.original_fingerprint),
                               to_string(o.criterion),
                               to_string(o.scope),
                               ratios[i],
                               CORELOCKER_VERSION,
                               to_string(o.fill),
                               static_cast<int64_t>(i + 1)};
    if (on_state) on_state(ratios[i], model);
    out.push_back(std::move(t));
    previous = plans[i];
  }
  // The locked model records the fingerprint of the original, not of an intermediate state.
  model.meta.lock->original_fingerprint = to_hex(out.front().key.header.original_fingerprint);
  std::reverse(out.begin(), out.end());
  return out;
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
