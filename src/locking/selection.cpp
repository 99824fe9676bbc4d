#include "locking/selection.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "locking/selection_parts.h"
#include "util/error.h"

namespace corelocker {
namespace {

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
    do r = rng();
    while (r >= limit);
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

torch::Tensor unit_tensor(const UnitList& units) {
  auto t = torch::empty({static_cast<int64_t>(units.size())}, torch::kInt64);
  int64_t* p = t.data_ptr<int64_t>();
  for (const uint64_t u : units) *p++ = static_cast<int64_t>(u);
  return t;
}

std::vector<int64_t> unit_vector(const UnitList& units) { return {units.begin(), units.end()}; }

std::vector<std::string> kept_layers(const Structure& structure,
                                     const std::vector<std::string>& keep) {
  std::vector<std::string> out;
  for (const auto& layer : structure) {
    if (selection_parts::kept(layer, keep)) out.push_back(layer.name);
  }
  for (const auto& pattern : keep) {
    const bool any = std::any_of(structure.begin(), structure.end(), [&](const LayerSpec& l) {
      return selection_parts::kept(l, {pattern});
    });
    if (!any) {
      throw UsageError("--keep '" + pattern + "': matches no layer (names such as '" +
                       (structure.empty() ? std::string() : structure.front().name) + "' or '" +
                       (structure.empty() ? std::string() : structure.front().weight) +
                       "'; `corelocker inspect` lists them)");
    }
  }
  return out;
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
  const selection_parts::TensorIndex idx = selection_parts::index_tensors(tensors);
  const bool bn_units = selection_parts::uses_bn_units(options);
  Ranking ranking;
  ranking.options = options;
  std::map<std::string, size_t> group_of;
  const std::vector<bool> eligible = selection_parts::eligible_layers(structure, options);
  for (size_t i = 0; i < structure.size(); ++i) {
    const LayerSpec& layer = structure[i];
    if (!eligible[i]) continue;
    if (bn_units != selection_parts::is_norm(layer.kind)) continue;
    auto scores = selection_parts::unit_scores(layer, selection_parts::lookup(idx, layer.weight));
    const std::string label = selection_parts::group_label(layer, options.scope);
    auto [it, inserted] = group_of.emplace(label, ranking.groups.size());
    if (inserted) ranking.groups.push_back({label, {}});
    auto& ranked = ranking.groups[it->second].ranked;
    const float* s = scores.data_ptr<float>();
    for (int64_t u = 0; u < scores.numel(); ++u) ranked.push_back({static_cast<int>(i), u, s[u]});
  }
  if (ranking.groups.empty()) {
    throw UsageError(selection_parts::nothing_eligible(options, bn_units));
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
  const selection_parts::TensorIndex idx = selection_parts::index_tensors(tensors);
  selection_parts::PlanBuilder plan(idx, structure,
                                    selection_parts::eligible_layers(structure, ranking.options));
  for (const auto& group : ranking.groups) {
    const int64_t k = units_at_ratio(static_cast<int64_t>(group.ranked.size()), ratio);
    for (int64_t j = 0; j < k; ++j) {
      const RankedUnit& u = group.ranked[static_cast<size_t>(j)];
      plan.add(u.layer, u.index);
    }
  }
  return plan.finish();
}

}  // namespace corelocker
