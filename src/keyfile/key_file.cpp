#include "keyfile/key_file.h"

#include <cstring>
#include <set>

#include "util/atomic_file.h"
#include "util/bytes.h"
#include "util/checked.h"
#include "util/error.h"

namespace corelocker {

const char* to_string(Criterion c) {
  switch (c) {
    case Criterion::kL1: return "l1";
    case Criterion::kBn: return "bn";
    case Criterion::kRandom: return "random";
  }
  return "?";
}
const char* to_string(Scope s) { return s == Scope::kLayer ? "layer" : "global"; }
const char* to_string(Fill) { return "zero"; }
const char* to_string(DType d) {
  switch (d) {
    case DType::kF32: return "f32";
    case DType::kF64: return "f64";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
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
    case DType::kF32: return 4;
    case DType::kF64: return 8;
    case DType::kF16:
    case DType::kBF16: return 2;
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

constexpr size_t kPreambleSize = 16;
constexpr size_t kChecksumSize = 32;

void check_entry(const KeyEntry& e, const std::string& what) {
  const std::string at = what + ": entry '" + e.tensor + "'";
  if (e.tensor.empty() || e.tensor.size() > kKeyMaxNameLength) {
    throw FormatError(what + ": tensor name of " + std::to_string(e.tensor.size()) +
                      " bytes (expected 1.." + std::to_string(kKeyMaxNameLength) + ")");
  }
  if (e.tensor.find('\0') != std::string::npos) throw FormatError(at + ": name contains a NUL byte");
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
  for (size_t i = 0; i < e.units.size(); ++i) {
    if (e.units[i] >= unit_slots) {
      throw FormatError(at + ": unit index " + std::to_string(e.units[i]) +
                        " out of range (tensor has " + std::to_string(unit_slots) + " units)");
    }
    if (i > 0 && e.units[i] <= e.units[i - 1]) {
      throw FormatError(at + ": unit indices not strictly increasing (" +
                        std::to_string(e.units[i - 1]) + " then " + std::to_string(e.units[i]) +
                        ")");
    }
  }
  const uint64_t value_bytes = checked_mul(checked_mul(e.units.size(), e.unit_size, at),
                                           dtype_size(e.dtype), at);
  if (e.values.size() != value_bytes) {
    throw FormatError(at + ": " + std::to_string(e.values.size()) + " value bytes, expected " +
                      std::to_string(value_bytes));
  }
}

DType checked_dtype(uint8_t v, const std::string& at) {
  if (v < 1 || v > 4) throw FormatError(at + ": unknown dtype code " + std::to_string(v));
  return static_cast<DType>(v);
}

}  // namespace

std::vector<uint8_t> serialize_key(const KeyFile& key) {
  std::set<std::string> names;
  for (const auto& e : key.entries) {
    check_entry(e, "key");
    if (!names.insert(e.tensor).second) throw Error("key: duplicate entry '" + e.tensor + "'");
  }
  ByteWriter payload;
  for (const auto& e : key.entries) {
    payload.u32(static_cast<uint32_t>(e.tensor.size()));
    payload.raw(e.tensor.data(), e.tensor.size());
    payload.u8(static_cast<uint8_t>(e.dtype));
    payload.u8(static_cast<uint8_t>(e.shape.size()));
    payload.u16(0);
    for (auto d : e.shape) payload.u64(d);
    payload.u64(e.unit_size);
    payload.u64(e.units.size());
    for (auto u : e.units) payload.u64(u);
    payload.bytes(e.values);
  }
  const auto& h = key.header;
  ByteWriter out;
  out.raw(kKeyMagic, sizeof kKeyMagic);
  out.u32(kKeyVersion);
  out.u32(kKeyHeaderSizeV1);
  out.raw(h.locked_fingerprint.data(), 32);
  out.raw(h.original_fingerprint.data(), 32);
  out.raw(h.key_id.data(), h.key_id.size());
  out.u8(static_cast<uint8_t>(h.criterion));
  out.u8(static_cast<uint8_t>(h.scope));
  out.u8(static_cast<uint8_t>(h.fill));
  out.u8(static_cast<uint8_t>((h.include_io ? 1 : 0) | (h.random_bn_units ? 2 : 0)));
  out.f64(h.ratio);
  out.u64(h.seed);
  out.u64(h.units);
  out.u32(static_cast<uint32_t>(key.entries.size()));
  out.u64(payload.size());
  out.bytes(payload.buffer());
  Digest sum = hash_bytes(out.buffer().data(), out.size());
  out.raw(sum.data(), sum.size());
  return std::move(out.buffer());
}

bool looks_like_key(const std::vector<uint8_t>& bytes) {
  return bytes.size() >= sizeof kKeyMagic && std::memcmp(bytes.data(), kKeyMagic, 8) == 0;
}

KeyFile parse_key(const uint8_t* data, size_t size, const std::string& what) {
  ByteReader r(data, size, what);
  // preamble
  if (size < sizeof kKeyMagic || std::memcmp(data, kKeyMagic, sizeof kKeyMagic) != 0) {
    throw FormatError(what + ": not a corelocker key (bad magic)");
  }
  r.take(sizeof kKeyMagic, "magic");
  const uint32_t version = r.u32("version");
  if (version == 0 || version > kKeyVersion) {
    throw FormatError(what + ": key format version " + std::to_string(version) +
                      ", this build reads up to " + std::to_string(kKeyVersion));
  }
  const uint32_t header_size = r.u32("header size");
  if (header_size != kKeyHeaderSizeV1) {
    throw FormatError(what + ": header size " + std::to_string(header_size) + ", version " +
                      std::to_string(version) + " has " + std::to_string(kKeyHeaderSizeV1));
  }
  // header
  r.need(header_size, "header");
  KeyFile key;
  KeyHeader& h = key.header;
  std::memcpy(h.locked_fingerprint.data(), r.take(32, "locked fingerprint"), 32);
  std::memcpy(h.original_fingerprint.data(), r.take(32, "original fingerprint"), 32);
  std::memcpy(h.key_id.data(), r.take(16, "key id"), 16);
  const uint8_t criterion = r.u8("criterion");
  const uint8_t scope = r.u8("scope");
  const uint8_t fill = r.u8("fill");
  const uint8_t flags = r.u8("flags");
  if (criterion > 2) throw FormatError(what + ": unknown criterion code " + std::to_string(criterion));
  if (scope > 1) throw FormatError(what + ": unknown scope code " + std::to_string(scope));
  if (fill > 0) throw FormatError(what + ": unknown fill code " + std::to_string(fill));
  if (flags > 3) throw FormatError(what + ": unknown flag bits 0x" + to_hex(&flags, 1));
  h.criterion = static_cast<Criterion>(criterion);
  h.scope = static_cast<Scope>(scope);
  h.fill = static_cast<Fill>(fill);
  h.include_io = flags & 1;
  h.random_bn_units = flags & 2;
  h.ratio = r.f64("ratio");
  if (!(h.ratio >= 0.0 && h.ratio <= 1.0)) {
    throw FormatError(what + ": ratio " + std::to_string(h.ratio) + " outside [0, 1]");
  }
  h.seed = r.u64("seed");
  h.units = r.u64("unit count");
  const uint32_t entry_count = r.u32("entry count");
  const uint64_t payload_size = r.u64("payload size");
  // The whole file must be exactly preamble + header + payload + checksum.
  const uint64_t expected =
      checked_add(checked_add(kPreambleSize + header_size, payload_size, what), kChecksumSize, what);
  if (size != expected) {
    throw FormatError(what + ": file is " + std::to_string(size) + " bytes, header says " +
                      std::to_string(expected) + (size < expected ? " (truncated)" : " (trailing bytes)"));
  }
  // checksum, before anything in the payload is trusted
  Digest sum = hash_bytes(data, size - kChecksumSize);
  if (std::memcmp(sum.data(), data + size - kChecksumSize, kChecksumSize) != 0) {
    throw FormatError(what + ": checksum mismatch (the key file was altered or corrupted)");
  }
  // entries
  ByteReader p(data + kPreambleSize + header_size, payload_size, what + ": payload");
  std::set<std::string> names;
  for (uint32_t i = 0; i < entry_count; ++i) {
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
    // Check the count against the bytes that are left before allocating anything.
    p.need(checked_mul(count, 8, at), "unit indices of '" + e.tensor + "'");
    e.units.resize(count);
    std::memcpy(e.units.data(), p.take(count * 8, "unit indices"), count * 8);
    const uint64_t value_bytes =
        checked_mul(checked_mul(count, e.unit_size, at), dtype_size(e.dtype), at);
    const uint8_t* v = p.take(value_bytes, "values of '" + e.tensor + "'");
    e.values.assign(v, v + value_bytes);
    check_entry(e, what);
    key.entries.push_back(std::move(e));
  }
  if (p.remaining() != 0) {
    throw FormatError(what + ": " + std::to_string(p.remaining()) +
                      " bytes left in the payload after the last entry");
  }
  return key;
}

KeyFile read_key_file(const std::string& path) {
  auto bytes = read_file(path);
  return parse_key(bytes.data(), bytes.size(), "key '" + path + "'");
}

uint64_t write_key_file(const std::string& path, const KeyFile& key) {
  auto bytes = serialize_key(key);
  write_file_atomic(path, bytes);
  return bytes.size();
}

}  // namespace corelocker
