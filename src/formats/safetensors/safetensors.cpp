#include "formats/safetensors/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "util/atomic_file.h"
#include "util/checked.h"
#include "util/error.h"

namespace corelocker {
namespace {

using Json = nlohmann::json;

struct DTypeInfo {
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {{"F64", 8},  {"F32", 4},     {"F16", 2},    {"BF16", 2},
                                 {"I64", 8},  {"I32", 4},     {"I16", 2},    {"I8", 1},
                                 {"U64", 8},  {"U32", 4},     {"U16", 2},    {"U8", 1},
                                 {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};

std::string os_error(const std::string& action, const std::string& path) {
  return action + " '" + path + "': " + std::strerror(errno);
}

// Parses the header JSON, refusing duplicate keys in any object (nlohmann keeps the last one
// silently, and two tensors of one name would make the file ambiguous).
Json parse_json_no_duplicates(const std::string& text, const std::string& what) {
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  auto cb = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) keys.emplace_back();
    if (event == Json::parse_event_t::object_end && !keys.empty()) keys.pop_back();
    if (event == Json::parse_event_t::key && !keys.empty() &&
        !keys.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  Json j;
  try {
    j = Json::parse(text, cb);
  } catch (const Json::exception& e) {
    throw FormatError(what + ": header is not valid JSON (" + e.what() + ")");
  }
  if (!duplicate.empty())
    throw FormatError(what + ": duplicate key '" + duplicate + "' in the header");
  return j;
}

uint64_t read_u64(const Json& v, const std::string& field) {
  if (!v.is_number_unsigned())
    throw FormatError(field + ": expected a non-negative integer, found " + v.dump());
  return v.get<uint64_t>();
}

}  // namespace

size_t st_dtype_size(const std::string& dtype) {
  for (const auto& d : kDTypes) {
    if (dtype == d.name) return d.size;
  }
  return 0;
}

bool st_is_float(const std::string& dtype) {
  return dtype == "F32" || dtype == "F64" || dtype == "F16" || dtype == "BF16";
}

uint64_t StTensor::numel() const {
  uint64_t n = 1;
  for (auto d : shape) n *= d;  // validated against the byte count when parsed
  return n;
}

StHeader parse_st_header(const uint8_t* data, uint64_t size, uint64_t file_size,
                         const std::string& what) {
  StHeader h;
  // preamble
  if (file_size < 8 || size < 8) {
    throw FormatError(what + ": truncated: " + std::to_string(file_size) +
                      " bytes, a safetensors file needs at least 8");
  }
  std::memcpy(&h.header_size, data, 8);
  if (h.header_size == 0) throw FormatError(what + ": header length is 0");
  if (h.header_size > kStMaxHeader) {
    throw FormatError(what + ": header length " + std::to_string(h.header_size) +
                      " exceeds the limit of " + std::to_string(kStMaxHeader) + " bytes");
  }
  if (h.header_size > file_size - 8) {
    throw FormatError(what + ": header length " + std::to_string(h.header_size) +
                      " runs past the end of the file (" + std::to_string(file_size) + " bytes)");
  }
  if (size < 8 + h.header_size) throw FormatError(what + ": header bytes not available");
  h.data_start = 8 + h.header_size;
  h.data_size = file_size - h.data_start;
  h.header_text.assign(reinterpret_cast<const char*>(data + 8), h.header_size);

  // header JSON
  const Json j = parse_json_no_duplicates(h.header_text, what);
  if (!j.is_object())
    throw FormatError(what + ": header is a JSON " + std::string(j.type_name()) +
                      ", expected an object");

  // entries
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const Json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object())
        throw FormatError(what + ": __metadata__ is a JSON " + std::string(v.type_name()) +
                          ", expected an object");
      h.has_metadata = true;
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          throw FormatError(what + ": __metadata__ entry '" + m.key() + "' is a JSON " +
                            std::string(m.value().type_name()) + ", expected a string");
        }
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string field = what + ": tensor '" + name + "'";
    if (name.empty()) throw FormatError(what + ": a tensor has an empty name");
    if (!v.is_object())
      throw FormatError(field + " is a JSON " + std::string(v.type_name()) +
                        ", expected an object");
    for (auto f = v.begin(); f != v.end(); ++f) {
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets") {
        throw FormatError(field + ": unknown field '" + f.key() + "'");
      }
    }
    if (!v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets")) {
      throw FormatError(field + ": needs dtype, shape and data_offsets");
    }
    StTensor t;
    t.name = name;
    if (!v["dtype"].is_string())
      throw FormatError(field + ": dtype is not a string: " + v["dtype"].dump());
    t.dtype = v["dtype"].get<std::string>();
    const size_t esize = st_dtype_size(t.dtype);
    if (esize == 0) throw FormatError(field + ": unknown dtype '" + t.dtype + "'");
    const Json& shape = v["shape"];
    if (!shape.is_array()) throw FormatError(field + ": shape is not an array: " + shape.dump());
    if (shape.size() > kStMaxDims) {
      throw FormatError(field + ": " + std::to_string(shape.size()) + " dimensions, at most " +
                        std::to_string(kStMaxDims));
    }
    uint64_t numel = 1;
    for (const auto& d : shape) {
      t.shape.push_back(read_u64(d, field + " shape"));
      numel = checked_mul(numel, t.shape.back(), field + " shape");
    }
    const uint64_t nbytes = checked_mul(numel, esize, field + " byte size");
    const Json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2)
      throw FormatError(field + ": data_offsets is not [begin, end]: " + off.dump());
    t.begin = read_u64(off[0], field + " data_offsets");
    t.end = read_u64(off[1], field + " data_offsets");
    if (t.begin > t.end) {
      throw FormatError(field + ": data_offsets [" + std::to_string(t.begin) + ", " +
                        std::to_string(t.end) + "] end before they begin");
    }
    if (t.end > h.data_size) {
      throw FormatError(field + ": data_offsets end at " + std::to_string(t.end) +
                        ", past the data region of " + std::to_string(h.data_size) + " bytes");
    }
    if (t.end - t.begin != nbytes) {
      throw FormatError(field + ": data_offsets span " + std::to_string(t.end - t.begin) +
                        " bytes, shape and dtype " + t.dtype + " need " + std::to_string(nbytes));
    }
    h.tensors.push_back(std::move(t));
  }

  // coverage: in offset order the tensors must tile the data region exactly
  std::stable_sort(h.tensors.begin(), h.tensors.end(), [](const StTensor& a, const StTensor& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t at = 0;
  const StTensor* prev = nullptr;
  for (const auto& t : h.tensors) {
    if (t.begin < at) {
      throw FormatError(what + ": tensor '" + t.name + "' at [" + std::to_string(t.begin) + ", " +
                        std::to_string(t.end) + "] overlaps tensor '" + prev->name + "' at [" +
                        std::to_string(prev->begin) + ", " + std::to_string(prev->end) + "]");
    }
    if (t.begin > at) {
      throw FormatError(what + ": gap in the data region: bytes [" + std::to_string(at) + ", " +
                        std::to_string(t.begin) + ") belong to no tensor (tensor '" + t.name +
                        "' begins at " + std::to_string(t.begin) + ")");
    }
    at = t.end;
    prev = &t;
  }
  if (at != h.data_size) {
    throw FormatError(what + ": the tensors cover " + std::to_string(at) +
                      " bytes of the data region, the file has " + std::to_string(h.data_size) +
                      " (trailing bytes)");
  }
  return h;
}

MappedFile::MappedFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw IoError(os_error("cannot open", path));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IoError("cannot read '" + path + "': not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      throw IoError(os_error("cannot map", path));
    }
    ::madvise(p, size_, MADV_SEQUENTIAL);
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

void MappedFile::release(uint64_t offset, uint64_t length) const {
  if (data_ == nullptr || length == 0) return;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  // Only whole pages inside the range; the partial pages at its ends go with their neighbours.
  const uint64_t first = (offset + page - 1) / page * page;
  const uint64_t last = std::min(offset + length, size_) / page * page;
  if (last > first) ::madvise(const_cast<uint8_t*>(data_) + first, last - first, MADV_DONTNEED);
}

StFile::StFile(const std::string& p) : path(p), map(p) {
  header = parse_st_header(map.data(), map.size(), map.size(), "safetensors file '" + p + "'");
}

bool is_safetensors_file(const std::string& path) {
  const std::string ext = ".safetensors";
  if (path.size() >= ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0)
    return true;
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return false;
  struct stat st {};
  uint8_t b[9] = {};
  const bool ok = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && ::pread(fd, b, sizeof b, 0) == 9;
  ::close(fd);
  if (!ok) return false;
  uint64_t n = 0;
  std::memcpy(&n, b, 8);
  return n > 0 && n <= kStMaxHeader && n <= static_cast<uint64_t>(st.st_size) - 8 && b[8] == '{';
}

std::string st_make_header(const std::vector<StSpec>& tensors,
                           const std::map<std::string, std::string>& metadata) {
  std::string out = "{";
  if (!metadata.empty()) out += "\"__metadata__\":" + Json(metadata).dump();
  std::set<std::string> names;
  uint64_t at = 0;
  for (const auto& t : tensors) {
    const size_t esize = st_dtype_size(t.dtype);
    if (esize == 0)
      throw UsageError("tensor '" + t.name + "': unknown safetensors dtype '" + t.dtype + "'");
    if (t.name.empty() || t.name == "__metadata__" || !names.insert(t.name).second) {
      throw UsageError("tensor name '" + t.name + "' is empty, reserved or given twice");
    }
    uint64_t n = esize;
    for (auto d : t.shape) n = checked_mul(n, d, "tensor '" + t.name + "'");
    const Json entry = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {at, at + n}}};
    if (out.size() > 1) out += ",";
    out += Json(t.name).dump() + ":" + entry.dump();
    at = checked_add(at, n, "tensor '" + t.name + "'");
  }
  out += "}";
  while ((8 + out.size()) % 8 != 0) out += ' ';
  return out;
}

