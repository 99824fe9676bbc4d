#include "keyfile/key_file.h"

#include <sodium.h>

#include <cstring>
#include <set>

#include "util/atomic_file.h"
#include "util/bytes.h"
#include "util/checked.h"
#include "util/error.h"

namespace corelocker {

const char* to_string(Criterion c) {
  switch (c) {
    case Criterion::kL1:
      return "l1";
    case Criterion::kBn:
      return "bn";
    case Criterion::kRandom:
      return "random";
  }
  return "?";
}
const char* to_string(Scope s) { return s == Scope::kLayer ? "layer" : "global"; }
const char* to_string(Fill f) {
  switch (f) {
    case Fill::kZero:
      return "zero";
    case Fill::kDecoyV1:
      return "decoy-v1";
    case Fill::kDecoy:
      return "decoy";
  }
  return "?";
}
const char* to_string(Encryption e) {
  switch (e) {
    case Encryption::kNone:
      return "none";
    case Encryption::kPassphrase:
      return "passphrase (Argon2id + XChaCha20-Poly1305)";
    case Encryption::kSecret:
      return "secret (XChaCha20-Poly1305)";
  }
  return "?";
}

Fill parse_fill(const std::string& s) {
  if (s == "zero") return Fill::kZero;
  if (s == "decoy") return Fill::kDecoy;
  if (s == "decoy-v1") return Fill::kDecoyV1;
  throw UsageError("fill '" + s + "': expected zero, decoy or decoy-v1");
}

KeyCredentials::~KeyCredentials() {
  sodium_memzero(secret.data(), secret.size());
  if (!passphrase.empty()) sodium_memzero(&passphrase[0], passphrase.size());
}

void set_kdf_preset(KeyCredentials& c, const std::string& preset) {
  if (preset == "interactive") {
    c.opslimit = crypto_pwhash_OPSLIMIT_INTERACTIVE;
    c.memlimit = crypto_pwhash_MEMLIMIT_INTERACTIVE;
  } else if (preset == "moderate") {
    c.opslimit = crypto_pwhash_OPSLIMIT_MODERATE;
    c.memlimit = crypto_pwhash_MEMLIMIT_MODERATE;
  } else if (preset == "sensitive") {
    c.opslimit = crypto_pwhash_OPSLIMIT_SENSITIVE;
    c.memlimit = crypto_pwhash_MEMLIMIT_SENSITIVE;
  } else if (preset == "min") {
    c.opslimit = crypto_pwhash_OPSLIMIT_MIN;
    c.memlimit = crypto_pwhash_MEMLIMIT_MIN;
  } else {
    throw UsageError("kdf preset '" + preset + "': expected interactive, moderate or sensitive");
  }
}
const char* to_string(DType d) {
  switch (d) {
    case DType::kF32:
      return "f32";
    case DType::kF64:
      return "f64";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
  }
  return "?";
}

Criterion parse_criterion(const std::string& s) {
  if (s == "l1") return Criterion::kL1;
  if (s == "bn") return Criterion::kBn;
  if (s == "random") return Criterion::kRandom;
  throw UsageError("criterion '" + s + "': expected l1, bn or random");
}

Scope parse_scope(const std::string& s) {
  if (s == "layer") return Scope::kLayer;
  if (s == "global") return Scope::kGlobal;
  throw UsageError("scope '" + s + "': expected layer or global");
}

size_t dtype_size(DType d) {
  switch (d) {
    case DType::kF32:
      return 4;
    case DType::kF64:
      return 8;
    case DType::kF16:
    case DType::kBF16:
      return 2;
  }
  return 0;
}

uint64_t KeyEntry::numel() const {
  uint64_t n = 1;
  for (auto d : shape) n = checked_mul(n, d, "tensor '" + tensor + "' shape");
  return n;
}

uint64_t KeyFile::value_count() const {
  uint64_t n = 0;
  for (const auto& e : entries) n += e.units.size() * e.unit_size;
  return n;
}

namespace {

constexpr size_t kChecksumSize = 32;
constexpr size_t kTagSize = crypto_aead_xchacha20poly1305_ietf_ABYTES;
// Argon2id costs a reader accepts: a key file must not make us allocate without bound.
constexpr uint64_t kMaxKdfMemlimit = uint64_t{4} << 30;
constexpr uint64_t kMaxKdfOpslimit = 64;

const std::string kAuthFailed = "wrong passphrase or key file altered";

void check_entry(const KeyEntry& e, const std::string& what) {
  const std::string at = what + ": entry '" + e.tensor + "'";
  if (e.tensor.empty() || e.tensor.size() > kKeyMaxNameLength) {
    throw FormatError(what + ": tensor name of " + std::to_string(e.tensor.size()) +
                      " bytes (expected 1.." + std::to_string(kKeyMaxNameLength) + ")");
  }
  if (e.tensor.find('\0') != std::string::npos)
    throw FormatError(at + ": name contains a NUL byte");
  if (e.shape.empty() || e.shape.size() > kKeyMaxDims) {
    throw FormatError(at + ": " + std::to_string(e.shape.size()) + " dimensions (expected 1.." +
                      std::to_string(kKeyMaxDims) + ")");
  }
  const uint64_t numel = e.numel();
  if (e.unit_size == 0 || numel % e.unit_size != 0) {
    throw FormatError(at + ": unit size " + std::to_string(e.unit_size) +
                      " does not divide the tensor's " + std::to_string(numel) + " elements");
  }
  const uint64_t unit_slots = numel / e.unit_size;
  if (e.units.size() > unit_slots) {
    throw FormatError(at + ": " + std::to_string(e.units.size()) + " units, tensor has " +
                      std::to_string(unit_slots));
  }
  // A UnitList is strictly increasing by construction; its last index bounds them all.
  if (!e.units.empty() && e.units.back() >= unit_slots) {
    throw FormatError(at + ": unit index " + std::to_string(e.units.back()) +
                      " out of range (tensor has " + std::to_string(unit_slots) + " units)");
  }
  const uint64_t value_bytes =
      checked_mul(checked_mul(e.units.size(), e.unit_size, at), dtype_size(e.dtype), at);
  if (e.values.size() != value_bytes) {
    throw FormatError(at + ": " + std::to_string(e.values.size()) + " value bytes, expected " +
                      std::to_string(value_bytes));
  }
}

// Versions 1 and 2 store every index as a u64: checked before they become a UnitList.
void check_plain_indices(const std::vector<uint64_t>& units, const KeyEntry& e,
                         const std::string& what) {
  const std::string at = what + ": entry '" + e.tensor + "'";
  uint64_t slots = 1;
  for (auto d : e.shape) slots = checked_mul(slots, d, at);
  if (e.unit_size == 0 || slots % e.unit_size != 0) check_entry(e, what);  // names the defect
  slots /= e.unit_size;
  for (size_t i = 0; i < units.size(); ++i) {
    if (units[i] >= slots) {
      throw FormatError(at + ": unit index " + std::to_string(units[i]) +
                        " out of range (tensor has " + std::to_string(slots) + " units)");
    }
    if (i > 0 && units[i] <= units[i - 1]) {
      throw FormatError(at + ": unit indices not strictly increasing (" +
                        std::to_string(units[i - 1]) + " then " + std::to_string(units[i]) + ")");
    }
  }
}

DType checked_dtype(uint8_t v, const std::string& at) {
  if (v < 1 || v > 4) throw FormatError(at + ": unknown dtype code " + std::to_string(v));
  return static_cast<DType>(v);
}

// The payload (entry count, then the entries) and its exact size, so that it is built in one
// buffer: a growing buffer copied a 66 MB key three times, and an encrypted key's plaintext
// left copies in the freed memory that sodium_memzero never saw.
uint64_t payload_size(const std::vector<KeyEntry>& entries) {
  uint64_t size = 4;
  for (const auto& e : entries) {
    size += 4 + e.tensor.size() + 4 + 8 * e.shape.size() + 8 + 8 + 8 + e.units.encoded().size() +
            e.values.size();
  }
  return size;
}

void write_payload(ByteWriter& w, const std::vector<KeyEntry>& entries) {
  w.u32(static_cast<uint32_t>(entries.size()));
  for (const auto& e : entries) {
    w.u32(static_cast<uint32_t>(e.tensor.size()));
    w.raw(e.tensor.data(), e.tensor.size());
    w.u8(static_cast<uint8_t>(e.dtype));
    w.u8(static_cast<uint8_t>(e.shape.size()));
    w.u16(0);
    for (auto d : e.shape) w.u64(d);
    w.u64(e.unit_size);
    w.u64(e.units.size());
    w.u64(e.units.encoded().size());
    w.bytes(e.units.encoded());
    w.bytes(e.values);
  }
}

std::vector<KeyEntry> read_entries(ByteReader& p, uint64_t entry_count, uint32_t version,
                                   const std::string& what) {
  std::vector<KeyEntry> entries;
  std::set<std::string> names;
  for (uint64_t i = 0; i < entry_count; ++i) {
    const std::string at = what + ": entry " + std::to_string(i);
    KeyEntry e;
    const uint32_t name_len = p.u32("name length");
    if (name_len == 0 || name_len > kKeyMaxNameLength) {
      throw FormatError(at + ": name length " + std::to_string(name_len) + " (expected 1.." +
                        std::to_string(kKeyMaxNameLength) + ")");
    }
    e.tensor.assign(reinterpret_cast<const char*>(p.take(name_len, "name")), name_len);
    if (!names.insert(e.tensor).second) {
      throw FormatError(what + ": duplicate entry for tensor '" + e.tensor + "'");
    }
    e.dtype = checked_dtype(p.u8("dtype"), at);
    const uint8_t ndim = p.u8("ndim");
    if (p.u16("reserved") != 0) throw FormatError(at + ": reserved field is not zero");
    if (ndim < 1 || ndim > kKeyMaxDims) {
      throw FormatError(at + " ('" + e.tensor + "'): " + std::to_string(ndim) +
                        " dimensions (expected 1.." + std::to_string(kKeyMaxDims) + ")");
    }
    for (uint8_t d = 0; d < ndim; ++d) e.shape.push_back(p.u64("dims"));
    e.unit_size = p.u64("unit size");
    const uint64_t count = p.u64("unit count");
    if (version >= 3) {
      const uint64_t size = p.u64("index block size");
      const uint8_t* block =
          p.take(size, "unit indices of '" + e.tensor + "'");  // checked before allocating
      uint64_t numel = 1;
      for (auto d : e.shape) numel = checked_mul(numel, d, at);
      if (e.unit_size == 0 || numel % e.unit_size != 0)
        check_entry(e, what);  // names the unit-size defect
      e.units =
          UnitList::decode(block, size, count, numel / e.unit_size, at + " ('" + e.tensor + "')");
    } else {
      // Check the count against the bytes that are left before allocating anything.
      p.need(checked_mul(count, 8, at), "unit indices of '" + e.tensor + "'");
      const uint8_t* raw = p.take(count * 8, "unit indices");
      std::vector<uint64_t> units(count);
      std::memcpy(units.data(), raw, count * 8);
      check_plain_indices(units, e, what);
      e.units = UnitList(units.begin(), units.end());
    }
    const uint64_t value_bytes =
        checked_mul(checked_mul(count, e.unit_size, at), dtype_size(e.dtype), at);
    const uint8_t* v = p.take(value_bytes, "values of '" + e.tensor + "'");
    e.values.assign(v, v + value_bytes);
    check_entry(e, what);
    entries.push_back(std::move(e));
  }
  if (p.remaining() != 0) {
    throw FormatError(what + ": " + std::to_string(p.remaining()) +
                      " bytes left in the payload after the last entry");
  }
  return entries;
}

// Everything before the payload, as read; codes are checked separately (after authentication
// for encrypted keys, so that a flipped header byte reads as an authentication failure).
struct Framing {
  KeyHeader header;
  uint8_t criterion = 0, scope = 0, fill = 0, flags = 0, encryption = 0;
  uint64_t entry_count = 0;  // version 1 keeps it in the header
  uint64_t header_end = 0;   // offset of the payload
  uint64_t payload_size = 0;
};

Framing read_framing(const uint8_t* data, size_t size, const std::string& what) {
  ByteReader r(data, size, what);
  // preamble
  if (size < sizeof kKeyMagic || std::memcmp(data, kKeyMagic, sizeof kKeyMagic) != 0) {
    throw FormatError(what + ": not a corelocker key (bad magic)");
  }
  r.take(sizeof kKeyMagic, "magic");
  Framing f;
  KeyHeader& h = f.header;
  h.version = r.u32("version");
  if (h.version == 0 || h.version > kKeyVersion) {
    throw FormatError(what + ": key format version " + std::to_string(h.version) +
                      ", this build reads up to " + std::to_string(kKeyVersion));
  }
  const uint32_t header_size = r.u32("header size");
  const uint32_t expected_header = h.version == 1 ? kKeyHeaderSizeV1 : kKeyHeaderSizeV2;
  if (header_size != expected_header) {
    throw FormatError(what + ": header size " + std::to_string(header_size) + ", version " +
                      std::to_string(h.version) + " has " + std::to_string(expected_header));
  }
  // header
  r.need(header_size, "header");
  std::memcpy(h.locked_fingerprint.data(), r.take(32, "locked fingerprint"), 32);
  std::memcpy(h.original_fingerprint.data(), r.take(32, "original fingerprint"), 32);
  std::memcpy(h.key_id.data(), r.take(16, "key id"), 16);
  f.criterion = r.u8("criterion");
  f.scope = r.u8("scope");
  f.fill = r.u8("fill");
  f.flags = r.u8("flags");
  h.ratio = r.f64("ratio");
  if (h.version >= 2) h.ratio_after = r.f64("ratio after");
  h.seed = r.u64("seed");
  h.units = r.u64("unit count");
  if (h.version == 1) {
    f.entry_count = r.u32("entry count");
  } else {
    h.tier = r.u16("tier");
    h.tiers = r.u16("tier count");
    f.encryption = r.u8("encryption");
    r.take(3, "reserved");
    h.kdf_opslimit = r.u64("kdf opslimit");
    h.kdf_memlimit = r.u64("kdf memlimit");
    std::memcpy(h.salt.data(), r.take(16, "salt"), 16);
    std::memcpy(h.nonce.data(), r.take(24, "nonce"), 24);
  }
  f.payload_size = r.u64("payload size");
  f.header_end = r.offset();
  // The whole file must be exactly preamble + header + payload (+ checksum when plain).
  const bool plain = f.encryption == 0;
  const uint64_t expected =
      checked_add(checked_add(f.header_end, f.payload_size, what), plain ? kChecksumSize : 0, what);
  if (size != expected) {
    throw FormatError(what + ": file is " + std::to_string(size) + " bytes, header says " +
                      std::to_string(expected) +
                      (size < expected ? " (truncated)" : " (trailing bytes)"));
  }
  if (plain) {
    Digest sum = hash_bytes(data, size - kChecksumSize);
    if (std::memcmp(sum.data(), data + size - kChecksumSize, kChecksumSize) != 0) {
      throw FormatError(what + ": checksum mismatch (the key file was altered or corrupted)");
    }
  }
  return f;
}

void check_codes(Framing& f, const std::string& what) {
  KeyHeader& h = f.header;
  if (f.criterion > 2)
    throw FormatError(what + ": unknown criterion code " + std::to_string(f.criterion));
  if (f.scope > 1) throw FormatError(what + ": unknown scope code " + std::to_string(f.scope));
  if (f.fill > 2) throw FormatError(what + ": unknown fill code " + std::to_string(f.fill));
  if (f.flags > 3) throw FormatError(what + ": unknown flag bits 0x" + to_hex(&f.flags, 1));
  if (f.encryption > 2)
    throw FormatError(what + ": unknown encryption code " + std::to_string(f.encryption));
  h.criterion = static_cast<Criterion>(f.criterion);
  h.scope = static_cast<Scope>(f.scope);
  h.fill = static_cast<Fill>(f.fill);
  h.include_io = f.flags & 1;
  h.random_bn_units = f.flags & 2;
  h.encryption = static_cast<Encryption>(f.encryption);
  if (!(h.ratio >= 0.0 && h.ratio <= 1.0)) {
    throw FormatError(what + ": ratio " + std::to_string(h.ratio) + " outside [0, 1]");
  }
  if (!(h.ratio_after >= 0.0 && h.ratio_after < h.ratio) &&
      !(h.ratio == 0.0 && h.ratio_after == 0.0)) {
    throw FormatError(what + ": ratio after " + std::to_string(h.ratio_after) +
                      " is not below the ratio " + std::to_string(h.ratio));
  }
  if (h.tiers == 0 || h.tier == 0 || h.tier > h.tiers) {
    throw FormatError(what + ": tier " + std::to_string(h.tier) + " of " + std::to_string(h.tiers));
  }
}

void write_header(ByteWriter& out, const KeyHeader& h, uint64_t payload_size) {
  out.raw(kKeyMagic, sizeof kKeyMagic);
  out.u32(kKeyVersion);
  out.u32(kKeyHeaderSizeV2);
  out.raw(h.locked_fingerprint.data(), 32);
  out.raw(h.original_fingerprint.data(), 32);
  out.raw(h.key_id.data(), h.key_id.size());
  out.u8(static_cast<uint8_t>(h.criterion));
  out.u8(static_cast<uint8_t>(h.scope));
  out.u8(static_cast<uint8_t>(h.fill));
  out.u8(static_cast<uint8_t>((h.include_io ? 1 : 0) | (h.random_bn_units ? 2 : 0)));
  out.f64(h.ratio);
  out.f64(h.ratio_after);
  out.u64(h.seed);
  out.u64(h.units);
  out.u16(h.tier);
  out.u16(h.tiers);
  out.u8(static_cast<uint8_t>(h.encryption));
  out.u8(0);
  out.u16(0);
  out.u64(h.kdf_opslimit);
  out.u64(h.kdf_memlimit);
  out.raw(h.salt.data(), h.salt.size());
  out.raw(h.nonce.data(), h.nonce.size());
  out.u64(payload_size);
}

// The 32-byte AEAD key for a header's encryption mode. Throws AuthError / UsageError.
std::array<uint8_t, 32> derive_key(const KeyHeader& h, const KeyCredentials& c,
                                   const std::string& what) {
  std::array<uint8_t, 32> k{};
  if (h.encryption == Encryption::kSecret) {
    if (c.kind != Encryption::kSecret) {
      throw UsageError(what + " is encrypted with a secret: give --secret-file");
    }
    k = c.secret;
    return k;
  }
  if (c.kind != Encryption::kPassphrase) {
    throw UsageError(what +
                     " is encrypted with a passphrase: give --passphrase-file or --passphrase-env");
  }
  if (h.kdf_opslimit < crypto_pwhash_OPSLIMIT_MIN || h.kdf_opslimit > kMaxKdfOpslimit ||
      h.kdf_memlimit < crypto_pwhash_MEMLIMIT_MIN || h.kdf_memlimit > kMaxKdfMemlimit) {
    throw AuthError(what + ": " + kAuthFailed +
                    " (Argon2id cost ops=" + std::to_string(h.kdf_opslimit) +
                    " mem=" + std::to_string(h.kdf_memlimit) + " outside what this build accepts)");
  }
  if (crypto_pwhash(k.data(), k.size(), c.passphrase.data(), c.passphrase.size(), h.salt.data(),
                    h.kdf_opslimit, static_cast<size_t>(h.kdf_memlimit),
                    crypto_pwhash_ALG_ARGON2ID13) != 0) {
    throw Error(what + ": Argon2id failed (out of memory for " +
                std::to_string(h.kdf_memlimit >> 20) + " MiB?)");
  }
  return k;
}

}  // namespace

std::vector<uint8_t> serialize_key(const KeyFile& key, const KeyCredentials& credentials) {
  std::set<std::string> names;
  for (const auto& e : key.entries) {
    check_entry(e, "key");
    if (!names.insert(e.tensor).second) throw Error("key: duplicate entry '" + e.tensor + "'");
  }
  const uint64_t size = payload_size(key.entries);
  auto check_size = [&](uint64_t written) {
    if (written != size) {
      throw Error("key: payload of " + std::to_string(written) + " bytes written, " +
                  std::to_string(size) + " expected");
    }
  };

  KeyHeader h = key.header;
  h.encryption = credentials.kind;
  h.kdf_opslimit = h.kdf_memlimit = 0;
  h.salt.fill(0);
  h.nonce.fill(0);
  ByteWriter out;
  if (credentials.kind == Encryption::kNone) {
    out.reserve(size + 1024);  // the header (204 bytes) and the checksum (32) as well
    write_header(out, h, size);
    const size_t header_end = out.size();
    write_payload(out, key.entries);
    check_size(out.size() - header_end);
    Digest sum = hash_bytes(out.buffer().data(), out.size());
    out.raw(sum.data(), sum.size());
    return std::move(out.buffer());
  }
  if (credentials.kind == Encryption::kPassphrase) {
    if (credentials.passphrase.empty()) throw UsageError("empty passphrase");
    h.kdf_opslimit = credentials.opslimit;
    h.kdf_memlimit = credentials.memlimit;
    random_bytes(h.salt.data(), h.salt.size());
  }
  random_bytes(h.nonce.data(), h.nonce.size());
  ByteWriter payload;
  payload.reserve(size);
  write_payload(payload, key.entries);
  check_size(payload.size());
  auto k = derive_key(h, credentials, "key");
  write_header(out, h, size + kTagSize);
  const size_t header_end = out.size();
  out.buffer().resize(header_end + size +
                      kTagSize);  // the ciphertext goes straight after the header
  unsigned long long sealed_len = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(
      out.buffer().data() + header_end, &sealed_len, payload.buffer().data(), payload.size(),
      out.buffer().data(), header_end, nullptr, h.nonce.data(), k.data());
  sodium_memzero(k.data(), k.size());
  sodium_memzero(payload.buffer().data(), payload.size());
  return std::move(out.buffer());
}

bool looks_like_key(const std::vector<uint8_t>& bytes) {
  return bytes.size() >= sizeof kKeyMagic && std::memcmp(bytes.data(), kKeyMagic, 8) == 0;
}

KeyHeader parse_key_header(const uint8_t* data, size_t size, const std::string& what) {
  Framing f = read_framing(data, size, what);
  check_codes(f, what);
  return f.header;
}

KeyFile parse_key(const uint8_t* data, size_t size, const std::string& what,
                  const KeyCredentials& credentials) {
  Framing f = read_framing(data, size, what);
  KeyFile key;
  if (f.encryption == 0) {
    check_codes(f, what);
    key.header = f.header;
    ByteReader p(data + f.header_end, f.payload_size, what + ": payload");
    const uint64_t count = f.header.version == 1 ? f.entry_count : p.u32("entry count");
    key.entries = read_entries(p, count, f.header.version, what);
    return key;
  }
  // encrypted: authenticate before trusting any header field
  if (f.encryption > 2) throw AuthError(what + ": " + kAuthFailed + " (unknown encryption code)");
  f.header.encryption = static_cast<Encryption>(f.encryption);
  if (f.payload_size < kTagSize)
    throw AuthError(what + ": " + kAuthFailed + " (payload shorter than its tag)");
  auto k = derive_key(f.header, credentials, what);
  std::vector<uint8_t> plain(f.payload_size - kTagSize);
  unsigned long long plain_len = 0;
  const int rc = crypto_aead_xchacha20poly1305_ietf_decrypt(
      plain.data(), &plain_len, nullptr, data + f.header_end, f.payload_size, data, f.header_end,
      f.header.nonce.data(), k.data());
  sodium_memzero(k.data(), k.size());
  if (rc != 0) throw AuthError(what + ": " + kAuthFailed);
  check_codes(f, what);
  key.header = f.header;
  ByteReader p(plain.data(), plain.size(), what + ": payload");
  key.entries = read_entries(p, p.u32("entry count"), f.header.version, what);
  sodium_memzero(plain.data(), plain.size());
  return key;
}

KeyFile read_key_file(const std::string& path, const KeyCredentials& credentials) {
  auto bytes = read_file(path);
  return parse_key(bytes.data(), bytes.size(), "key '" + path + "'", credentials);
}

uint64_t write_key_file(const std::string& path, const KeyFile& key,
                        const KeyCredentials& credentials) {
  auto bytes = serialize_key(key, credentials);
  write_file_atomic(path, bytes);
  return bytes.size();
}

std::string short_fingerprint(const Digest& d) { return to_hex(d).substr(0, 16); }

void check_key_applies(const Digest& fp, const KeyHeader& header) {
  if (fp == header.locked_fingerprint) return;
  if (fp == header.original_fingerprint) {
    throw MismatchError("model is already unlocked (its fingerprint " + short_fingerprint(fp) +
                        "... is the original this key restores)");
  }
  throw MismatchError("key belongs to another model: key expects locked model " +
                      short_fingerprint(header.locked_fingerprint) + "..., this model is " +
                      short_fingerprint(fp) + "...");
}

void check_key_restored(const Digest& restored, const KeyHeader& header) {
  if (restored == header.original_fingerprint) return;
  throw Error("restored model's fingerprint " + short_fingerprint(restored) +
              "... differs from the original " + short_fingerprint(header.original_fingerprint) +
              "... recorded in the key");
}

}  // namespace corelocker
