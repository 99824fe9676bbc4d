#include "locking/selection.h"

#include <fnmatch.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <map>
#include <new>
#include <random>
#include <unordered_map>

#include "util/error.h"
#include "util/memory.h"

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
  if (it == idx.end())
    throw Error("model has no tensor '" + name + "' (named by its layer structure)");
  return *it->second;
}

bool is_norm(LayerKind k) { return k == LayerKind::kBatchNorm || k == LayerKind::kLayerNorm; }

bool kept(const LayerSpec& layer, const std::vector<std::string>& keep) {
  for (const auto& pattern : keep) {
    if (fnmatch(pattern.c_str(), layer.name.c_str(), 0) == 0 ||
        fnmatch(pattern.c_str(), layer.weight.c_str(), 0) == 0)
      return true;
  }
  return false;
}

// Per layer of the structure: may a lock take its units? Not the first and the last unless
// include_io, never a kept layer.
std::vector<bool> eligible_layers(const Structure& s, const LockOptions& o) {
  if (!o.keep.empty()) kept_layers(s, o.keep);  // refuses a pattern that matches nothing
  std::vector<bool> out(s.size());
  for (size_t i = 0; i < s.size(); ++i)
    out[i] = (o.include_io || (i != 0 && i + 1 != s.size())) && !kept(s[i], o.keep);
  return out;
}

// What a selection says when no layer is eligible.
std::string nothing_eligible(const LockOptions& options, bool bn_units) {
  return std::string("criterion '") + to_string(options.criterion) +
         "': the model has no eligible " +
         (bn_units ? "normalisation layers" : "conv or linear layers") +
         (options.include_io ? ""
                             : " (first and last layer excluded; --include-io includes them)") +
         (options.keep.empty() ? "" : " (--keep leaves some alone)");
}

bool uses_bn_units(const LockOptions& o) {
  return o.criterion == Criterion::kBn || (o.criterion == Criterion::kRandom && o.random_bn_units);
}

