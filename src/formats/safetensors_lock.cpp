#include "formats/safetensors_lock.h"

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#if defined(__SSE2__)
#include <emmintrin.h>
#include <fnmatch.h>
#endif

#include "util/checked.h"
#include "util/error.h"

namespace corelocker {
namespace {

constexpr uint64_t kRelease = uint64_t{64} << 20;  // bytes hashed between giving pages back
constexpr uint64_t kChunk = uint64_t{1}
                            << 20;  // bytes copied and written at a time (stays in cache)
constexpr uint64_t kWindow = uint64_t{8} << 20;  // bytes scored at a time while they are hashed
constexpr size_t kRing = 8;  // chunk buffers in flight between writer and hasher
constexpr uint64_t kKeepSampled = uint64_t{256} << 20;  // layers whose sampled pages stay mapped

unsigned resolve_threads(unsigned threads) {
  return threads > 0 ? threads : std::max(1u, std::thread::hardware_concurrency());
}

// The per-tensor digest of a fingerprint scheme.
class TensorHasher {
 public:
  explicit TensorHasher(StFingerprintScheme scheme) : v2_(scheme == StFingerprintScheme::kV2) {}
  void update(const uint8_t* p, uint64_t n) {
    if (v2_)
      b3_.update(p, n);
    else
      b2_.update(p, n);
  }
  Digest finish() { return v2_ ? b3_.finish() : b2_.finish(); }

 private:
  bool v2_;
  Hasher b2_;
  Blake3Hasher b3_;
};

// Hashes byte ranges, and runs other jobs (a copy and a scan), on a helper thread, in the order
// they are queued, so that a pass can score or write while the bytes it has handed over are
// hashed. Without a thread it works at once. What a job uses must stay valid until its ticket is
// done (wait). The destructor waits for every queued job, so jobs may use whatever is declared
// before the hasher.
class BackgroundHasher {
 public:
  explicit BackgroundHasher(bool threaded) {
    if (threaded) worker_ = std::thread([this] { run(); });
  }
  ~BackgroundHasher() {
    if (!worker_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }
  BackgroundHasher(const BackgroundHasher&) = delete;
  BackgroundHasher& operator=(const BackgroundHasher&) = delete;

  // Queues h.update(p, n); returns its ticket.
  uint64_t update(TensorHasher& h, const uint8_t* p, uint64_t n) {
    if (!worker_.joinable()) {
      h.update(p, n);
      return ++queued_;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back({&h, p, n, {}});
      ++queued_;
    }
    cv_.notify_all();
    return queued_;
  }
  // Queues fn(), which must not throw (a copy and a scan); returns its ticket.
  uint64_t call(std::function<void()> fn) {
    if (!worker_.joinable()) {
      fn();
      return ++queued_;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back({nullptr, nullptr, 0, std::move(fn)});
      ++queued_;
    }
    cv_.notify_all();
    return queued_;
  }
  // Blocks until the job of `ticket` (and every one before it) is done.
  void wait(uint64_t ticket) {
    if (!worker_.joinable()) return;
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_ >= ticket; });
  }
  void wait_all() { wait(queued_); }

 private:
  struct Job {
    TensorHasher* h;  // nullptr: call fn
    const uint8_t* p;
    uint64_t n;
    std::function<void()> fn;
  };
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stop_, and nothing left
      const Job job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      if (job.h != nullptr)
        job.h->update(job.p, job.n);  // neither libsodium's nor BLAKE3's update throws
      else
        job.fn();
      lock.lock();
      ++done_;
      cv_.notify_all();
    }
  }
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  uint64_t queued_ = 0;  // written by the caller's thread only
  uint64_t done_ = 0;
  bool stop_ = false;
};

// Buffers for chunks in flight between this thread and the helper (which may fill, pick and hash
// them): a buffer is taken again only once the last job that uses it is done.
// Declare it before the hasher, whose destructor waits for the hashes that read the buffers.
class ChunkRing {
 public:
  ChunkRing() : bufs_(kRing), tickets_(kRing, 0) {}
  // The slot of a buffer of n bytes that no job queued on `hasher` still uses.
  size_t take(BackgroundHasher& hasher, uint64_t n) {
    next_ = (next_ + 1) % kRing;
    hasher.wait(tickets_[next_]);
    bufs_[next_].resize(n);
    return next_;
  }
  uint8_t* data(size_t slot) { return bufs_[slot].data(); }
  // Records the ticket of the last job that uses the buffer of `slot`.
  void hand_over(size_t slot, uint64_t ticket) { tickets_[slot] = ticket; }

 private:
  std::vector<std::vector<uint8_t>> bufs_;
  std::vector<uint64_t> tickets_;
  size_t next_ = 0;
};

// ---------------------------------------------------------------- element conversion
float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

