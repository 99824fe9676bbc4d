// The access key file. Version 3 layout (all integers little-endian); the full description,
// and versions 1 and 2 (still read), are in docs/key-format.md.
//
//   offset  size  field
//   0       8     magic "CLOCKKEY"
//   8       4     u32 version (3)
//   12      4     u32 header size H (188 in versions 2 and 3)
//   16      H     header:
//                   32  fingerprint of the model state this key applies to ("locked")
//                   32  fingerprint of the state it produces ("original"; for a tier key
//                       that is not the last, the model locked at the next smaller ratio)
//                   16  key id (random; shared by the keys of one tiered lock)
//                   u8  criterion (0 l1, 1 bn, 2 random), u8 scope (0 layer, 1 global),
//                   u8  fill (0 zero, 1 decoy-v1, 2 decoy), u8 flags (bit 0 include io, bit 1
//                   random bn units) f64 ratio of the state the key applies to f64 ratio of the
//                   state it produces (0: the original) u64 seed, u64 units restored by this key
//                   u16 tier index (1-based, in order of application), u16 tier count
//                   u8  encryption (0 none, 1 passphrase/Argon2id, 2 raw 32-byte secret), u8[3] 0
//                   u64 Argon2id opslimit, u64 memlimit (bytes), 16 salt   (0 unless passphrase)
//                   24  XChaCha20-Poly1305 nonce                           (0 unless encrypted)
//                   u64 payload size P
//   16+H    P     payload. Plain: u32 entry count E, then E entries. Encrypted: that plain
//                 payload sealed with XChaCha20-Poly1305 (16-byte tag at the end), bytes
//                 [0, 16+H) as associated data.
//   16+H+P  32    (unencrypted only) BLAKE2b-256 of every byte before it
//
// Entry: u32 name length n (1..4096), n bytes of tensor name, u8 dtype (1 f32, 2 f64, 3 f16,
// 4 bf16), u8 ndim (1..8), u16 0, u64 dims[ndim], u64 unit size s (elements per unit; divides
// the element count), u64 unit count k, the unit indices (strictly increasing, < numel/s),
// then k*s elements of dtype: the original values, unit after unit. Version 3 stores the
// indices as u64 byte count B and B bytes of k unsigned LEB128 numbers: the first index, then
// each index's distance to the one before minus 1 (a 5% lock of single weights: about 1.1 bytes
// an index); versions 1 and 2 as k u64 (8 bytes an index).
//
// A unit is the contiguous block [index*s, (index+1)*s) of the tensor's row-major elements:
// a conv kernel F[o,i,:,:], a whole filter F[o,:,:,:], or one weight.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "keyfile/unit_list.h"
#include "util/hash.h"

