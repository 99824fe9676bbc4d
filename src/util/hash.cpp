#include "util/hash.h"

#include <sodium.h>

#include "blake3.h"

#include "util/error.h"

namespace corelocker {
namespace {

void ensure_sodium() {
  static const int rc = sodium_init();
  if (rc < 0) throw Error("libsodium failed to initialise");
}

}  // namespace

static_assert(sizeof(crypto_generichash_state) <= 384, "Hasher::state_ too small");

Hasher::Hasher() {
  ensure_sodium();
  crypto_generichash_init(reinterpret_cast<crypto_generichash_state*>(state_), nullptr, 0, 32);
}

Hasher::~Hasher() { sodium_memzero(state_, sizeof state_); }

void Hasher::update(const void* data, size_t size) {
  crypto_generichash_update(reinterpret_cast<crypto_generichash_state*>(state_),
                            static_cast<const unsigned char*>(data), size);
}

Digest Hasher::finish() {
  Digest d{};
  crypto_generichash_final(reinterpret_cast<crypto_generichash_state*>(state_), d.data(), d.size());
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

void Blake3Hasher::update(const void* data, size_t size) { blake3_hasher_update(&state_->h, data, size); }

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