// Scores of a layer's units, one float per unit.
torch::Tensor unit_scores(const LayerSpec& layer, const torch::Tensor& w) {
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

std::string group_label(const LayerSpec& layer, Scope scope) {
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
    if (kept(layer, keep)) out.push_back(layer.name);
  }
  for (const auto& pattern : keep) {
    const bool any = std::any_of(structure.begin(), structure.end(),
                                 [&](const LayerSpec& l) { return kept(l, {pattern}); });
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
  const TensorIndex idx = index_tensors(tensors);
  const bool bn_units = uses_bn_units(options);
  Ranking ranking;
  ranking.options = options;
  std::map<std::string, size_t> group_of;
  const std::vector<bool> eligible = eligible_layers(structure, options);
  for (size_t i = 0; i < structure.size(); ++i) {
    const LayerSpec& layer = structure[i];
    if (!eligible[i]) continue;
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
    throw UsageError(nothing_eligible(options, bn_units));
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
  PlanBuilder plan(idx, structure, eligible_layers(structure, ranking.options));
  for (const auto& group : ranking.groups) {
    const int64_t k = units_at_ratio(static_cast<int64_t>(group.ranked.size()), ratio);
    for (int64_t j = 0; j < k; ++j) {
      const RankedUnit& u = group.ranked[static_cast<size_t>(j)];
      plan.add(u.layer, u.index);
    }
  }
  return plan.finish();
}

// ---------------------------------------------------------------- select_units
namespace {

// Unit scores as order keys: a score s >= +0 maps to its bits, which order as the floats do
// (-0.0 to +0.0's key: they compare equal); NaN, or anything negative, to kNoKey.
constexpr uint32_t kNoKey = 0xffffffffu;
uint32_t score_key(float s) {
  uint32_t bits;
  std::memcpy(&bits, &s, sizeof bits);
  if (bits == 0x80000000u) return 0;
  return (bits & 0x80000000u) != 0 || bits > 0x7f800000u ? kNoKey : bits;
}

// Zero-filled counts in pages of their own: the kernel supplies a zero page on first touch, so a
// histogram holds memory only for the bins a model's scores reach (a few pages of 256 KiB for
// float scores), not all of it.
class ZeroCounts {
 public:
  ZeroCounts() = default;
  explicit ZeroCounts(size_t n) : bytes_(n * sizeof(uint64_t)) {
    void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    p_ = static_cast<uint64_t*>(p);
  }
  ZeroCounts(ZeroCounts&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; }
  ZeroCounts& operator=(ZeroCounts&& o) noexcept {
    if (this != &o) {
      release();
      p_ = o.p_;
      bytes_ = o.bytes_;
      o.p_ = nullptr;
    }
    return *this;
  }
  ZeroCounts(const ZeroCounts&) = delete;
  ZeroCounts& operator=(const ZeroCounts&) = delete;
  ~ZeroCounts() { release(); }

  bool empty() const { return p_ == nullptr; }
  uint64_t* data() { return p_; }
  uint64_t operator[](size_t i) const { return p_[i]; }
  uint64_t& operator[](size_t i) { return p_[i]; }
  void release() {
    if (p_ != nullptr) munmap(p_, bytes_);
    p_ = nullptr;
  }

 private:
  uint64_t* p_ = nullptr;
  size_t bytes_ = 0;
};

// An eligible layer competing in a selection.
struct Member {
  int layer;  // index into the structure
  const torch::Tensor* weight;
  int64_t units;
  int64_t unit_size;
  size_t group;
  uint32_t best = 0;  // key of its best unit
  UnitList taken;
};

// One group's competition: its k best units, ties going to the earlier unit (structure order,
// then unit order), as the stable sort of rank_units orders them.
struct Competition {
  std::string label;
  int64_t units = 0;
  int64_t k = 0;
  ZeroCounts high;     // keys per value of their high 16 bits (pass 1)
  uint32_t bin = 0;    // high 16 bits of the k-th best key
  uint64_t above = 0;  // keys above that bin
  bool exact = false;  // the k-th best key is known: kth, and how many equal to it go
  uint32_t kth = 0;
  uint64_t ties = 0;
};

// A unit whose key lies in its group's k-th best bin, kept until the bin is resolved.
struct Candidate {
  uint32_t key;
  uint32_t member;
  int64_t unit;
};

// Values of a key's high 16 bits: at most 0x7f80 (+inf).
constexpr size_t kHighBins = 0x8000;
// Candidates a group may keep before the k-th best key is found with one more pass instead.
constexpr uint64_t kMaxCandidates = uint64_t{1} << 17;
// Elements scored per call into LibTorch: a run (at most this and one unit more) stays below its
// grain size (32768), so that each call runs on the calling thread; a parallel region a call, in
// a loop this long, stalls whenever another process holds a core.
constexpr int64_t kRunElements = 32768 - 2 * 64;

// Scores a layer's units a run at a time and hands them over as keys: f(keys, first unit, count).
// The scores are unit_scores' bit for bit: |w| for single-weight units, and LibTorch's own abs and
// row sum otherwise. LibTorch reduces every row on its own (its threads split the rows, not a row,
// while a run has more rows than a row has elements), so a run of rows sums as the whole tensor
// does; runs are only cut for units of at most 64 elements, into runs of hundreds of rows.
class UnitScorer {
 public:
  template <typename F>
  void run(const Member& m, F&& f) {
    torch::NoGradGuard no_grad;
    const torch::Tensor& w = *m.weight;
    if (m.unit_size == 1 && w.scalar_type() == torch::kFloat32) {
      const auto* p = static_cast<const uint8_t*>(w.data_ptr());
      constexpr int64_t kRun = 4096;
      keys_.resize(kRun);
      for (int64_t u0 = 0; u0 < m.units; u0 += kRun) {
        const int64_t n = std::min(kRun, m.units - u0);
        for (int64_t i = 0; i < n; ++i) {
          uint32_t bits;
          std::memcpy(&bits, p + 4 * (u0 + i), sizeof bits);
          bits &= 0x7fffffffu;  // |w|, exactly
          keys_[static_cast<size_t>(i)] = bits > 0x7f800000u ? kNoKey : bits;
        }
        f(keys_.data(), u0, n);
      }
      return;
    }
    const int64_t total = m.units * m.unit_size;
    int64_t runs = 1;
    if (m.unit_size <= 64 && total > kRunElements) runs = (total + kRunElements - 1) / kRunElements;
    const auto rows = w.detach().view({m.units, m.unit_size});
    for (int64_t r = 0; r < runs; ++r) {
      const int64_t u0 = r * m.units / runs, u1 = (r + 1) * m.units / runs, n = u1 - u0;
      const auto part = rows.narrow(0, u0, n).to(torch::kFloat32);
      if (abs_.numel() < n * m.unit_size) abs_ = torch::empty({n * m.unit_size}, torch::kFloat32);
      auto a = abs_.narrow(0, 0, n * m.unit_size).view({n, m.unit_size});
      at::abs_out(a, part);
      torch::Tensor scores;
      if (m.unit_size == 1) {
        scores = a.view({n});
      } else {
        if (sums_.numel() < n) sums_ = torch::empty({n}, torch::kFloat32);
        scores = sums_.narrow(0, 0, n);
        at::sum_out(scores, a, {1});
      }
      const float* s = scores.data_ptr<float>();
      keys_.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) keys_[static_cast<size_t>(i)] = score_key(s[i]);
      f(keys_.data(), u0, n);
    }
  }

 private:
  torch::Tensor abs_, sums_;  // reused across runs
  std::vector<uint32_t> keys_;
};

bool fast_dtype(torch::ScalarType t) {
  return t == torch::kFloat32 || t == torch::kFloat64 || t == torch::kFloat16 ||
         t == torch::kBFloat16;
}

UnitSelection select_with_scratch(const std::vector<NamedTensor>& tensors,
                                  const Structure& structure, const LockOptions& options) {
  auto ranked = [&] {
    const Ranking ranking = rank_units(tensors, structure, options);
    return UnitSelection{plan_at(ranking, tensors, structure, options.ratio),
                         ranking.total_units()};
  };
  if (options.criterion == Criterion::kRandom) return ranked();
  // The members, with rank_units' checks in its order.
  const TensorIndex idx = index_tensors(tensors);
  const bool bn_units = uses_bn_units(options);
  std::vector<Member> members;
  std::vector<Competition> groups;
  std::map<std::string, size_t> group_of;
  bool fast = true;
  const std::vector<bool> eligible = eligible_layers(structure, options);
  for (size_t i = 0; i < structure.size(); ++i) {
    const LayerSpec& layer = structure[i];
    if (!eligible[i]) continue;
    if (bn_units != is_norm(layer.kind)) continue;
    const torch::Tensor& w = lookup(idx, layer.weight);
    Member m{static_cast<int>(i), &w, w.numel(), 1, 0, 0, {}};
    if (layer.kind == LayerKind::kConv2d) {
      if (w.dim() != 4)
        throw Error("conv layer '" + layer.name + "': weight has " + std::to_string(w.dim()) +
                    " dimensions, expected 4");
      m.units = w.size(0) * w.size(1);
      m.unit_size = w.size(2) * w.size(3);
    }
    // Anything unusual takes the ranking's path.
    fast = fast && w.is_contiguous() && fast_dtype(w.scalar_type()) && m.unit_size > 0 &&
           w.device().is_cpu();
    const std::string label = group_label(layer, options.scope);
    auto [it, inserted] = group_of.emplace(label, groups.size());
    if (inserted) {
      groups.emplace_back();
      groups.back().label = label;
    }
    m.group = it->second;
    groups[m.group].units += m.units;
    members.push_back(std::move(m));
  }
  if (groups.empty()) {
    throw UsageError(nothing_eligible(options, bn_units));
  }
  if (!fast) return ranked();
  if (!(options.ratio >= 0.0 && options.ratio <= 1.0)) {
    throw UsageError("ratio " + std::to_string(options.ratio) + ": must be within [0, 1]");
  }
  UnitSelection out;
  for (auto& g : groups) {
    g.k = units_at_ratio(g.units, options.ratio);
    out.candidates += g.units;
  }

  // Pass 1: each group's histogram of high key bits, each member's best key. A NaN score, whose
  // place in a sort is not an order, takes the ranking's path.
  UnitScorer scorer;
  bool nan = false;
  for (auto& m : members) {
    Competition& g = groups[m.group];
    if (g.k == 0) continue;
    if (g.high.empty()) g.high = ZeroCounts(kHighBins);
    uint64_t* high = g.high.data();
    scorer.run(m, [&](const uint32_t* keys, int64_t, int64_t n) {
      uint32_t best = m.best;
      for (int64_t i = 0; i < n && !nan; ++i) {
        nan = keys[i] == kNoKey;
        if (nan) break;
        ++high[keys[i] >> 16];
        best = std::max(best, keys[i]);
      }
      m.best = best;
    });
    if (nan) return ranked();
  }
  // The bin of each group's k-th best key; when that bin holds too many units to keep as
  // candidates, one more pass over it finds the key itself.
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    Competition& g = groups[gi];
    if (g.k == 0) continue;
    uint32_t bin = kHighBins - 1;
    while (g.above + g.high[bin] < static_cast<uint64_t>(g.k)) g.above += g.high[bin--];
    g.bin = bin;
    g.exact = g.high[bin] > kMaxCandidates;
    g.high.release();
    if (!g.exact) continue;
    ZeroCounts low(size_t{1} << 16);
    for (const auto& m : members) {
      if (m.group != gi || (m.best >> 16) < bin) continue;
      scorer.run(m, [&](const uint32_t* keys, int64_t, int64_t n) {
        for (int64_t i = 0; i < n; ++i) {
          if ((keys[i] >> 16) == bin) ++low[keys[i] & 0xffffu];
        }
      });
    }
    uint64_t above = g.above;
    uint32_t b = 0xffff;
    while (above + low[b] < static_cast<uint64_t>(g.k)) above += low[b--];
    g.kth = (bin << 16) | b;
    g.ties = static_cast<uint64_t>(g.k) - above;
  }

  // Pass 2: the units above each group's bin (or k-th key), and the candidates in the bin.
  std::vector<std::vector<Candidate>> candidates(groups.size());
  for (size_t mi = 0; mi < members.size(); ++mi) {
    Member& m = members[mi];
    Competition& g = groups[m.group];
    if (g.k == 0 || (m.best >> 16) < g.bin) continue;
    auto& cands = candidates[m.group];
    scorer.run(m, [&](const uint32_t* keys, int64_t u0, int64_t n) {
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t key = keys[i];
        if (g.exact) {
          if (key > g.kth || (key == g.kth && g.ties > 0)) {
            if (key == g.kth) --g.ties;
            m.taken.push_back(static_cast<uint64_t>(u0 + i));
          }
        } else if ((key >> 16) > g.bin) {
          m.taken.push_back(static_cast<uint64_t>(u0 + i));
        } else if ((key >> 16) == g.bin) {
          cands.push_back({key, static_cast<uint32_t>(mi), u0 + i});
        }
      }
    });
    m.taken.shrink_to_fit();
  }
  // The candidates each group still takes: best first, the earlier unit on equal keys; merged
  // into their members' lists.
  std::vector<std::vector<int64_t>> extra(members.size());
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    auto& cands = candidates[gi];
    std::stable_sort(cands.begin(), cands.end(),
                     [](const Candidate& a, const Candidate& b) { return a.key > b.key; });
    const uint64_t rest =
        groups[gi].exact ? 0 : static_cast<uint64_t>(groups[gi].k) - groups[gi].above;
    for (uint64_t c = 0; c < rest; ++c) extra[cands[c].member].push_back(cands[c].unit);
    std::vector<Candidate>().swap(cands);
  }
  for (size_t mi = 0; mi < members.size(); ++mi) {
    if (extra[mi].empty()) continue;
    std::sort(extra[mi].begin(), extra[mi].end());
    members[mi].taken =
        UnitList::merge(members[mi].taken, UnitList(extra[mi].begin(), extra[mi].end()));
    std::vector<int64_t>().swap(extra[mi]);
  }

  // The plan, in plan_at's order of entries: group by group, a layer's tensors where the ranking
  // reaches the layer's best unit (higher keys first, the earlier layer on equal keys).
  PlanBuilder plan(idx, structure, eligible);
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    std::vector<Member*> order;
    for (auto& m : members) {
      if (m.group == gi && !m.taken.empty()) order.push_back(&m);
    }
    std::stable_sort(order.begin(), order.end(),
                     [](const Member* a, const Member* b) { return a->best > b->best; });
    for (Member* m : order) plan.add(m->layer, std::move(m->taken));
  }
  out.plan = plan.finish();
  return out;
}

}  // namespace

UnitSelection select_units(const std::vector<NamedTensor>& tensors, const Structure& structure,
                           const LockOptions& options) {
  UnitSelection out = select_with_scratch(tensors, structure, options);
  // The scores and histograms are freed; the key's buffers come next.
  release_free_heap();
  return out;
}

}  // namespace corelocker