namespace corelocker {

constexpr char kKeyMagic[8] = {'C', 'L', 'O', 'C', 'K', 'K', 'E', 'Y'};
constexpr uint32_t kKeyVersion = 3;  // written; versions 1, 2 and 3 are read
constexpr uint32_t kKeyHeaderSizeV1 = 120;
constexpr uint32_t kKeyHeaderSizeV2 = 188;  // also version 3
constexpr uint32_t kKeyMaxNameLength = 4096;
constexpr uint32_t kKeyMaxDims = 8;

enum class Criterion : uint8_t { kL1 = 0, kBn = 1, kRandom = 2 };
enum class Scope : uint8_t { kLayer = 0, kGlobal = 1 };
// kDecoyV1: the first decoy generator (elements resampled from other units; every key with fill
// code 1 was made by it); kDecoy: decoys drawn from a model of the tensor's own kernels
// (locking/decoys.h).
enum class Fill : uint8_t { kZero = 0, kDecoyV1 = 1, kDecoy = 2 };
enum class Encryption : uint8_t { kNone = 0, kPassphrase = 1, kSecret = 2 };
enum class DType : uint8_t { kF32 = 1, kF64 = 2, kF16 = 3, kBF16 = 4 };

const char* to_string(Criterion c);
const char* to_string(Scope s);
const char* to_string(Fill f);
const char* to_string(DType d);
const char* to_string(Encryption e);
// Parse user-facing names ("l1", "bn", "random"; "layer", "global"; "zero", "decoy").
// Throw UsageError.
Criterion parse_criterion(const std::string& s);
Scope parse_scope(const std::string& s);
Fill parse_fill(const std::string& s);
// Bytes per element of a dtype.
size_t dtype_size(DType d);

using KeyId = std::array<uint8_t, 16>;

struct KeyHeader {
  uint32_t version = kKeyVersion;  // as read; written keys are always the newest version
  Digest locked_fingerprint{};     // the state the key applies to
  Digest original_fingerprint{};   // the state it produces
  KeyId key_id{};
  Criterion criterion = Criterion::kL1;
  Scope scope = Scope::kLayer;
  Fill fill = Fill::kZero;
  bool include_io = false;
  bool random_bn_units = false;
  double ratio = 0.0;        // of the state the key applies to
  double ratio_after = 0.0;  // of the state it produces; 0 for the original
  uint64_t seed = 0;
  uint64_t units = 0;
  uint16_t tier = 1;  // 1-based position in the order of application
  uint16_t tiers = 1;
  Encryption encryption = Encryption::kNone;
  uint64_t kdf_opslimit = 0;
  uint64_t kdf_memlimit = 0;
  std::array<uint8_t, 16> salt{};
  std::array<uint8_t, 24> nonce{};
};

// What unlocks an encrypted key (or encrypts a new one).
struct KeyCredentials {
  Encryption kind = Encryption::kNone;
  std::string passphrase;            // kPassphrase
  std::array<uint8_t, 32> secret{};  // kSecret
  // Argon2id cost for new keys (libsodium's MODERATE by default).
  uint64_t opslimit = 3;
  uint64_t memlimit = uint64_t{256} << 20;
  ~KeyCredentials();
};

// Argon2id cost presets: "interactive", "moderate", "sensitive", or "min" (tests only).
// Throws UsageError.
void set_kdf_preset(KeyCredentials& c, const std::string& preset);

struct KeyEntry {
  std::string tensor;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
  uint64_t unit_size = 1;
  UnitList units;               // strictly increasing
  std::vector<uint8_t> values;  // units.size() * unit_size elements of dtype

  uint64_t numel() const;
};

struct KeyFile {
  KeyHeader header;
  std::vector<KeyEntry> entries;

  // Number of original values held.
  uint64_t value_count() const;
};

// Serialises a key in the newest layout, encrypted when `credentials` name a passphrase or a
// secret (fresh salt and nonce each time). Throws Error when the key is inconsistent.
std::vector<uint8_t> serialize_key(const KeyFile& key, const KeyCredentials& credentials = {});

// Parses and validates key bytes; `what` names the source in errors. An encrypted key needs
// credentials (UsageError without); a wrong passphrase/secret or any altered byte of an
// encrypted key is an AuthError. Malformed framing is a FormatError.
KeyFile parse_key(const uint8_t* data, size_t size, const std::string& what,
                  const KeyCredentials& credentials = {});

// Parses only the preamble and header (no credentials needed; nothing is decrypted and, for
// an unencrypted key, the checksum is still verified). Throws FormatError.
KeyHeader parse_key_header(const uint8_t* data, size_t size, const std::string& what);

// True when the bytes start with the key magic.
bool looks_like_key(const std::vector<uint8_t>& bytes);

// The first 16 hex digits of a fingerprint, as messages show it.
std::string short_fingerprint(const Digest& d);
// Checks that a model whose fingerprint is `fp` is the locked state `header`'s key applies to.
// Throws MismatchError: the model is already unlocked (`fp` is the original the key restores), or
// the key belongs to another model.
void check_key_applies(const Digest& fp, const KeyHeader& header);
// Checks that a model restored with `header`'s key has the original fingerprint the key records
// (`restored`). Throws Error.
void check_key_restored(const Digest& restored, const KeyHeader& header);

// Reads and parses a key file. Throws IoError / FormatError / AuthError / UsageError.
KeyFile read_key_file(const std::string& path, const KeyCredentials& credentials = {});

// Writes a key file atomically (encrypted with `credentials` when given); returns its size in
// bytes. Throws IoError.
uint64_t write_key_file(const std::string& path, const KeyFile& key,
                        const KeyCredentials& credentials = {});

}  // namespace corelocker
