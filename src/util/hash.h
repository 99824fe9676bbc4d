// BLAKE2b-256 (the digest of libsodium's crypto_generichash) for fingerprints and key-file
// checksums; BLAKE3 (the reference C implementation, with its SIMD code) for the bulk bytes of
// safetensors files.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace corelocker {

using Digest = std::array<uint8_t, 32>;

// Incremental BLAKE2b-256 (RFC 7693, unkeyed): portable 64-bit code of our own, with the digests
// of libsodium's crypto_generichash (tested against it) at about twice its speed on the AMD EPYC
// here, where libsodium's AVX2 code is the slower of its two (docs/benchmarks.md).
class Hasher {
 public:
  Hasher();
  ~Hasher();
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  void update(const void* data, size_t size);
  void update_u64(uint64_t v) { update(&v, sizeof v); }
  void update_str(const std::string& s) {
    update_u64(s.size());
    update(s.data(), s.size());
  }
  Digest finish();

 private:
  uint64_t h_[8];        // chain value
  uint64_t t_[2];        // bytes compressed so far (128-bit counter)
  uint8_t block_[128];   // bytes not yet compressed: BLAKE2b compresses the last block differently
  size_t buffered_ = 0;  // bytes in block_
};

// Incremental BLAKE3 with a 32-byte output: five times libsodium's BLAKE2b speed on one core here
// (AVX-512; docs/benchmarks.md; Hasher above is about twice libsodium's), for hashing gigabytes of
// tensor data.
class Blake3Hasher {
 public:
  Blake3Hasher();
  ~Blake3Hasher();
  Blake3Hasher(const Blake3Hasher&) = delete;
  Blake3Hasher& operator=(const Blake3Hasher&) = delete;
  void update(const void* data, size_t size);
  Digest finish();

 private:
  struct State;
  State* state_;
};

// BLAKE2b-256 of a buffer.
Digest hash_bytes(const void* data, size_t size);

// Lower-case hex of a byte sequence.
std::string to_hex(const uint8_t* data, size_t size);
inline std::string to_hex(const Digest& d) { return to_hex(d.data(), d.size()); }

// Parses lower- or upper-case hex of exactly `out.size()` bytes. Returns false on bad input.
bool from_hex(const std::string& hex, uint8_t* out, size_t size);

// Fills `out` with cryptographically secure random bytes.
void random_bytes(void* out, size_t size);

}  // namespace corelocker
