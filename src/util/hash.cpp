#include "util/hash.h"

#include <endian.h>
#include <sodium.h>

#include <cstring>
#include <utility>

#include "blake3.h"
#include "util/error.h"

namespace corelocker {
namespace {

void ensure_sodium() {
  static const int rc = sodium_init();
  if (rc < 0) throw Error("libsodium failed to initialise");
}

}  // namespace

namespace {

constexpr uint64_t kBlake2bIv[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};

// Message word order of each of the twelve rounds.
constexpr uint8_t kBlake2bSigma[12][16] = {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
                                           {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
                                           {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
                                           {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
                                           {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
                                           {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
                                           {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
                                           {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
                                           {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
                                           {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
                                           {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
                                           {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

inline uint64_t rotr(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

inline void mix(uint64_t& a, uint64_t& b, uint64_t& c, uint64_t& d, uint64_t x, uint64_t y) {
  a = a + b + x;
  d = rotr(d ^ a, 32);
  c = c + d;
  b = rotr(b ^ c, 24);
  a = a + b + y;
  d = rotr(d ^ a, 16);
  c = c + d;
  b = rotr(b ^ c, 63);
}

// One round; R a template argument so that every message index is a constant.
template <int R>
inline void blake2b_round(uint64_t* v, const uint64_t* m) {
  constexpr const uint8_t* s = kBlake2bSigma[R];
  mix(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);
  mix(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);
  mix(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);
  mix(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);
  mix(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);
  mix(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);
  mix(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);
  mix(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);
}

// The twelve rounds, unrolled: each round's message schedule is a compile-time constant.
template <int... R>
void blake2b_rounds(uint64_t v[16], const uint64_t m[16], std::integer_sequence<int, R...>) {
  (blake2b_round<R>(v, m), ...);
}

void blake2b_compress(uint64_t h[8], const uint64_t t[2], const uint8_t* block, bool last) {
  uint64_t m[16], v[16];
  for (int i = 0; i < 16; ++i) {
    std::memcpy(&m[i], block + 8 * i, 8);
    m[i] = le64toh(m[i]);
  }
  for (int i = 0; i < 8; ++i) {
    v[i] = h[i];
    v[i + 8] = kBlake2bIv[i];
  }
  v[12] ^= t[0];
  v[13] ^= t[1];
  if (last) v[14] = ~v[14];
  blake2b_rounds(v, m, std::make_integer_sequence<int, 12>{});
  for (int i = 0; i < 8; ++i) h[i] ^= v[i] ^ v[i + 8];
}

void add_bytes(uint64_t t[2], uint64_t n) {
  t[0] += n;
  if (t[0] < n) ++t[1];
}

}  // namespace

Hasher::Hasher() : t_{0, 0} {
  ensure_sodium();  // for the callers that rely on it, as when libsodium hashed
  for (int i = 0; i < 8; ++i) h_[i] = kBlake2bIv[i];
  h_[0] ^= 0x01010000u ^ 32u;  // parameter block: digest length 32, no key, fanout 1, depth 1
}

Hasher::~Hasher() {
  sodium_memzero(h_, sizeof h_);
  sodium_memzero(block_, sizeof block_);
}

void Hasher::update(const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  // A full block is compressed only once more bytes follow it: the last one is compressed by
  // finish().
  if (size > sizeof block_ - buffered_) {
    const size_t fill = sizeof block_ - buffered_;
    std::memcpy(block_ + buffered_, p, fill);
    add_bytes(t_, sizeof block_);
    blake2b_compress(h_, t_, block_, false);
    buffered_ = 0;
    p += fill;
    size -= fill;
    for (; size > sizeof block_; p += sizeof block_, size -= sizeof block_) {
      add_bytes(t_, sizeof block_);
      blake2b_compress(h_, t_, p, false);
    }
  }
  if (size > 0) std::memcpy(block_ + buffered_, p, size);
  buffered_ += size;
}

Digest Hasher::finish() {
  add_bytes(t_, buffered_);
  std::memset(block_ + buffered_, 0, sizeof block_ - buffered_);
  blake2b_compress(h_, t_, block_, true);
  Digest d{};
  for (size_t i = 0; i < d.size() / 8; ++i) {
    const uint64_t le = htole64(h_[i]);
    std::memcpy(d.data() + 8 * i, &le, 8);
  }
  return d;
}

struct Blake3Hasher::State {
  blake3_hasher h;
};

Blake3Hasher::Blake3Hasher() : state_(new State) { blake3_hasher_init(&state_->h); }

Blake3Hasher::~Blake3Hasher() {
  sodium_memzero(state_, sizeof *state_);
  delete state_;
}

void Blake3Hasher::update(const void* data, size_t size) {
  blake3_hasher_update(&state_->h, data, size);
}

Digest Blake3Hasher::finish() {
  Digest d{};
  blake3_hasher_finalize(&state_->h, d.data(), d.size());
  return d;
}

Digest hash_bytes(const void* data, size_t size) {
  Hasher h;
  h.update(data, size);
  return h.finish();
}

std::string to_hex(const uint8_t* data, size_t size) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (size_t i = 0; i < size; ++i) {
    out.push_back(kDigits[data[i] >> 4]);
    out.push_back(kDigits[data[i] & 15]);
  }
  return out;
}

bool from_hex(const std::string& hex, uint8_t* out, size_t size) {
  if (hex.size() != size * 2) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < size; ++i) {
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return true;
}

void random_bytes(void* out, size_t size) {
  ensure_sodium();
  randombytes_buf(out, size);
}

}  // namespace corelocker
