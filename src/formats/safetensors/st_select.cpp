#include "formats/safetensors/st_select.h"

#include <cmath>
#include <cstring>
#include <functional>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace corelocker::st_detail {
namespace {

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

// Maps a float to an unsigned key with the same order (for the scores here: +0 <= s <= +inf, and
// -inf for NaN sums; -0.0 sorts just below +0.0). Never 0 for these scores.
uint32_t order_key(float s) {
  uint32_t bits;
  std::memcpy(&bits, &s, 4);
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}

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

}  // namespace

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

template void score_chunk<KthKey>(DType, const uint8_t*, uint64_t, uint64_t, uint64_t, uint32_t,
                                  KthKey&);
template void score_chunk<RuleSink>(DType, const uint8_t*, uint64_t, uint64_t, uint64_t, uint32_t,
                                    RuleSink&);
template void score_chunk<UnitKeys>(DType, const uint8_t*, uint64_t, uint64_t, uint64_t, uint32_t,
                                    UnitKeys&);

namespace {

constexpr uint64_t kSample = 65536;  // units sampled by sample_threshold
// Keeps every key it is handed (the sample's).
struct KeySample {
  std::vector<uint32_t> keys;
  uint32_t floor() const { return 0; }
  void push_key(uint32_t key, uint32_t, uint64_t) { keys.push_back(key); }
  void push_block(const uint32_t* k, unsigned mask, uint64_t) {
    for (; mask != 0; mask &= mask - 1) keys.push_back(k[__builtin_ctz(mask)]);
  }
};

}  // namespace

// A guess at the key of the k-th best of a layer's n units, a little below it: the key at a
// conservative rank of 65,536 units spread evenly over the layer (the expected count plus four
// standard deviations). Priming the layer's KthKey with it drops about 95% of the keys that
// would otherwise be buffered and compacted. Nothing for small layers or large k (no gain).
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

}  // namespace corelocker::st_detail
