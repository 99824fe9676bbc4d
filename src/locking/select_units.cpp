// select_units: the plan of plan_at(rank_units(...)) without a full ranking: unit scores as order
// keys, a histogram per group to find each group's threshold, and only the units at the threshold
// sorted.
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <map>
#include <new>
#include <unordered_map>

#include "locking/selection.h"
#include "locking/selection_parts.h"
#include "util/error.h"
#include "util/memory.h"

namespace corelocker {
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
  const selection_parts::TensorIndex idx = selection_parts::index_tensors(tensors);
  const bool bn_units = selection_parts::uses_bn_units(options);
  std::vector<Member> members;
  std::vector<Competition> groups;
  std::map<std::string, size_t> group_of;
  bool fast = true;
  const std::vector<bool> eligible = selection_parts::eligible_layers(structure, options);
  for (size_t i = 0; i < structure.size(); ++i) {
    const LayerSpec& layer = structure[i];
    if (!eligible[i]) continue;
    if (bn_units != selection_parts::is_norm(layer.kind)) continue;
    const torch::Tensor& w = selection_parts::lookup(idx, layer.weight);
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
    const std::string label = selection_parts::group_label(layer, options.scope);
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
    throw UsageError(selection_parts::nothing_eligible(options, bn_units));
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
  selection_parts::PlanBuilder plan(idx, structure, eligible);
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
