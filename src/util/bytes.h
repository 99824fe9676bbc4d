// Little-endian byte writer and a bounds-checked reader for our binary formats.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "util/error.h"

namespace corelocker {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "corelocker's file formats are little-endian; big-endian hosts are not supported");

// Appends fixed-width little-endian values and raw bytes to a buffer.
class ByteWriter {
 public:
  void u8(uint8_t v) { buf_.push_back(v); }
  void u16(uint16_t v) { raw(&v, sizeof v); }
  void u32(uint32_t v) { raw(&v, sizeof v); }
  void u64(uint64_t v) { raw(&v, sizeof v); }
  void f64(double v) { raw(&v, sizeof v); }
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf_.insert(buf_.end(), b, b + n);
  }
  void bytes(const std::vector<uint8_t>& v) { raw(v.data(), v.size()); }
  void reserve(size_t n) { buf_.reserve(n); }
  size_t size() const { return buf_.size(); }
  std::vector<uint8_t>& buffer() { return buf_; }

 private:
  std::vector<uint8_t> buf_;
};

// Reads fixed-width little-endian values from a span; every read is checked against the bytes
// that are left and fails with a FormatError that names `what_` and the field.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size, std::string what)
      : data_(data), size_(size), what_(std::move(what)) {}

  uint8_t u8(const char* field) { return get<uint8_t>(field); }
  uint16_t u16(const char* field) { return get<uint16_t>(field); }
  uint32_t u32(const char* field) { return get<uint32_t>(field); }
  uint64_t u64(const char* field) { return get<uint64_t>(field); }
  double f64(const char* field) { return get<double>(field); }

  // Returns a pointer to the next n bytes and advances past them.
  const uint8_t* take(uint64_t n, const std::string& field) {
    need(n, field);
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  // Throws unless at least n bytes are left.
  void need(uint64_t n, const std::string& field) const {
    if (n > remaining()) {
      throw FormatError(what_ + ": truncated while reading " + field + " (needs " +
                        std::to_string(n) + " bytes at offset " + std::to_string(pos_) + ", " +
                        std::to_string(remaining()) + " left)");
    }
  }
  uint64_t remaining() const { return size_ - pos_; }
  uint64_t offset() const { return pos_; }
  const std::string& what() const { return what_; }

 private:
  template <typename T>
  T get(const char* field) {
    T v;
    std::memcpy(&v, take(sizeof(T), field), sizeof(T));
    return v;
  }
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::string what_;
};

}  // namespace corelocker
