#include "data/idx.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>

#include "util/checked.h"
#include "util/error.h"

namespace corelocker {
namespace {

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

}  // namespace

IdxArray parse_idx(std::vector<uint8_t> bytes, const std::string& what) {
  // header
  if (bytes.size() < 4) {
    throw FormatError(what + ": truncated IDX header (" + std::to_string(bytes.size()) +
                      " bytes, need at least 4)");
  }
  if (bytes[0] != 0 || bytes[1] != 0) {
    throw FormatError(what + ": bad IDX magic (first two bytes " + std::to_string(bytes[0]) + "," +
                      std::to_string(bytes[1]) + ", expected 0,0)");
  }
  if (bytes[2] != 0x08) {
    throw FormatError(what + ": unsupported IDX element type 0x" + std::to_string(bytes[2] >> 4) +
                      std::to_string(bytes[2] & 15) + " (expected 0x08, unsigned byte)");
  }
  const uint8_t ndim = bytes[3];
  if (ndim < 1 || ndim > 4) {
    throw FormatError(what + ": IDX has " + std::to_string(ndim) + " dimensions (expected 1..4)");
  }
  const uint64_t header = 4 + 4 * uint64_t{ndim};
  if (bytes.size() < header) {
    throw FormatError(what + ": truncated IDX header (" + std::to_string(bytes.size()) +
                      " bytes, need " + std::to_string(header) + ")");
  }
  // dimensions
  IdxArray out;
  uint64_t count = 1;
  for (uint8_t i = 0; i < ndim; ++i) {
    uint32_t d = be32(bytes.data() + 4 + 4 * i);
    out.dims.push_back(d);
    count = checked_mul(count, d, what + ": IDX dimensions");
  }
  // data: exactly prod(dims) bytes
  const uint64_t expected = checked_add(header, count, what + ": IDX size");
  if (bytes.size() != expected) {
    throw FormatError(what + ": IDX data is " + std::to_string(bytes.size() - header) +
                      " bytes, dimensions say " + std::to_string(count) +
                      (bytes.size() < expected ? " (truncated)" : " (trailing bytes)"));
  }
  bytes.erase(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(header));
  out.data = std::move(bytes);
  return out;
}

std::vector<uint8_t> read_maybe_gzip(const std::string& path, uint64_t max_bytes) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) {
    throw IoError("cannot open '" + path + "': " + std::strerror(errno ? errno : ENOENT));
  }
  std::vector<uint8_t> out;
  std::vector<uint8_t> chunk(1 << 20);
  while (true) {
    int n = gzread(f, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int code = 0;
      std::string msg = gzerror(f, &code);
      gzclose(f);
      throw FormatError("'" + path + "': corrupt gzip stream (" + msg + ")");
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > max_bytes) {
      gzclose(f);
      throw FormatError("'" + path + "': decompresses to more than " + std::to_string(max_bytes) +
                        " bytes");
    }
    out.insert(out.end(), chunk.begin(), chunk.begin() + n);
  }
  // gzread returns 0 both at a clean end and at a truncated stream; gzclose_r tells them apart.
  int rc = gzclose(f);
  if (rc == Z_BUF_ERROR) {
    throw FormatError("'" + path + "': truncated gzip stream");
  }
  if (rc != Z_OK)
    throw FormatError("'" + path + "': corrupt gzip stream (code " + std::to_string(rc) + ")");
  return out;
}

IdxArray read_idx_file(const std::string& path) {
  return parse_idx(read_maybe_gzip(path), "'" + path + "'");
}

}  // namespace corelocker