DType key_dtype(const std::string& st) {
  if (st == "F32") return DType::kF32;
  if (st == "F64") return DType::kF64;
  if (st == "F16") return DType::kF16;
  if (st == "BF16") return DType::kBF16;
  throw Error("dtype " + st + " has no key dtype");
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// ---------------------------------------------------------------- hashing
// The digest of a tensor's bytes, giving the pages back as it goes.
Digest tensor_digest(const StFile& f, const StTensor& t, StFingerprintScheme scheme) {
  TensorHasher h(scheme);
  const uint8_t* p = f.tensor_data(t);
  for (uint64_t at = 0; at < t.nbytes(); at += kRelease) {
    const uint64_t n = std::min(kRelease, t.nbytes() - at);
    h.update(p + at, n);
    f.map.release(f.header.data_start + t.begin + at, n);
  }
  return h.finish();
}

Digest combine(const StHeader& header, const std::map<std::string, Digest>& digests,
               StFingerprintScheme scheme) {
  std::vector<const StTensor*> order;
  for (const auto& t : header.tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const StTensor* a, const StTensor* b) { return a->name < b->name; });
  Hasher h;
  h.update_str(scheme == StFingerprintScheme::kV1 ? "corelocker-safetensors-fingerprint-v1"
                                                  : "corelocker-safetensors-fingerprint-v2");
  h.update_u64(order.size());
  for (const StTensor* t : order) {
    h.update_str(t->name);
    h.update_str(t->dtype);
    h.update_u64(t->shape.size());
    for (auto d : t->shape) h.update_u64(d);
    h.update_u64(t->nbytes());
    const Digest& d = digests.at(t->name);
    h.update(d.data(), d.size());
  }
  std::vector<std::pair<std::string, std::string>> meta;
  for (const auto& [k, v] : header.metadata) {
    if (k.rfind(kStLockPrefix, 0) != 0) meta.emplace_back(k, v);
  }
  h.update_u64(meta.size());
  for (const auto& [k, v] : meta) {
    h.update_str(k);
    h.update_str(v);
  }
  return h.finish();
}

// ---------------------------------------------------------------- top-k selection
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

// Maps a float to an unsigned key with the same order (for the scores here: +0 <= s <= +inf, and
// -inf for NaN sums; -0.0 sorts just below +0.0). Never 0 for these scores.
uint32_t order_key(float s) {
  uint32_t bits;
  std::memcpy(&bits, &s, 4);
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}

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
    rule = Rule{};
    rule.k = k_;
    if (k_ == 0) return true;
    if (n_ < k_) return false;  // unprimed, every key was pushed, and k <= units
    const auto [kth, above] = kth_key();
    rule.kth = kth;
    rule.ties = k_ - above;
    n_ = 0;
    return true;
  }
  uint64_t k() const { return k_; }
  static constexpr size_t kBlock = 16;

 private:
  size_t limit() const { return static_cast<size_t>(2 * k_ + 1024); }
  // The k-th best key (1 <= k <= n_) and how many keys are above it: two counting passes, over
  // the high and then the low 16 bits.
  std::pair<uint32_t, uint64_t> kth_key() {
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
      while (above + hist_[bin] < k_) above += hist_[bin--];  // k_ <= n_: stops at a bin
      prefix = shift == 16 ? bin : (prefix << 16) | bin;
    }
    return {prefix, above};
  }
  __attribute__((noinline)) void compact() {
    const auto [kth, above] = kth_key();
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
// units' indices (into `picked`, which has room for every unit of the chunk) and counts the rule's
// ties down (a global group's rule serves all its layers, in file order).
struct RuleSink {
  Rule& rule;
  uint64_t* picked = nullptr;
  size_t count = 0;
  uint32_t floor() const { return rule.kth == 0 ? 0 : rule.kth - 1; }
  void push_key(uint32_t key, uint32_t /*layer*/, uint64_t unit) {
    if (key > rule.kth) {
      picked[count++] = unit;
    } else if (key == rule.kth && rule.ties > 0) {
      --rule.ties;
      picked[count++] = unit;
    }
  }
  void push_block(const uint32_t* keys, unsigned mask, uint64_t unit) {  // as KthKey::push_block
    for (; mask != 0; mask &= mask - 1) {
      const int i = __builtin_ctz(mask);
      push_key(keys[i], 0, unit + static_cast<uint64_t>(i));
    }
  }
};

// The units of the chunk in a ring slot that its group's rule picks (chunk-relative indices).
struct Picked {
  std::vector<uint64_t> units;
  size_t count = 0;
};

// Scores units [u0, u1) of a layer (unit_size elements each, loaded as float by `load`) and
// hands their keys to `sel` (a KthKey, a RuleSink, or anything with floor(), push_key() and
// push_block()).
template <typename Sink, typename Load>
void score_units(const uint8_t* p, uint64_t u0, uint64_t u1, uint64_t unit_size, uint32_t layer,
                 Sink& sel, Load load) {
  for (uint64_t u = u0; u < u1; ++u) {
    float s = 0.0f;
    for (uint64_t e = u * unit_size; e < (u + 1) * unit_size; ++e) s += std::fabs(load(p, e));
    if (std::isnan(s))
      s = -std::numeric_limits<float>::infinity();  // never preferred, still ordered
    sel.push_key(order_key(s), layer, u);
  }
}

// Linear layers (F32, one weight a unit): the key of |w| comes straight from the bits, and with
// SSE2 sixteen at a time, handing over only the keys above the sink's floor (the threshold in
// pass 1, the rule's k-th key in pass 2: some 5% of the weights at ratio 0.05).
uint32_t f32_abs_key(const uint8_t* b) {
  uint32_t bits;
  std::memcpy(&bits, b, 4);
  bits &= 0x7fffffffu;
  return bits > 0x7f800000u ? 0x007fffffu
                            : bits | 0x80000000u;  // order_key(|w|), or of -inf for NaN
}

template <typename Sink>
void score_f32_weights(const uint8_t* p, uint64_t u0, uint64_t u1, uint32_t layer, Sink& sel) {
  uint64_t u = u0;
#if defined(__SSE2__)
  // In the signed domain of key ^ 0x80000000: |w|'s bits, or 0x807fffff (negative) for NaN.
  const __m128i abs_mask = _mm_set1_epi32(0x7fffffff), inf = _mm_set1_epi32(0x7f800000);
  const __m128i nan_flipped = _mm_set1_epi32(static_cast<int32_t>(0x807fffffu));
  for (; u + 16 <= u1; u += 16) {
    const __m128i floor = _mm_set1_epi32(static_cast<int32_t>(sel.floor() ^ 0x80000000u));
    static_assert(KthKey::kBlock == 16, "one block: four SSE2 vectors");
    alignas(16) uint32_t flipped[16];
    unsigned mask = 0;
    for (int q = 0; q < 4; ++q) {
      const __m128i v = _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(
                                          p + 4 * (u + 4 * static_cast<uint64_t>(q)))),
                                      abs_mask);
      const __m128i nan = _mm_cmpgt_epi32(v, inf);
      const __m128i f = _mm_or_si128(_mm_andnot_si128(nan, v), _mm_and_si128(nan, nan_flipped));
      _mm_store_si128(reinterpret_cast<__m128i*>(flipped + 4 * q), f);
      mask |= static_cast<unsigned>(_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(f, floor))))
              << (4 * q);
    }
    if (mask == 0) continue;
    for (uint32_t& k : flipped) k ^= 0x80000000u;  // the keys
    sel.push_block(flipped, mask, u);
  }
