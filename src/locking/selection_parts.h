// The pieces rank_units / plan_at (locking/selection.cpp) and select_units
// (locking/select_units.cpp) share: which layers compete, their units' scores, and the builder of
// a plan's per-tensor entries.
#pragma once

#include <fnmatch.h>

#include <algorithm>
#include <array>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "locking/selection.h"
#include "util/error.h"

namespace corelocker::selection_parts {

using TensorIndex = std::unordered_map<std::string, const torch::Tensor*>;

inline TensorIndex index_tensors(const std::vector<NamedTensor>& tensors) {
  TensorIndex idx;
  for (const auto& t : tensors) idx[t.name] = &t.tensor;
  return idx;
}

inline const torch::Tensor& lookup(const TensorIndex& idx, const std::string& name) {
  auto it = idx.find(name);
  if (it == idx.end())
    throw Error("model has no tensor '" + name + "' (named by its layer structure)");
  return *it->second;
}

inline bool is_norm(LayerKind k) {
  return k == LayerKind::kBatchNorm || k == LayerKind::kLayerNorm;
}

inline bool kept(const LayerSpec& layer, const std::vector<std::string>& keep) {
  for (const auto& pattern : keep) {
    if (fnmatch(pattern.c_str(), layer.name.c_str(), 0) == 0 ||
        fnmatch(pattern.c_str(), layer.weight.c_str(), 0) == 0)
      return true;
  }
  return false;
}

// Per layer of the structure: may a lock take its units? Not the first and the last unless
// include_io, never a kept layer.
inline std::vector<bool> eligible_layers(const Structure& s, const LockOptions& o) {
  if (!o.keep.empty()) kept_layers(s, o.keep);  // refuses a pattern that matches nothing
  std::vector<bool> out(s.size());
  for (size_t i = 0; i < s.size(); ++i)
    out[i] = (o.include_io || (i != 0 && i + 1 != s.size())) && !kept(s[i], o.keep);
  return out;
}

// What a selection says when no layer is eligible.
inline std::string nothing_eligible(const LockOptions& options, bool bn_units) {
  return std::string("criterion '") + to_string(options.criterion) +
         "': the model has no eligible " +
         (bn_units ? "normalisation layers" : "conv or linear layers") +
         (options.include_io ? ""
                             : " (first and last layer excluded; --include-io includes them)") +
         (options.keep.empty() ? "" : " (--keep leaves some alone)");
}

inline bool uses_bn_units(const LockOptions& o) {
  return o.criterion == Criterion::kBn || (o.criterion == Criterion::kRandom && o.random_bn_units);
}

// Scores of a layer's units, one float per unit.
inline torch::Tensor unit_scores(const LayerSpec& layer, const torch::Tensor& w) {
  torch::NoGradGuard no_grad;
  auto a = w.detach().to(torch::kFloat32).abs();
  if (layer.kind == LayerKind::kConv2d) {
    if (w.dim() != 4)
      throw Error("conv layer '" + layer.name + "': weight has " + std::to_string(w.dim()) +
                  " dimensions, expected 4");
    return a.reshape({w.size(0) * w.size(1), w.size(2) * w.size(3)}).sum(1).contiguous();
  }
  return a.flatten().contiguous();
}

inline std::string group_label(const LayerSpec& layer, Scope scope) {
  if (scope == Scope::kLayer) return layer.name;
  switch (layer.kind) {
    case LayerKind::kConv2d:
      return "conv kernels";
    case LayerKind::kLinear:
      return "linear weights";
    default:
      return "norm channels";
  }
}

// Turns the units a lock takes, layer by layer, into per-tensor entries: plan_at's rules, and its
// order of entries (a tensor's entry is made when the first unit that touches it is added).
class PlanBuilder {
 public:
  PlanBuilder(const TensorIndex& idx, const Structure& structure, std::vector<bool> eligible)
      : idx_(idx), structure_(structure), eligible_(std::move(eligible)) {}

