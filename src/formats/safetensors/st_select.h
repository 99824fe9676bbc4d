// Internal to the safetensors lock pieces (src/formats/safetensors/st_*.cpp): the streaming top-k
// selection of units by l1 score (st_select.cpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "keyfile/key_file.h"

namespace corelocker::st_detail {

// A group of units (a layer, or with scope global all layers of one kind) gives up its k best:
// higher score first, on equal scores the earlier unit in file order. Pass 1 finds the rule that
// selects them without remembering which units they are; pass 2, which reads every unit again to
// write the locked file, applies it: every unit whose key is above `kth`, and the first `ties`
// units (in file order) whose key equals it (pass 2 counts `ties` down as it takes them).
struct Rule {
  uint64_t k = 0;  // 0: the group gives up nothing
  uint32_t kth = 0;
  uint64_t ties = 0;
};

// Finds the Rule of a stream of keys. Buffered: keys gather up to 2k, then a radix select finds
// the k-th best key, the k best stay (as values: which units they came from does not matter to
// the rule) and the k-th becomes a threshold that rejects most of the rest. Memory: 2k keys,
// whatever the number of units streamed; time: linear in the keys pushed (no comparison sort).
class KthKey {
 public:
  // Starts a new selection of k, keeping the buffer's memory from the previous one.
  void reset(uint64_t k) {
    k_ = k;
    n_ = 0;
    full_ = k == 0;  // nothing to select: every key is rejected
    threshold_ = k == 0 ? std::numeric_limits<uint32_t>::max() : 0;
    if (buf_.size() < limit() + kBlock) buf_.resize(limit() + kBlock);
  }
  // Starts with a guess at the k-th best key: keys below `key` are dropped from the start. If
  // fewer than k keys reach it, finish() says so (the caller then selects again without it);
  // otherwise the rule is the same as without it.
  void prime(uint32_t key) {
    if (key == 0 || k_ == 0) return;
    threshold_ = key - 1;
    full_ = true;
  }
  // Keys at or below floor() cannot change the rule: a scan may skip them (keys are never 0).
  uint32_t floor() const { return full_ ? threshold_ : 0; }
  void push_key(uint32_t key, uint32_t /*layer*/, uint64_t /*unit*/) {
    // Keys arrive in file order, so an equal key loses against the threshold.
    if (full_ && key <= threshold_) return;
    buf_[n_++] = key;
    if (n_ >= limit()) compact();
  }
  // Keys of kBlock units that follow each other, and the mask of those above floor() (taken
  // before the first of them).
  void push_block(const uint32_t* keys, unsigned mask, uint64_t /*unit*/) {
    for (; mask != 0; mask &= mask - 1) buf_[n_++] = keys[__builtin_ctz(mask)];
    if (n_ >= limit()) compact();
  }
  // The rule of the keys pushed since reset(); false when a guess from prime() was above the k-th
  // key. The selector is then empty.
  bool finish(Rule& rule) {
    std::vector<Rule> rules;
    if (!finish({k_}, rules)) return false;
    rule = rules.front();
    return true;
  }
  // The rules of the keys pushed since reset() for each of `ks` (each at most k, the k of reset()):
  // the buffer holds the k best keys, so it holds the best of any smaller count too, and the units
  // the rules take are nested (tiers). False as finish(Rule&).
  bool finish(const std::vector<uint64_t>& ks, std::vector<Rule>& rules) {
    rules.assign(ks.size(), Rule{});
    for (size_t i = 0; i < ks.size(); ++i) rules[i].k = ks[i];
    if (k_ == 0) return true;
    if (n_ < k_) return false;  // unprimed, every key was pushed, and k <= units
    for (size_t i = 0; i < ks.size(); ++i) {
      if (ks[i] == 0) continue;
      const auto [kth, above] = kth_key(ks[i]);
      rules[i].kth = kth;
      rules[i].ties = ks[i] - above;
    }
    n_ = 0;
    return true;
  }
  uint64_t k() const { return k_; }
  static constexpr size_t kBlock = 16;