#endif
  for (; u < u1; ++u) sel.push_key(f32_abs_key(p + 4 * u), layer, u);
}

template <typename Sink>
void score_chunk(DType d, const uint8_t* p, uint64_t u0, uint64_t u1, uint64_t unit_size,
                 uint32_t layer, Sink& sel) {
  switch (d) {
    case DType::kF32:
      if (unit_size == 1) return score_f32_weights(p, u0, u1, layer, sel);
      return score_units(p, u0, u1, unit_size, layer, sel, [](const uint8_t* b, uint64_t i) {
        float f;
        std::memcpy(&f, b + 4 * i, 4);
        return f;
      });
    case DType::kF64:
      return score_units(p, u0, u1, unit_size, layer, sel, [](const uint8_t* b, uint64_t i) {
        double f;
        std::memcpy(&f, b + 8 * i, 8);
        return static_cast<float>(f);
      });
    case DType::kF16:
      return score_units(p, u0, u1, unit_size, layer, sel, [](const uint8_t* b, uint64_t i) {
        uint16_t h;
        std::memcpy(&h, b + 2 * i, 2);
        return f16_to_f32(h);
      });
    case DType::kBF16:
      return score_units(p, u0, u1, unit_size, layer, sel, [](const uint8_t* b, uint64_t i) {
        uint16_t h;
        std::memcpy(&h, b + 2 * i, 2);
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        return f;
      });
  }
}

// A guess at the key of the k-th best of a layer's n units, a little below it: the key at a
// conservative rank of 65,536 units spread evenly over the layer (the expected count plus four
// standard deviations). Priming the layer's KthKey with it drops about 95% of the keys that
// would otherwise be buffered and compacted. Nothing for small layers or large k (no gain).
constexpr uint64_t kSample = 65536;
struct KeySample {
  std::vector<uint32_t> keys;
  uint32_t floor() const { return 0; }
  void push_key(uint32_t key, uint32_t, uint64_t) { keys.push_back(key); }
  void push_block(const uint32_t* k, unsigned mask, uint64_t) {
    for (; mask != 0; mask &= mask - 1) keys.push_back(k[__builtin_ctz(mask)]);
  }
};
bool sample_threshold(DType d, const uint8_t* p, uint64_t n, uint64_t unit_size, uint64_t k,
                      uint32_t& out) {
  if (k == 0 || n < 8 * kSample) return false;
  const double expect = double(kSample) * double(k) / double(n);
  const auto rank = static_cast<uint64_t>(
      std::ceil(expect + 4.0 * std::sqrt(expect) + 8.0));  // 1-based, best first
  if (rank >= kSample / 2) return false;
  KeySample sample;
  sample.keys.reserve(kSample);
  for (uint64_t i = 0; i < kSample; ++i) {
    const uint64_t u = i * (n / kSample) + i * (n % kSample) / kSample;  // floor(i * n / kSample)
    score_chunk(d, p, u, u + 1, unit_size, 0, sample);
  }
  auto nth = sample.keys.begin() + static_cast<std::ptrdiff_t>(rank - 1);
  std::nth_element(sample.keys.begin(), nth, sample.keys.end(), std::greater<uint32_t>());
  out = *nth;
  return true;
}

uint64_t units_at_ratio(uint64_t n, double ratio) {
  return std::min<uint64_t>(n, static_cast<uint64_t>(std::llround(ratio * static_cast<double>(n))));
}

// ---------------------------------------------------------------- header splice
// The lock's metadata is spliced into the original header text; these find where.
size_t skip_ws(const std::string& s, size_t i) {
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  return i;
}
size_t skip_string(const std::string& s, size_t i) {  // s[i] == '"'
  ++i;
  while (i < s.size() && s[i] != '"') i += s[i] == '\\' ? 2 : 1;
  return i + 1;
}
size_t skip_value(const std::string& s, size_t i) {
  if (s[i] == '"') return skip_string(s, i);
  if (s[i] == '{' || s[i] == '[') {
    int depth = 0;
    do {
      if (s[i] == '"') {
        i = skip_string(s, i);
        continue;
      }
      if (s[i] == '{' || s[i] == '[') ++depth;
      if (s[i] == '}' || s[i] == ']') --depth;
      ++i;
    } while (depth > 0 && i < s.size());
    return i;
  }
  while (i < s.size() && std::strchr(",}] \t\r\n", s[i]) == nullptr) ++i;
  return i;
}

