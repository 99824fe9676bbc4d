#include "locking/selection.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <unordered_map>

#include "util/error.h"

namespace corelocker {
namespace {

using TensorIndex = std::unordered_map<std::string, const torch::Tensor*>;

TensorIndex index_tensors(const std::vector<NamedTensor>& tensors) {
  TensorIndex idx;
  for (const auto& t : tensors) idx[t.name] = &t.tensor;
  return idx;
}

const torch::Tensor& lookup(const TensorIndex& idx, const std::string& name) {
  auto it = idx.find(name);
  if (it == idx.end()) throw Error("model has no tensor '" + name + "' (named by its layer structure)");
  return *it->second;
}

bool is_norm(LayerKind k) { return k == LayerKind::kBatchNorm || k == LayerKind::kLayerNorm; }

bool eligible(const Structure& s, size_t i, bool include_io) {
  return include_io || (i != 0 && i + 1 != s.size());
}

bool uses_bn_units(const LockOptions& o) {
  return o.criterion == Criterion::kBn || (o.criterion == Criterion::kRandom && o.random_bn_units);
}

// Scores of a layer's units, one float per unit.
torch::Tensor unit_scores(const LayerSpec& layer, const torch::Tensor& w) {
  torch::NoGradGuard no_grad;
  auto a = w.detach().to(torch::kFloat32).abs();
  if (layer.kind == LayerKind::kConv2d) {
    if (w.dim() != 4) throw Error("conv layer '" + layer.name + "': weight has " + std::to_string(w.dim()) + " dimensions, expected 4");
    return a.reshape({w.size(0) * w.size(1), w.size(2) * w.size(3)}).sum(1).contiguous();
  }
  return a.flatten().contiguous();
}

std::string group_label(const LayerSpec& layer, Scope scope) {
  if (scope == Scope::kLayer) return layer.name;
  switch (layer.kind) {
    case LayerKind::kConv2d: return "conv kernels";
    case LayerKind::kLinear: return "linear weights";
    default: return "norm channels";
  }
}

// splitmix64: derives independent per-group seeds from the user's seed.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Fisher-Yates with rejection sampling: the same permutation on every platform.
void seeded_shuffle(std::vector<RankedUnit>& v, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = v.size(); i > 1; --i) {
    const uint64_t span = i;
    const uint64_t limit = UINT64_MAX - UINT64_MAX % span;
    uint64_t r;
    do r = rng(); while (r >= limit);
    std::swap(v[i - 1], v[r % span]);
  }
}

}  // namespace

LockOptions lock_options_for(const UnitChoice& units, double ratio) {
  LockOptions o;
  o.criterion = units.criterion;
  o.scope = units.scope;
  o.include_io = units.include_io;
  o.ratio = ratio;
  return o;
}

int64_t Ranking::total_units() const {
  int64_t n = 0;
  for (const auto& g : groups) n += static_cast<int64_t>(g.ranked.size());
  return n;
}

int64_t units_at_ratio(int64_t n, double ratio) {
  return std::min<int64_t>(n, static_cast<int64_t>(std::llround(ratio * static_cast<double>(n))));
}

Ranking rank_units(const std::vector<NamedTensor>& tensors, const Structure& structure,
                   const LockOptions& options) {
  const TensorIndex idx = index_tensors(tensors);
  const bool bn_units = uses_bn_units(options);
  Ranking ranking;
  ranking.options = options;
  std::map<std::string, size_t> group_of;
  for (size_t i = 0; i < structure.size(); ++i) {
    const LayerSpec& layer = structure[i];
    if (!eligible(structure, i, options.include_io)) continue;
    if (bn_units != is_norm(layer.kind)) continue;
    auto scores = unit_scores(layer, lookup(idx, layer.weight));
    const std::string label = group_label(layer, options.scope);
    auto [it, inserted] = group_of.emplace(label, ranking.groups.size());
    if (inserted) ranking.groups.push_back({label, {}});
    auto& ranked = ranking.groups[it->second].ranked;
    const float* s = scores.data_ptr<float>();
    for (int64_t u = 0; u < scores.numel(); ++u) ranked.push_back({static_cast<int>(i), u, s[u]});
  }
  if (ranking.groups.empty()) {
    throw UsageError(std::string("criterion '") + to_string(options.criterion) + "': the model has no eligible " +
                     (bn_units ? "normalisation layers" : "conv or linear layers") +
                     (options.include_io ? "" : " (first and last layer excluded; --include-io includes them)"));
  }
  for (size_t g = 0; g < ranking.groups.size(); ++g) {
    auto& ranked = ranking.groups[g].ranked;
    if (options.criterion == Criterion::kRandom) {
      seeded_shuffle(ranked, mix(options.seed ^ mix(g)));
    } else {
      // Stable: ties keep structure order, then unit order, so a ranking is reproducible.
      std::stable_sort(ranked.begin(), ranked.end(),
                       [](const RankedUnit& a, const RankedUnit& b) { return a.score > b.score; });
    }
  }
  return ranking;
}

ExtractionPlan plan_at(const Ranking& ranking, const std::vector<NamedTensor>& tensors,
                       const Structure& structure, double ratio) {
  if (!(ratio >= 0.0 && ratio <= 1.0)) {
    throw UsageError("ratio " + std::to_string(ratio) + ": must be within [0, 1]");
  }
  const TensorIndex idx = index_tensors(tensors);
  ExtractionPlan plan;
  std::map<std::string, size_t> entry_of;
  auto add = [&](const std::string& name, int64_t unit_size, int64_t unit) {
    auto [it, inserted] = entry_of.emplace(name, plan.entries.size());
    if (inserted) plan.entries.push_back({name, unit_size, {}});
    auto& e = plan.entries[it->second];
    if (e.unit_size != unit_size) throw Error("tensor '" + name + "' used with two unit sizes");
    e.units.push_back(unit);
  };
  for (const auto& group : ranking.groups) {
    const int64_t k = units_at_ratio(static_cast<int64_t>(group.ranked.size()), ratio);
    for (int64_t j = 0; j < k; ++j) {
      const RankedUnit& u = group.ranked[static_cast<size_t>(j)];
      const LayerSpec& layer = structure[static_cast<size_t>(u.layer)];
      const torch::Tensor& w = lookup(idx, layer.weight);
      switch (layer.kind) {
        case LayerKind::kConv2d:
          add(layer.weight, w.size(2) * w.size(3), u.index);
          break;
        case LayerKind::kLinear:
          add(layer.weight, 1, u.index);
          break;
        case LayerKind::kBatchNorm:
        case LayerKind::kLayerNorm: {
          add(layer.weight, 1, u.index);
          if (!layer.bias.empty()) add(layer.bias, 1, u.index);
          // The producing filter goes along only when that conv is itself eligible, so the
          // first/last-layer rule holds for every criterion.
          if (layer.producer >= 0 &&
              eligible(structure, static_cast<size_t>(layer.producer), ranking.options.include_io)) {
            const LayerSpec& conv = structure[static_cast<size_t>(layer.producer)];
            const torch::Tensor& cw = lookup(idx, conv.weight);
            add(conv.weight, cw.numel() / cw.size(0), u.index);
            if (!conv.bias.empty()) add(conv.bias, 1, u.index);
          }
          break;
        }
      }
      ++plan.units;
    }
  }
  for (auto& e : plan.entries) {
    std::sort(e.units.begin(), e.units.end());
    e.units.erase(std::unique(e.units.begin(), e.units.end()), e.units.end());
  }
  return plan;
}

}  // namespace corelocker
