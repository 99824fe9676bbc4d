// safetensors files (https://github.com/huggingface/safetensors), read memory-mapped and written
// streaming. Torch-free. The published layout:
//
//   offset  size  field
//   0       8     u64 little-endian header length N (this reader refuses N > kStMaxHeader)
//   8       N     UTF-8 JSON object: for each tensor NAME -> {"dtype": "F32", "shape": [d0, ...],
//                 "data_offsets": [begin, end]}, offsets relative to byte 8+N; optionally
//                 "__metadata__" -> {string: string}. Trailing spaces are allowed (writers pad
//                 the header so that the data starts 8-aligned).
//   8+N   ...     the data region: tensors in row-major little-endian order, each exactly at
//                 [begin, end); together they cover the region without gaps or overlaps.
//
// What the parser checks, in order: file size >= 8; 0 < N <= kStMaxHeader; 8+N <= file size;
// the header is JSON (valid UTF-8) and an object with no duplicate keys at any level; the
// metadata is an object of strings; every tensor entry has exactly dtype/shape/data_offsets; a
// known dtype; a shape of non-negative integers (at most kStMaxDims) whose element count times
// the dtype size (overflow-checked) equals end - begin; begin <= end <= data size; sorted by
// offset, the tensors start at 0, follow on from each other and end exactly at the file's end.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace corelocker {

constexpr uint64_t kStMaxHeader = 100'000'000;  // the reference implementation's cap
constexpr size_t kStMaxDims = 64;

// Bytes per element of a safetensors dtype name ("F32" -> 4), 0 when the name is unknown.
size_t st_dtype_size(const std::string& dtype);
// True for the float dtypes corelocker ranks and locks (F32, F64, F16, BF16).
bool st_is_float(const std::string& dtype);

struct StTensor {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // relative to the data region
  uint64_t end = 0;
  uint64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

struct StHeader {
  uint64_t header_size = 0;  // N
  uint64_t data_start = 0;   // 8 + N
  uint64_t data_size = 0;
  std::string header_text;        // the N header bytes, verbatim
  std::vector<StTensor> tensors;  // in file order (by data offset)
  bool has_metadata = false;      // "__metadata__" present (possibly empty)
  std::map<std::string, std::string> metadata;
};

// Parses and validates the preamble and header of a safetensors file of `file_size` bytes whose
// first min(file_size, 8 + N) bytes are `data` (`size` of them). `what` names the source in
// errors. Throws FormatError naming the defect and the value found.
StHeader parse_st_header(const uint8_t* data, uint64_t size, uint64_t file_size,
                         const std::string& what);

// A read-only memory map of a whole file. Pages already read can be given back with release()
// so that a pass over a file larger than RAM keeps a small resident set.
class MappedFile {
 public:
  // Maps `path`. Throws IoError.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // Drops the pages of [offset, offset + length) from this process (the page cache keeps them).
  void release(uint64_t offset, uint64_t length) const;

 private:
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// A mapped and validated safetensors file.
struct StFile {
  explicit StFile(const std::string& path);  // throws IoError / FormatError
  std::string path;
  MappedFile map;
  StHeader header;
  const uint8_t* tensor_data(const StTensor& t) const {
    return map.data() + header.data_start + t.begin;
  }
};

// True when `path` ends in ".safetensors", or its first bytes are a little-endian length N below
// the file size followed by '{' (a JSON object). Reads at most 9 bytes; false when unreadable.
bool is_safetensors_file(const std::string& path);

// The header JSON (compact, keys in the given order, tensors at consecutive offsets in the
// order given, padded with spaces so that the data starts 8-aligned) for tensors described by
// name, dtype and shape. Throws UsageError on an unknown dtype or duplicate names.
struct StSpec {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
};
std::string st_make_header(const std::vector<StSpec>& tensors,
                           const std::map<std::string, std::string>& metadata);

// Writes a safetensors file streaming: the header at construction, then the tensors' bytes in
// order through write(); commit() checks the byte count and renames the file into place.
// Nothing is left at `path` unless commit() succeeds. Throws IoError / Error.
class StWriter {
 public:
  StWriter(const std::string& path, const std::string& header_text, uint64_t data_size);
  ~StWriter();
  StWriter(const StWriter&) = delete;
  StWriter& operator=(const StWriter&) = delete;
  void write(const void* data, uint64_t size);
  // Flushes what was written to the disk (fsync), so that commit() has little left to wait for;
  // may run on another thread while nothing is written. Throws IoError.
  void sync();
  void commit();

 private:
  struct Impl;
  Impl* impl_;
};

}  // namespace corelocker