struct SplicePoint {
  size_t at = 0;             // insert here
  bool in_metadata = false;  // inside an existing __metadata__ object
  bool object_empty = true;  // the object we insert into has no entries yet
};

// `text` is JSON the parser accepted.
SplicePoint find_splice_point(const std::string& text) {
  SplicePoint top;
  size_t i = skip_ws(text, 0);
  top.at = i + 1;  // just after the top-level '{'
  i = skip_ws(text, i + 1);
  top.object_empty = text[i] == '}';
  while (i < text.size() && text[i] != '}') {
    const size_t key_end = skip_string(text, i);
    const std::string key = nlohmann::json::parse(text.substr(i, key_end - i)).get<std::string>();
    i = skip_ws(text, key_end) + 1;  // past ':'
    i = skip_ws(text, i);
    if (key == "__metadata__") {
      SplicePoint m;
      m.at = i + 1;
      m.in_metadata = true;
      m.object_empty = text[skip_ws(text, i + 1)] == '}';
      return m;
    }
    i = skip_ws(text, skip_value(text, i));
    if (i < text.size() && text[i] == ',') i = skip_ws(text, i + 1);
  }
  return top;
}

std::string fixed20(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%020" PRIu64, v);
  return buf;
}

uint64_t parse_fixed20(const std::string& s, const std::string& what) {
  if (s.size() != 20 || s.find_first_not_of("0123456789") != std::string::npos) {
    throw FormatError(what + ": expected 20 digits, found '" + s + "'");
  }
  return std::stoull(s);
}

std::string json_str(const std::string& s) { return nlohmann::json(s).dump(); }

// The locked header: the original text with the lock entries spliced in and space padding so
// that the data stays 8-aligned. Entry values are fixed-width so the text's length is known
// before the splice entry that records it is written.
std::string locked_header_text(const StHeader& h, const KeyFile& key, const std::string& scope_text,
                               double ratio) {
  const SplicePoint sp = find_splice_point(h.header_text);
  const std::string& orig = h.header_text;
  char ratio_buf[64];
  std::snprintf(ratio_buf, sizeof ratio_buf, "%.17g", ratio);
  std::vector<std::pair<std::string, std::string>> entries = {
      {"corelocker.tool_version", CORELOCKER_VERSION},
      {"corelocker.key_id", to_hex(key.header.key_id.data(), key.header.key_id.size())},
      {"corelocker.criterion", "l1"},
      {"corelocker.scope", scope_text},
      {"corelocker.ratio", ratio_buf},
      {"corelocker.original_fingerprint", to_hex(key.header.original_fingerprint)},
      {"corelocker.fingerprint_scheme", std::to_string(static_cast<int>(kStFingerprintCurrent))},
      {"corelocker.original_header_blake2b", to_hex(hash_bytes(orig.data(), orig.size()))},
      {"corelocker.original_header_bytes", fixed20(orig.size())},
      {"corelocker.splice", fixed20(0) + "+" + fixed20(0)},
  };
  auto render = [&] {
    std::string t;
    for (const auto& [k, v] : entries)
      t += (t.empty() ? "" : ",") + json_str(k) + ":" + json_str(v);
    if (!sp.in_metadata) t = "\"__metadata__\":{" + t + "}";
    if (!sp.object_empty) t += ",";
    return t;
  };
  const size_t length = render().size();  // fixed width: the final values do not change it
  entries.back().second = fixed20(sp.at) + "+" + fixed20(length);
  const std::string insert = render();
  std::string out = orig.substr(0, sp.at) + insert + orig.substr(sp.at);
  while ((8 + out.size()) % 8 != 0) out += ' ';
  return out;
}

std::string meta_or_throw(const StHeader& h, const std::string& key, const std::string& what) {
  auto it = h.metadata.find(key);
  if (it == h.metadata.end()) throw FormatError(what + ": lock metadata '" + key + "' is missing");
  return it->second;
}

// The original header text of a locked file (checked against the hash recorded at lock time).
std::string original_header_text(const StHeader& h, const std::string& what) {
  const std::string splice = meta_or_throw(h, "corelocker.splice", what);
  if (splice.size() != 41 || splice[20] != '+')
    throw FormatError(what + ": corelocker.splice is malformed: '" + splice + "'");
  const uint64_t at = parse_fixed20(splice.substr(0, 20), what + ": corelocker.splice");
  const uint64_t length = parse_fixed20(splice.substr(21), what + ": corelocker.splice");
  const uint64_t orig_size =
      parse_fixed20(meta_or_throw(h, "corelocker.original_header_bytes", what),
                    what + ": corelocker.original_header_bytes");
  const std::string& text = h.header_text;
  if (at > orig_size || length > text.size() || at > text.size() - length ||
      orig_size - at > text.size() - at - length) {
    throw FormatError(what + ": corelocker.splice " + splice + " does not fit a header of " +
                      std::to_string(text.size()) + " bytes");
  }
  std::string orig = text.substr(0, at) + text.substr(at + length, orig_size - at);
  const std::string padding = text.substr(at + length + (orig_size - at));
  const std::string expected = meta_or_throw(h, "corelocker.original_header_blake2b", what);
  if (padding.find_first_not_of(' ') != std::string::npos ||
      to_hex(hash_bytes(orig.data(), orig.size())) != expected) {
    throw FormatError(
        what + ": the header was changed after locking (the original header no longer hashes to " +
        expected.substr(0, 16) + "...); it cannot be restored byte for byte");
  }
  return orig;
}

}  // namespace