 private:
  size_t limit() const { return static_cast<size_t>(2 * k_ + 1024); }
  // The k-th best key (1 <= k <= n_) and how many keys are above it: two counting passes, over
  // the high and then the low 16 bits.
  std::pair<uint32_t, uint64_t> kth_key(uint64_t k) {
    uint64_t above = 0;
    uint32_t prefix = 0;
    for (int shift : {16, 0}) {
      hist_.assign(1u << 16, 0);
      for (size_t i = 0; i < n_; ++i) {
        const uint32_t key = buf_[i];
        if (shift == 0 && (key >> 16) != prefix) continue;
        ++hist_[(key >> shift) & 0xffffu];
      }
      uint32_t bin = 0xffffu;
      while (above + hist_[bin] < k) above += hist_[bin--];  // k <= n_: stops at a bin
      prefix = shift == 16 ? bin : (prefix << 16) | bin;
    }
    return {prefix, above};
  }
  __attribute__((noinline)) void compact() {
    const auto [kth, above] = kth_key(k_);
    size_t kept = 0;
    for (size_t i = 0; i < n_; ++i) {
      if (buf_[i] > kth) buf_[kept++] = buf_[i];
    }
    // kept == above; then the earliest k - above of the keys equal to the k-th
    std::fill(buf_.begin() + static_cast<std::ptrdiff_t>(kept),
              buf_.begin() + static_cast<std::ptrdiff_t>(k_), kth);
    n_ = k_;
    threshold_ = kth;
    full_ = true;
  }
  uint64_t k_ = 0;
  std::vector<uint32_t> buf_;  // the first n_ are keys; room for a block past limit()
  size_t n_ = 0;
  std::vector<uint64_t> hist_;
  bool full_ = false;
  uint32_t threshold_ = 0;
};

// Applies a group's Rule to the units of one chunk of a tensor in pass 2: collects the selected
// units' indices (into `picked`, which has room for every unit of the chunk) and, when `keys` is
// given, their keys, and counts the rule's ties down (a global group's rule serves all its
// layers, in file order).
struct RuleSink {
  Rule& rule;
  uint64_t* picked = nullptr;
  uint32_t* keys = nullptr;
  size_t count = 0;
  uint32_t floor() const { return rule.kth == 0 ? 0 : rule.kth - 1; }
  void push_key(uint32_t key, uint32_t /*layer*/, uint64_t unit) {
    if (key > rule.kth || (key == rule.kth && rule.ties > 0)) {
      if (key == rule.kth) --rule.ties;
      if (keys != nullptr) keys[count] = key;
      picked[count++] = unit;
    }
  }
  // Whether a rule takes a unit of key `key` (with k > 0), counting its ties down: a unit a
  // larger rule took, evaluated in file order.
  static bool takes(Rule& r, uint32_t key) {
    if (r.k == 0) return false;
    if (key > r.kth) return true;
    if (key != r.kth || r.ties == 0) return false;
    --r.ties;
    return true;
  }
  void push_block(const uint32_t* block, unsigned mask, uint64_t unit) {  // as KthKey::push_block
    for (; mask != 0; mask &= mask - 1) {
      const int i = __builtin_ctz(mask);
      push_key(block[i], 0, unit + static_cast<uint64_t>(i));
    }
  }
};

// Keeps every key it is handed with its unit (a bn lock's BatchNorm channels, st_batchnorm.cpp).
struct UnitKeys {
  std::vector<std::pair<uint32_t, uint64_t>> keys;  // (key, unit)
  uint32_t floor() const { return 0; }
  void push_key(uint32_t key, uint32_t /*layer*/, uint64_t unit) { keys.emplace_back(key, unit); }
  void push_block(const uint32_t* k, unsigned mask, uint64_t unit) {
    for (; mask != 0; mask &= mask - 1) {
      const int i = __builtin_ctz(mask);
      keys.emplace_back(k[i], unit + static_cast<uint64_t>(i));
    }
  }
};

// Scores units [u0, u1) of a layer of dtype `d` at `p` (unit_size elements each) and hands their
// keys to `sel`: sum |w| of each unit, for single F32 weights straight from the bits (SSE2 where
// available). Instantiated for KthKey, RuleSink and UnitKeys (st_select.cpp).
template <typename Sink>
void score_chunk(DType d, const uint8_t* p, uint64_t u0, uint64_t u1, uint64_t unit_size,
                 uint32_t layer, Sink& sel);

// --criterion random: the key of a unit is a hash of the seed, its layer's name (`salt`, from
// layer_salt) and its index in the layer, never 0, so the k best keys of a group are k of its
// units drawn uniformly, and pass 2 finds the same ones again. The keys of units [u0, u1) of the
// layer go to `sel` as units [u0 - first, u1 - first) (`first`: where pass 2's chunk starts).
inline uint64_t mix64(uint64_t x) {  // SplitMix64's finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline uint64_t layer_salt(const std::string& name) {  // FNV-1a
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : name) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
  return h;
}
template <typename Sink>
void random_keys(uint64_t seed, uint64_t salt, uint64_t u0, uint64_t u1, uint64_t first,
                 uint32_t layer, Sink& sel) {
  const uint64_t base = mix64(seed ^ mix64(salt));
  for (uint64_t u = u0; u < u1; ++u) {
    const auto key = static_cast<uint32_t>(mix64(base + u) >> 32);
    sel.push_key(key == 0 ? 1u : key, layer, u - first);
  }
}

// A guess at the key of the k-th best of a layer's n units, a little below it, from a sample of
// the units (see st_select.cpp); false for small layers or large k.
bool sample_threshold(DType d, const uint8_t* p, uint64_t n, uint64_t unit_size, uint64_t k,
                      uint32_t& out);

}  // namespace corelocker::st_detail