  // Adds unit `unit` of structure layer `layer`: one unit of the criterion. Units added one at a
  // time wait in a plain list until finish() sorts them.
  void add(int layer, int64_t unit) {
    const Targets& t = targets(layer);
    for (size_t i = 0; i < t.count; ++i) staged_[t.entry[i]].push_back(unit);
    ++plan_.units;
  }
  // Same for a layer's units as a list: moved into the plan when it is the only list of its one
  // tensor, merged otherwise (no plain copy: a plan holds no more than its key will).
  void add(int layer, UnitList&& units) {
    if (units.empty()) return;
    const Targets& t = targets(layer);
    plan_.units += static_cast<int64_t>(units.size());
    for (size_t i = 0; i < t.count; ++i) {
      UnitList& to = plan_.entries[t.entry[i]].units;
      if (!to.empty()) {
        to = UnitList::merge(to, units);
      } else if (i + 1 == t.count) {
        to = std::move(units);
      } else {
        to = units;
      }
    }
  }

  ExtractionPlan finish() {
    for (size_t i = 0; i < plan_.entries.size(); ++i) {
      std::vector<int64_t>& staged = staged_[i];
      if (staged.empty()) continue;
      std::sort(staged.begin(), staged.end());
      staged.erase(std::unique(staged.begin(), staged.end()), staged.end());
      UnitList units(staged.begin(), staged.end());
      std::vector<int64_t>().swap(staged);
      UnitList& to = plan_.entries[i].units;
      to = to.empty() ? std::move(units) : UnitList::merge(to, units);
      to.shrink_to_fit();
    }
    return std::move(plan_);
  }

 private:
  struct Targets {  // the entries a layer's units go to
    std::array<size_t, 4> entry{};
    size_t count = 0;
  };

  const Targets& targets(int layer) {
    auto found = targets_.find(layer);
    if (found != targets_.end()) return found->second;
    const LayerSpec& spec = structure_[static_cast<size_t>(layer)];
    const torch::Tensor& w = lookup(idx_, spec.weight);
    Targets t;
    switch (spec.kind) {
      case LayerKind::kConv2d:
        t.entry[t.count++] = entry(spec.weight, w.size(2) * w.size(3));
        break;
      case LayerKind::kLinear:
        t.entry[t.count++] = entry(spec.weight, 1);
        break;
      case LayerKind::kBatchNorm:
      case LayerKind::kLayerNorm: {
        t.entry[t.count++] = entry(spec.weight, 1);
        if (!spec.bias.empty()) t.entry[t.count++] = entry(spec.bias, 1);
        // The producing filter goes along only when that conv is itself eligible, so the
        // first/last-layer rule holds for every criterion.
        if (spec.producer >= 0 && eligible_[static_cast<size_t>(spec.producer)]) {
          const LayerSpec& conv = structure_[static_cast<size_t>(spec.producer)];
          const torch::Tensor& cw = lookup(idx_, conv.weight);
          t.entry[t.count++] = entry(conv.weight, cw.numel() / cw.size(0));
          if (!conv.bias.empty()) t.entry[t.count++] = entry(conv.bias, 1);
        }
        break;
      }
    }
    return targets_.emplace(layer, t).first->second;
  }

  size_t entry(const std::string& name, int64_t unit_size) {
    auto [it, inserted] = entry_of_.emplace(name, plan_.entries.size());
    if (inserted) {
      plan_.entries.push_back({name, unit_size, {}});
      staged_.emplace_back();
    }
    if (plan_.entries[it->second].unit_size != unit_size) {
      throw Error("tensor '" + name + "' used with two unit sizes");
    }
    return it->second;
  }

  const TensorIndex& idx_;
  const Structure& structure_;
  std::vector<bool> eligible_;
  ExtractionPlan plan_;
  std::vector<std::vector<int64_t>> staged_;  // per plan entry: units added one at a time
  std::map<std::string, size_t> entry_of_;
  std::unordered_map<int, Targets> targets_;
};

}  // namespace corelocker::selection_parts