StFingerprintScheme st_fingerprint_scheme(const StHeader& header) {
  if (header.metadata.count("corelocker.key_id") == 0) return kStFingerprintCurrent;
  auto it = header.metadata.find("corelocker.fingerprint_scheme");
  if (it == header.metadata.end()) return StFingerprintScheme::kV1;  // locked before scheme 2
  if (it->second == "2") return StFingerprintScheme::kV2;
  throw FormatError("corelocker.fingerprint_scheme '" + it->second +
                    "': this build knows 2 (and 1, when the entry is absent)");
}

Digest st_fingerprint(const StFile& file, unsigned threads) {
  return st_fingerprint(file, threads, st_fingerprint_scheme(file.header));
}

Digest st_fingerprint(const StFile& file, unsigned threads, StFingerprintScheme scheme) {
  // Each tensor is one hash stream; the threads take tensors in file order.
  const auto& tensors = file.header.tensors;
  std::vector<Digest> digests(tensors.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < tensors.size(); i = next++)
      digests[i] = tensor_digest(file, tensors[i], scheme);
  };
  const size_t helpers =
      std::min<size_t>(resolve_threads(threads), tensors.size()) - (tensors.empty() ? 0 : 1);
  std::vector<std::thread> pool;
  for (size_t i = 0; i < helpers; ++i) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  std::map<std::string, Digest> by_name;
  for (size_t i = 0; i < tensors.size(); ++i) by_name[tensors[i].name] = digests[i];
  return combine(file.header, by_name, scheme);
}

std::vector<StLayer> st_layers(const StHeader& header, bool include_io) {
  std::vector<StLayer> layers;
  for (const auto& t : header.tensors) {
    if (!st_is_float(t.dtype) || !ends_with(t.name, "weight") || t.numel() == 0) continue;
    if (t.shape.size() == 4) {
      layers.push_back(
          {t.name, StLayerKind::kConv, t.shape[2] * t.shape[3], t.shape[0] * t.shape[1], true});
    } else if (t.shape.size() == 2) {
      layers.push_back({t.name, StLayerKind::kLinear, 1, t.numel(), true});
    }
  }
  if (include_io || layers.empty()) return layers;
  auto first_of = [&](StLayerKind k) {
    for (size_t i = 0; i < layers.size(); ++i)
      if (layers[i].kind == k) return static_cast<std::ptrdiff_t>(i);
    return std::ptrdiff_t{-1};
  };
  auto last_of = [&](StLayerKind k) {
    for (size_t i = layers.size(); i-- > 0;)
      if (layers[i].kind == k) return static_cast<std::ptrdiff_t>(i);
    return std::ptrdiff_t{-1};
  };
  std::ptrdiff_t first = first_of(StLayerKind::kConv);
  if (first < 0) first = first_of(StLayerKind::kLinear);
  std::ptrdiff_t last = last_of(StLayerKind::kLinear);
  if (last < 0) last = last_of(StLayerKind::kConv);
  layers[static_cast<size_t>(first)].eligible = false;
  layers[static_cast<size_t>(last)].eligible = false;
  return layers;
}

std::vector<std::pair<std::string, std::string>> st_lock_metadata(const StHeader& header) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [k, v] : header.metadata) {
    if (k.rfind(kStLockPrefix, 0) == 0) out.emplace_back(k, v);
  }
  return out;
}

