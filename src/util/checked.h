// Overflow-checked size arithmetic for parsers: every count read from a file goes through here
// before it is used to size an allocation or an offset.
#pragma once

#include <cstdint>
#include <string>

#include "util/error.h"

namespace corelocker {

// a * b, or FormatError naming `what` when it does not fit in 64 bits.
inline uint64_t checked_mul(uint64_t a, uint64_t b, const std::string& what) {
  uint64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) {
    throw FormatError(what + ": size overflow (" + std::to_string(a) + " x " + std::to_string(b) +
                      ")");
  }
  return r;
}

// a + b, or FormatError naming `what` when it does not fit in 64 bits.
inline uint64_t checked_add(uint64_t a, uint64_t b, const std::string& what) {
  uint64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) {
    throw FormatError(what + ": size overflow (" + std::to_string(a) + " + " + std::to_string(b) +
                      ")");
  }
  return r;
}

}  // namespace corelocker
