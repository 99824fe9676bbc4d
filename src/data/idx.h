// IDX files (the MNIST / Fashion-MNIST container), gzip-compressed or plain.
//
// Byte layout (big-endian, as defined by LeCun et al.):
//   0  u16  zero
//   2  u8   element type (0x08 = unsigned byte; the only type corelocker reads)
//   3  u8   number of dimensions d (1..4)
//   4  u32  size of dimension 0 ... u32 size of dimension d-1
//   4+4d    prod(sizes) elements, nothing after them
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace corelocker {

struct IdxArray {
  std::vector<uint32_t> dims;
  std::vector<uint8_t> data;  // row-major, prod(dims) bytes
};

// Decompressed size above which a file is refused (a guard against gzip bombs).
constexpr uint64_t kMaxIdxBytes = uint64_t{1} << 32;

// Parses IDX bytes; `what` names the source in errors. Throws FormatError.
IdxArray parse_idx(std::vector<uint8_t> bytes, const std::string& what);

// Reads a whole file, gunzipping it when it is gzip-compressed (plain files pass through).
// Throws IoError when unreadable, FormatError when the gzip stream is corrupt or too large.
std::vector<uint8_t> read_maybe_gzip(const std::string& path, uint64_t max_bytes = kMaxIdxBytes);

// read_maybe_gzip + parse_idx, with errors naming the path.
IdxArray read_idx_file(const std::string& path);

}  // namespace corelocker
