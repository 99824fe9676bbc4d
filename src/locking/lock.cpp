#include "locking/lock.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <string>

#include "locking/decoy_search.h"
#include "locking/decoys.h"
#include "locking/fingerprint.h"
#include "locking/tiers.h"
#include "util/error.h"

namespace corelocker {
namespace {

int64_t plan_values(const ExtractionPlan& plan) {
  int64_t n = 0;
  for (const auto& e : plan.entries) n += static_cast<int64_t>(e.units.size()) * e.unit_size;
  return n;
}

void check_lockable(const LoadedModel& model, const DecoySearch& search) {
  if (model.meta.lock) {
    throw UsageError("model is already locked (key id " + model.meta.lock->key_id +
                     "); unlock it first");
  }
  if (search.tries < 1 || search.tries > 1000) {
    throw UsageError("decoy tries " + std::to_string(search.tries) + ": must be within [1, 1000]");
  }
}

// lock_model once the plan is made.
LockOutcome lock_planned(LoadedModel& model, std::vector<NamedTensor>& tensors,
                         ExtractionPlan& plan, int64_t candidates, const LockOptions& options,
                         const DecoySearch& search) {
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
    DecoyTrial trial;
    trial.fill = [&](const uint64_t* draw) {
      if (draw != nullptr) {
        extract_units_seeded(tensors, plan, options, nullptr, draw);
      } else {
        LockOptions zero = options;
        zero.fill = Fill::kZero;
        extract_units_seeded(tensors, plan, zero, nullptr, nullptr);
      }
    };
    trial.score = [&] { return search.score(model); };
    trial.reset = [&] {
      for (auto& [live, copy] : saved) live.copy_(copy);
    };
    best_seed = choose_decoy_draw(search.tries, search.target, search.seed, trial);
  }
  if (!searching && search.seed.has_value()) best_seed = *search.seed;
  const bool seeded = searching || search.seed.has_value();
  out.key =
      extract_units_seeded(tensors, plan, options, nullptr, seeded ? &best_seed : nullptr, &plan);
  out.stats.units = plan.units;
  out.stats.candidates = candidates;
  out.stats.values = static_cast<int64_t>(out.key.value_count());
  out.stats.parameters = parameter_count(*model.net);
  model.meta.lock = LockInfo{to_hex(out.key.header.key_id.data(), out.key.header.key_id.size()),
                             to_hex(out.key.header.original_fingerprint),
                             to_string(options.criterion),
                             to_string(options.scope),
                             options.ratio,
                             CORELOCKER_VERSION,
                             to_string(options.fill),
                             1};
  return out;
}

}  // namespace

LockOutcome lock_model(LoadedModel& model, const LockOptions& options) {
  return lock_model(model, options, DecoySearch{});
}

LockOutcome lock_model(LoadedModel& model, const LockOptions& options, const DecoySearch& search) {
  if (!(options.ratio >= 0.0 && options.ratio <= 1.0)) {
    throw UsageError("ratio " + std::to_string(options.ratio) + ": must be within [0, 1]");
  }
  auto tensors = named_tensors(*model.net);
  UnitSelection selection = select_units(tensors, model.net->structure(), options);
  check_lockable(model, search);
  return lock_planned(model, tensors, selection.plan, selection.candidates, options, search);
}

LockOutcome lock_model(LoadedModel& model, const Ranking& ranking, double ratio) {
  return lock_model(model, ranking, ratio, DecoySearch{});
}

LockOutcome lock_model(LoadedModel& model, const Ranking& ranking, double ratio,
                       const DecoySearch& search) {
  check_lockable(model, search);
  auto tensors = named_tensors(*model.net);
  LockOptions options = ranking.options;
  options.ratio = ratio;
  ExtractionPlan plan = plan_at(ranking, tensors, model.net->structure(), ratio);
  return lock_planned(model, tensors, plan, ranking.total_units(), options, search);
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
                          ", but this model is locked at ratio " +
                          std::to_string(model.meta.lock->ratio) +
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

std::vector<TierOutcome> lock_model_tiers(
    LoadedModel& model, const LockOptions& options, std::vector<double> ratios,
    const std::function<void(double, LoadedModel&)>& on_state) {
  ratios = sorted_tier_ratios(std::move(ratios));
  if (model.meta.lock) {
    throw UsageError("model is already locked (key id " + model.meta.lock->key_id +
                     "); unlock it first");
  }
  auto tensors = named_tensors(*model.net);
  const Ranking ranking = rank_units(tensors, model.net->structure(), options);
  std::vector<ExtractionPlan> plans;
  std::vector<uint64_t> units;
  for (const double r : ratios) {
    plans.push_back(plan_at(ranking, tensors, model.net->structure(), r));
    units.push_back(static_cast<uint64_t>(plans.back().units));
  }
  check_tier_units(ratios, units);
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
