// The access key file. Version 1 layout (all integers little-endian):
//
//   offset  size  field
//   0       8     magic "CLOCKKEY"
//   8       4     u32 version (1)
//   12      4     u32 header size H (120 in version 1)
//   16      H     header:
//                   32  BLAKE2b-256 fingerprint of the locked model this key applies to
//                   32  fingerprint of the original model the key restores
//                   16  key id (random, also stored in the locked model's metadata)
//                   u8  criterion (0 l1, 1 bn, 2 random)
//                   u8  scope (0 layer, 1 global)
//                   u8  fill (0 zero)
//                   u8  flags (bit 0: first/last layer included; bit 1: random over bn units)
//                   f64 extraction ratio (fraction of units)
//                   u64 seed (random criterion; 0 otherwise)
//                   u64 units extracted (as counted by the criterion)
//                   u32 entry count E
//                   u64 payload size P
//   16+H    P     payload: E entries, each
//                   u32 name length n (1..4096), n bytes of tensor name
//                   u8  dtype (1 f32, 2 f64, 3 f16, 4 bf16), u8 ndim (1..8), u16 zero
//                   u64 dims[ndim]
//                   u64 unit size s (elements per unit; divides the tensor's element count)
//                   u64 unit count k
//                   u64 unit indices[k], strictly increasing, each < numel / s
//                   k * s elements of dtype: the original values, unit after unit
//   16+H+P  32    BLAKE2b-256 of every byte before it
//
// A unit is the contiguous block [index*s, (index+1)*s) of the tensor's row-major elements:
// a conv kernel F[o,i,:,:], a whole filter F[o,:,:,:], or one weight.
// Full documentation: docs/key-format.md.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "util/hash.h"

namespace corelocker {

constexpr char kKeyMagic[8] = {'C', 'L', 'O', 'C', 'K', 'K', 'E', 'Y'};
constexpr uint32_t kKeyVersion = 1;
constexpr uint32_t kKeyHeaderSizeV1 = 120;
constexpr uint32_t kKeyMaxNameLength = 4096;
constexpr uint32_t kKeyMaxDims = 8;

enum class Criterion : uint8_t { kL1 = 0, kBn = 1, kRandom = 2 };
enum class Scope : uint8_t { kLayer = 0, kGlobal = 1 };
enum class Fill : uint8_t { kZero = 0 };
enum class DType : uint8_t { kF32 = 1, kF64 = 2, kF16 = 3, kBF16 = 4 };

const char* to_string(Criterion c);
const char* to_string(Scope s);
const char* to_string(Fill f);
const char* to_string(DType d);
// Parse user-facing names ("l1", "bn", "random"; "layer", "global"). Throw UsageError.
Criterion parse_criterion(const std::string& s);
Scope parse_scope(const std::string& s);
// Bytes per element of a dtype.
size_t dtype_size(DType d);

using KeyId = std::array<uint8_t, 16>;

struct KeyHeader {
  Digest locked_fingerprint{};
  Digest original_fingerprint{};
  KeyId key_id{};
  Criterion criterion = Criterion::kL1;
  Scope scope = Scope::kLayer;
  Fill fill = Fill::kZero;
  bool include_io = false;
  bool random_bn_units = false;
  double ratio = 0.0;
  uint64_t seed = 0;
  uint64_t units = 0;
};

struct KeyEntry {
  std::string tensor;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
  uint64_t unit_size = 1;
  std::vector<uint64_t> units;  // strictly increasing
  std::vector<uint8_t> values;  // units.size() * unit_size elements of dtype

  uint64_t numel() const;
};

struct KeyFile {
  KeyHeader header;
  std::vector<KeyEntry> entries;

  // Number of original values held.
  uint64_t value_count() const;
};

// Serialises a key to the version-1 byte layout. Throws Error when the key is inconsistent.
std::vector<uint8_t> serialize_key(const KeyFile& key);

// Parses and validates key bytes; `what` names the source in errors. Throws FormatError.
KeyFile parse_key(const uint8_t* data, size_t size, const std::string& what);

// True when the bytes start with the key magic.
bool looks_like_key(const std::vector<uint8_t>& bytes);

// Reads and parses a key file. Throws IoError / FormatError.
KeyFile read_key_file(const std::string& path);

// Writes a key file atomically; returns its size in bytes. Throws IoError.
uint64_t write_key_file(const std::string& path, const KeyFile& key);

}  // namespace corelocker