StLockOutcome lock_safetensors(const std::string& in, const std::string& out,
                               const StLockOptions& options,
                               const std::function<void(const KeyFile&)>& before_commit) {
  if (!(options.ratio >= 0.0 && options.ratio <= 1.0)) {
    throw UsageError("ratio " + std::to_string(options.ratio) + " is outside [0, 1]");
  }
  const StFile file(in);
  const StHeader& h = file.header;
  const std::string what = "safetensors file '" + in + "'";
  if (h.metadata.count("corelocker.key_id") != 0) {
    throw UsageError(what + " is already locked (key id " + h.metadata.at("corelocker.key_id") +
                     "); unlock it first");
  }
  StLockOutcome outcome;
  std::vector<StLayer> layers = st_layers(h, options.include_io);
  std::vector<bool> kept(layers.size(), false);
  for (const auto& pattern : options.keep) {
    bool matched = false;
    for (size_t i = 0; i < layers.size(); ++i) {
      if (::fnmatch(pattern.c_str(), layers[i].tensor.c_str(), 0) != 0) continue;
      matched = true;
      kept[i] = true;
    }
    if (!matched) {
      throw UsageError("--keep '" + pattern + "' matches no layer of " + what + " (" +
                       std::to_string(layers.size()) +
                       " 4-D or 2-D float '*weight' tensors; `inspect` lists them)");
    }
  }
  std::map<std::string, size_t> layer_of;  // tensor name -> index into layers
  for (size_t i = 0; i < layers.size(); ++i) {
    if (kept[i]) {
      layers[i].eligible = false;
      outcome.kept.push_back(layers[i].tensor);
    } else if (layers[i].eligible) {
      layer_of[layers[i].tensor] = i;
    } else {
      outcome.excluded.push_back(layers[i].tensor);
    }
  }
  if (layer_of.empty()) {
    throw UsageError(what + ": no eligible layer (" + std::to_string(layers.size()) +
                     " 4-D or 2-D float '*weight' tensors" +
                     (options.include_io ? "" : ", first and last excluded") +
                     (options.keep.empty()
                          ? ""
                          : ", --keep left " + std::to_string(outcome.kept.size()) + " alone") +
                     ")");
  }

  // groups: one per layer (scope layer) or one per kind of unit (scope global)
  std::vector<int> group_of(layers.size(), -1);
  std::vector<uint64_t> group_units;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!layers[i].eligible) continue;
    if (options.scope == Scope::kLayer) {
      group_of[i] = static_cast<int>(group_units.size());
      group_units.push_back(0);
    } else {
      group_of[i] = layers[i].kind == StLayerKind::kConv ? 0 : 1;
      if (group_units.empty()) group_units.assign(2, 0);
    }
    group_units[static_cast<size_t>(group_of[i])] += layers[i].units;
    outcome.candidates += layers[i].units;
  }
  // Scope layer: one selector reused layer after layer; scope global: one per kind of unit.
  std::vector<KthKey> selectors(options.scope == Scope::kLayer ? 1 : 2);
  if (options.scope == Scope::kGlobal) {
    for (size_t g = 0; g < 2; ++g)
      selectors[g].reset(units_at_ratio(group_units[g], options.ratio));
  }
  // by layer, or by group; declared before the helper, whose jobs count their ties down
  std::vector<Rule> rules(options.scope == Scope::kLayer ? layers.size() : 2);
  auto rule_of = [&](size_t layer) -> Rule& {
    return rules[options.scope == Scope::kLayer ? layer : static_cast<size_t>(group_of[layer])];
  };
  // The hashers, the copy buffers and the map outlive the helper thread that may still read them
  // when an exception unwinds (its destructor waits for what is queued).
  const StFingerprintScheme scheme = kStFingerprintCurrent;
  std::deque<TensorHasher> hashers;
  ChunkRing ring;
  std::vector<Picked> picked(kRing);  // by ring slot (the helper's, then this thread's)
  BackgroundHasher background(resolve_threads(options.threads) >= 2);

  // pass 1: hash every tensor, score every unit of the eligible layers (hashing on the helper)
  std::map<std::string, Digest> digests;
  for (const auto& t : h.tensors) {
    if (st_is_float(t.dtype)) outcome.elements += t.numel();
    auto li = layer_of.find(t.name);
    if (li == layer_of.end()) {
      digests[t.name] = tensor_digest(file, t, scheme);
      continue;
    }
    const StLayer& layer = layers[li->second];
    KthKey& sel =
        selectors[options.scope == Scope::kLayer ? 0 : static_cast<size_t>(group_of[li->second])];
    const uint32_t lid = static_cast<uint32_t>(li->second);
    const DType dt = key_dtype(t.dtype);
    const uint64_t unit_bytes = layer.unit_size * dtype_size(dt);
    const uint64_t window_units = std::max<uint64_t>(1, kWindow / unit_bytes);
    const uint8_t* p = file.tensor_data(t);
    if (options.scope == Scope::kLayer) {
      sel.reset(units_at_ratio(layer.units, options.ratio));
      uint32_t guess = 0;
      if (sample_threshold(dt, p, layer.units, layer.unit_size, sel.k(), guess)) {
        sel.prime(guess);
        // The sample touched pages all over the layer. A large layer gives them back (the windows
        // map them again); a smaller one keeps them for its windows, which give them back as they
        // pass (1 GiB of 64 MiB layers: 0.04 s less, at most one layer more resident).
        if (t.nbytes() > kKeepSampled) file.map.release(h.data_start + t.begin, t.nbytes());
      }
    }
    TensorHasher& hasher = hashers.emplace_back(scheme);
    for (uint64_t u0 = 0; u0 < layer.units; u0 += window_units) {
      const uint64_t u1 = std::min(layer.units, u0 + window_units);
      const uint64_t n = (u1 - u0) * unit_bytes;
      const uint64_t ticket = background.update(hasher, p + u0 * unit_bytes, n);
      score_chunk(dt, p, u0, u1, layer.unit_size, lid, sel);
      background.wait(ticket);
      file.map.release(h.data_start + t.begin + u0 * unit_bytes, n);
    }
    digests[t.name] = hasher.finish();
    if (options.scope == Scope::kLayer && !sel.finish(rule_of(li->second))) {
      // the guess was above the k-th key: select again without it
      sel.reset(sel.k());
      score_chunk(dt, p, 0, layer.units, layer.unit_size, lid, sel);
      file.map.release(h.data_start + t.begin, t.nbytes());
      if (!sel.finish(rule_of(li->second)))
        throw Error("safetensors lock: selection of '" + t.name + "' failed");
    }
  }
  if (options.scope == Scope::kGlobal) {
    for (size_t g = 0; g < 2; ++g) selectors[g].finish(rules[g]);
  }

  // the key's header (the locked fingerprint follows after pass 2)
  KeyFile& key = outcome.key;
  key.header.original_fingerprint = combine(h, digests, scheme);
  random_bytes(key.header.key_id.data(), key.header.key_id.size());
  key.header.criterion = Criterion::kL1;
  key.header.scope = options.scope;
  key.header.fill = Fill::kZero;
  key.header.include_io = options.include_io;
  key.header.ratio = options.ratio;
  key.header.ratio_after = 0.0;

  // pass 2: the locked file; the rules pick the units again as each chunk is copied
  const std::string header_text =
      locked_header_text(h, key, to_string(options.scope), options.ratio);
  StWriter writer(out, header_text, h.data_size);
  for (const auto& t : h.tensors) {
    const uint8_t* p = file.tensor_data(t);
    auto li = layer_of.find(t.name);
    if (li == layer_of.end() || rule_of(li->second).k == 0) {  // unchanged: its digest is pass 1's
      for (uint64_t at = 0; at < t.nbytes(); at += kRelease) {
        const uint64_t n = std::min(kRelease, t.nbytes() - at);
        writer.write(p + at, n);
        file.map.release(h.data_start + t.begin + at, n);
      }
      continue;
    }
    const StLayer& layer = layers[li->second];
    Rule& rule = rule_of(li->second);
    const DType dt = key_dtype(t.dtype);
    const uint64_t unit_bytes = layer.unit_size * dtype_size(dt);
    KeyEntry entry;
    entry.tensor = t.name;
    entry.dtype = dt;
    entry.shape = t.shape;
    entry.unit_size = layer.unit_size;
    if (options.scope == Scope::kLayer) {  // exactly k units
      entry.units.reserve(rule.k);
      entry.values.reserve(checked_mul(rule.k, unit_bytes, "key entry '" + t.name + "'"));
    }
    const uint64_t chunk_units = std::max<uint64_t>(1, kChunk / unit_bytes);
    TensorHasher& hasher = hashers.emplace_back(scheme);
    // The helper copies chunk i + 1 out of the map and picks its units (in chunk order, so ties
    // go to the earliest) while this thread moves the picked values of chunk i into the key,
    // zeroes them and writes the chunk; then the helper hashes chunk i.
    auto queue_pick = [&](uint64_t u0, size_t& slot) {
      const uint64_t units = std::min(layer.units, u0 + chunk_units) - u0;
      slot = ring.take(background, units * unit_bytes);
      picked[slot].units.resize(chunk_units);
      // by value, or declared before the helper: a job may still run while an exception unwinds
      const uint64_t ticket =
          background.call([&ring, &picked, &rule, slot, units, dt, unit_bytes,
                           unit_size = layer.unit_size, src = p + u0 * unit_bytes] {
            uint8_t* b = ring.data(slot);
            std::memcpy(b, src, units * unit_bytes);
            RuleSink sink{rule, picked[slot].units.data()};
            score_chunk(dt, b, 0, units, unit_size, 0, sink);
            picked[slot].count = sink.count;
          });
      ring.hand_over(slot, ticket);
      return ticket;
    };
    size_t next_slot = 0;
    uint64_t next_pick = queue_pick(0, next_slot);
    for (uint64_t u0 = 0; u0 < layer.units; u0 += chunk_units) {
      const uint64_t u1 = std::min(layer.units, u0 + chunk_units);
      const uint64_t n = (u1 - u0) * unit_bytes;
      const size_t slot = next_slot;
      uint8_t* b = ring.data(slot);
      background.wait(next_pick);
      file.map.release(h.data_start + t.begin + u0 * unit_bytes, n);
      if (u1 < layer.units) next_pick = queue_pick(u1, next_slot);
      const Picked& got = picked[slot];
      const size_t old_bytes = entry.values.size();
      entry.values.resize(old_bytes + got.count * unit_bytes);
      uint8_t* v = entry.values.data() + old_bytes;
      for (size_t i = 0; i < got.count; ++i, v += unit_bytes) {
        entry.units.push_back(u0 + got.units[i]);
        uint8_t* up = b + got.units[i] * unit_bytes;
        if (unit_bytes == 4) {  // single F32 weights: plain moves instead of calls
          std::memcpy(v, up, 4);
          std::memset(up, 0, 4);
        } else {
          std::memcpy(v, up, unit_bytes);
          std::memset(up, 0, unit_bytes);  // +0.0 in every float dtype
        }
      }
      ring.hand_over(slot, background.update(hasher, b, n));
      writer.write(b, n);
    }
    background.wait_all();
    digests[t.name] = hasher.finish();
    if (entry.units.empty()) continue;  // a layer of a global group that gave up nothing
    outcome.units += entry.units.size();
    outcome.values += entry.units.size() * layer.unit_size;
    key.entries.push_back(std::move(entry));
  }
  key.header.locked_fingerprint = combine(h, digests, scheme);
  key.header.units = outcome.units;
  // The locked file's flush to disk (0.3 s for 1 GiB here) runs beside the key's writing.
  std::exception_ptr sync_error;
  std::thread syncer;
  if (resolve_threads(options.threads) >= 2) {
    syncer = std::thread([&] {
      try {
        writer.sync();
      } catch (...) {
        sync_error = std::current_exception();
      }
    });
  }
  try {
    before_commit(key);
  } catch (...) {
    if (syncer.joinable()) syncer.join();
    throw;
  }
  if (syncer.joinable()) syncer.join();
  if (sync_error) std::rethrow_exception(sync_error);
  writer.commit();
  return outcome;
}