struct StWriter::Impl {
  PendingFile pending;
  int fd = -1;
  uint64_t expected = 0;
  uint64_t written = 0;
  explicit Impl(const std::string& path) : pending(path) {}
};

namespace {
void write_fully(int fd, const void* data, uint64_t size, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, std::min<uint64_t>(size, uint64_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw IoError(os_error("cannot write", path));
    p += n;
    size -= static_cast<uint64_t>(n);
  }
}
}  // namespace

StWriter::StWriter(const std::string& path, const std::string& header_text, uint64_t data_size)
    : impl_(new Impl(path)) {
  try {
    impl_->fd = ::open(impl_->pending.temp_path().c_str(), O_WRONLY | O_TRUNC);
    if (impl_->fd < 0) throw IoError(os_error("cannot open", impl_->pending.temp_path()));
    impl_->expected = data_size;
    const uint64_t n = header_text.size();
    write_fully(impl_->fd, &n, 8, impl_->pending.temp_path());
    write_fully(impl_->fd, header_text.data(), n, impl_->pending.temp_path());
  } catch (...) {
    if (impl_->fd >= 0) ::close(impl_->fd);
    delete impl_;
    throw;
  }
}

StWriter::~StWriter() {
  if (impl_->fd >= 0) ::close(impl_->fd);
  delete impl_;
}

void StWriter::write(const void* data, uint64_t size) {
  if (size > impl_->expected - impl_->written)
    throw Error("safetensors writer: more data than the header describes");
  write_fully(impl_->fd, data, size, impl_->pending.temp_path());
  impl_->written += size;
}

void StWriter::sync() {
  if (::fsync(impl_->fd) != 0) throw IoError(os_error("cannot flush", impl_->pending.temp_path()));
}

void StWriter::commit() {
  if (impl_->written != impl_->expected) {
    throw Error("safetensors writer: " + std::to_string(impl_->written) +
                " data bytes written, the header describes " + std::to_string(impl_->expected));
  }
  const int fd = impl_->fd;
  impl_->fd = -1;
  if (::close(fd) != 0) throw IoError(os_error("cannot close", impl_->pending.temp_path()));
  impl_->pending.commit();
}

}  // namespace corelocker