StUnlockOutcome unlock_safetensors(const std::string& in, const std::string& out,
                                   const KeyFile& key, unsigned threads) {
  const StFile file(in);
  const StHeader& h = file.header;
  const std::string what = "safetensors file '" + in + "'";
  // cheap checks first: is this the file the key was made for?
  auto kid = h.metadata.find("corelocker.key_id");
  if (kid == h.metadata.end())
    throw UsageError(what + " is not locked (no corelocker.key_id in its metadata)");
  const std::string key_id = to_hex(key.header.key_id.data(), key.header.key_id.size());
  if (kid->second != key_id) {
    throw MismatchError("key belongs to another model: key id " + key_id + ", " + what +
                        " was locked with key id " + kid->second);
  }
  if (key.header.tiers != 1) throw UsageError("tier keys are not supported for safetensors files");
  const std::string orig_text = original_header_text(h, what);
  std::string framed(8, '\0');
  const uint64_t orig_size = orig_text.size();
  std::memcpy(&framed[0], &orig_size, 8);
  framed += orig_text;
  const StHeader orig =
      parse_st_header(reinterpret_cast<const uint8_t*>(framed.data()), framed.size(),
                      framed.size() + h.data_size, what + " (original header)");
  std::map<std::string, const StTensor*> by_name;
  for (const auto& t : h.tensors) by_name[t.name] = &t;
  if (orig.tensors.size() != h.tensors.size())
    throw FormatError(what + ": original header lists other tensors");
  for (const auto& t : orig.tensors) {
    auto it = by_name.find(t.name);
    if (it == by_name.end() || it->second->dtype != t.dtype || it->second->shape != t.shape ||
        it->second->begin != t.begin || it->second->end != t.end) {
      throw FormatError(what + ": original header describes tensor '" + t.name + "' differently");
    }
  }
  std::map<std::string, const KeyEntry*> entries;
  for (const auto& e : key.entries) {
    auto it = by_name.find(e.tensor);
    if (it == by_name.end())
      throw MismatchError("key entry '" + e.tensor + "': " + what + " has no such tensor");
    const StTensor& t = *it->second;
    if (!st_is_float(t.dtype) || key_dtype(t.dtype) != e.dtype || t.shape != e.shape) {
      throw MismatchError("key entry '" + e.tensor + "': " + to_string(e.dtype) +
                          " tensor of another shape or dtype than " + what + "'s " + t.dtype);
    }
    entries[e.tensor] = &e;
  }

  // one pass: hash the locked bytes, write the restored bytes, hash those
  StUnlockOutcome outcome;
  std::map<std::string, Digest> locked, restored;
  StWriter writer(out, orig_text, h.data_size);
  const StFingerprintScheme scheme = st_fingerprint_scheme(h);  // the lock's, for both fingerprints
  std::deque<TensorHasher> hashers;  // outlive the helper thread (see lock_safetensors)
  ChunkRing ring;
  BackgroundHasher background(resolve_threads(threads) >= 2);
  for (const auto& t : h.tensors) {
    const uint8_t* p = file.tensor_data(t);
    auto ei = entries.find(t.name);
    if (ei == entries.end()) {  // unchanged: hashed on the helper while written here
      TensorHasher& hasher = hashers.emplace_back(scheme);
      for (uint64_t at = 0; at < t.nbytes(); at += kWindow) {
        const uint64_t n = std::min(kWindow, t.nbytes() - at);
        const uint64_t ticket = background.update(hasher, p + at, n);
        writer.write(p + at, n);
        background.wait(ticket);
        file.map.release(h.data_start + t.begin + at, n);
      }
      locked[t.name] = restored[t.name] = hasher.finish();
      continue;
    }
    const KeyEntry& e = *ei->second;
    const uint64_t unit_bytes = e.unit_size * dtype_size(e.dtype);
    const uint64_t units = t.nbytes() / unit_bytes;
    // both the locked and the restored bytes are hashed on the helper; the restored ones are made
    // and written here
    const uint64_t chunk_units = std::max<uint64_t>(1, kChunk / unit_bytes);
    TensorHasher& hl = hashers.emplace_back(scheme);
    TensorHasher& hr = hashers.emplace_back(scheme);
    size_t next = 0;
    auto unit = e.units.begin();
    const auto units_end = e.units.end();
    for (uint64_t u0 = 0; u0 < units; u0 += chunk_units) {
      const uint64_t u1 = std::min(units, u0 + chunk_units);
      const uint64_t n = (u1 - u0) * unit_bytes;
      const uint8_t* w = p + u0 * unit_bytes;
      const size_t slot = ring.take(background, n);
      uint8_t* b = ring.data(slot);
      const uint64_t locked_hashed = background.update(hl, w, n);
      std::memcpy(b, w, n);
      for (; unit != units_end && *unit < u1; ++unit, ++next) {
        uint8_t* up = b + (*unit - u0) * unit_bytes;
        if (unit_bytes == 4)
          std::memcpy(up, e.values.data() + next * 4, 4);  // a move, not a call
        else
          std::memcpy(up, e.values.data() + next * unit_bytes, unit_bytes);
      }
      ring.hand_over(slot, background.update(hr, b, n));
      writer.write(b, n);
      background.wait(locked_hashed);
      file.map.release(h.data_start + t.begin + u0 * unit_bytes, n);
    }
    background.wait_all();
    locked[t.name] = hl.finish();
    restored[t.name] = hr.finish();
    outcome.values += e.units.size() * e.unit_size;
  }
  const Digest locked_fp = combine(h, locked, scheme);
  if (locked_fp != key.header.locked_fingerprint) {
    throw MismatchError("key does not apply to " + what + ": its fingerprint is " +
                        to_hex(locked_fp).substr(0, 16) + ", the key was made for " +
                        to_hex(key.header.locked_fingerprint).substr(0, 16) +
                        " (the locked file was modified, or the key belongs to another lock)");
  }
  outcome.fingerprint = combine(orig, restored, scheme);
  if (outcome.fingerprint != key.header.original_fingerprint) {
    throw MismatchError("restoring " + what + " gives fingerprint " +
                        to_hex(outcome.fingerprint).substr(0, 16) + ", the key expects " +
                        to_hex(key.header.original_fingerprint).substr(0, 16) +
                        "; nothing written");
  }
  writer.commit();
  return outcome;
}

}  // namespace corelocker
