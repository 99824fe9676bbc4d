// Reading an initializer's values in each storage form: raw_data, typed fields and external data
// (formats/onnx/onnx_model.h lists the rules).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "formats/onnx/onnx_model_internal.h"
#include "util/checked.h"
#include "util/error.h"

namespace corelocker::onnx_detail {

std::string os_error(const std::string& action, const std::string& path) {
  return action + " '" + path + "': " + std::strerror(errno);
}

namespace {

using onnx::TensorProto;

std::string real_path(const std::string& path) {
  char* r = ::realpath(path.c_str(), nullptr);
  if (r == nullptr) throw IoError(os_error("cannot resolve", path));
  std::string s(r);
  std::free(r);
  return s;
}

uint64_t parse_decimal(const std::string& s, const std::string& what) {
  if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos) {
    throw FormatError(what + " '" + s + "' is not a decimal number");
  }
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), nullptr, 10);
  if (errno == ERANGE) throw FormatError(what + " '" + s + "' is out of range");
  return v;
}

// ONNX's rules for an external data location: relative, no `..`, inside the model's folder
// after resolving symlinks, a regular file. Returns the path to open.
std::string checked_location(const std::string& location, const std::string& model_dir,
                             const std::string& what) {
  if (location.empty()) throw FormatError(what + ": empty external data location");
  if (location.find('\0') != std::string::npos)
    throw FormatError(what + ": external data location contains NUL");
  if (location.front() == '/' || location.front() == '\\') {
    throw FormatError(what + ": external data location '" + location + "' is an absolute path");
  }
  size_t start = 0;
  while (start <= location.size()) {
    size_t end = location.find_first_of("/\\", start);
    if (end == std::string::npos) end = location.size();
    if (location.compare(start, end - start, "..") == 0 && end - start == 2) {
      throw FormatError(what + ": external data location '" + location + "' has a '..' component");
    }
    start = end + 1;
  }
  if (location.size() >= 2 && location[1] == ':') {
    throw FormatError(what + ": external data location '" + location + "' is an absolute path");
  }
  const std::string path = (model_dir.empty() ? std::string(".") : model_dir) + "/" + location;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw IoError(what + ": " + os_error("cannot open external data", path));
  if (!S_ISREG(st.st_mode))
    throw FormatError(what + ": external data '" + location + "' is not a regular file");
  std::string dir = real_path(model_dir.empty() ? "." : model_dir);
  if (dir.back() != '/') dir += '/';
  const std::string file = real_path(path);
  if (file.compare(0, dir.size(), dir) != 0) {
    throw FormatError(what + ": external data location '" + location +
                      "' leaves the model's folder (resolves to '" + file + "')");
  }
  return path;
}

std::vector<uint8_t> read_range(const std::string& path, uint64_t offset, uint64_t length,
                                const std::string& what) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw IoError(what + ": " + os_error("cannot open external data", path));
  std::vector<uint8_t> out(static_cast<size_t>(length));
  size_t got = 0;
  while (got < out.size()) {
    ssize_t n = ::pread(fd, out.data() + got, out.size() - got, static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      throw IoError(what + ": " + os_error("cannot read external data", path));
    }
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  return out;
}

std::vector<uint8_t> read_external(const TensorProto& t, uint64_t nbytes,
                                   const std::string& model_dir, const std::string& what) {
  std::map<std::string, std::string> keys;
  for (const auto& e : t.external_data()) {
    const std::string& k = e.key();
    if (k != "location" && k != "offset" && k != "length" && k != "checksum") {
      throw FormatError(what + ": unknown external data key '" + k + "'");
    }
    if (!keys.emplace(k, e.value()).second)
      throw FormatError(what + ": external data key '" + k + "' given twice");
  }
  if (!keys.count("location")) throw FormatError(what + ": external data without a location");
  const std::string path = checked_location(keys["location"], model_dir, what);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw IoError(what + ": " + os_error("cannot open external data", path));
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  const uint64_t offset =
      keys.count("offset") ? parse_decimal(keys["offset"], what + ": external data offset") : 0;
  if (offset > file_size) {
    throw FormatError(what + ": external data offset " + std::to_string(offset) +
                      " is past the end of '" + keys["location"] + "' (" +
                      std::to_string(file_size) + " bytes)");
  }
  const uint64_t length = keys.count("length")
                              ? parse_decimal(keys["length"], what + ": external data length")
                              : file_size - offset;
  const uint64_t end = checked_add(offset, length, what + ": external data offset + length");
  if (end > file_size) {
    throw FormatError(what + ": external data [" + std::to_string(offset) + ", " +
                      std::to_string(end) + ") is past the end of '" + keys["location"] + "' (" +
                      std::to_string(file_size) + " bytes)");
  }
  if (length != nbytes) {
    throw FormatError(what + ": external data length " + std::to_string(length) +
                      ", dims and data type need " + std::to_string(nbytes) + " bytes");
  }
  return read_range(path, offset, length, what);
}

}  // namespace

OnnxTensor read_initializer(TensorProto& t, const std::string& model_dir,
                            const std::string& file_what) {
  const std::string what = file_what + ": initializer '" + t.name() + "'";
  if (t.name().empty()) throw FormatError(file_what + ": initializer without a name");
  OnnxTensor out;
  out.name = t.name();
  out.data_type = t.data_type();
  out.dims.assign(t.dims().begin(), t.dims().end());
  const size_t esize = onnx_element_size(t.data_type());
  if (esize == 0)
    throw FormatError(what + ": data type " + onnx_type_name(t.data_type()) + " is not supported");
  if (t.has_segment()) throw FormatError(what + ": segmented tensors are not supported");
  const uint64_t numel = static_cast<uint64_t>(sat_numel(out.dims, what));
  const uint64_t nbytes = checked_mul(numel, esize, what + ": byte count");
  const bool external = t.data_location() == TensorProto::EXTERNAL;
  if (t.data_location() != TensorProto::DEFAULT && !external) {
    throw FormatError(what + ": unknown data_location " + std::to_string(t.data_location()));
  }
  if (!external && t.external_data_size() > 0)
    throw FormatError(what + ": external_data entries without data_location EXTERNAL");
  if (external) {
    if (t.has_raw_data() || typed_count(t) > 0)
      throw FormatError(what + ": external data and values in the file");
    out.bytes = read_external(t, nbytes, model_dir, what);
    out.storage = OnnxStorage::kExternal;
  } else if (t.has_raw_data()) {
    if (typed_count(t) > 0) throw FormatError(what + ": both raw_data and typed values");
    if (t.raw_data().size() != nbytes) {
      throw FormatError(what + ": raw_data has " + std::to_string(t.raw_data().size()) +
                        " bytes, dims " + dims_str(out.dims) + " of " +
                        onnx_type_name(t.data_type()) + " need " + std::to_string(nbytes));
    }
    out.bytes.assign(t.raw_data().begin(), t.raw_data().end());
    t.clear_raw_data();
    out.storage = OnnxStorage::kRaw;
  } else {
    out.bytes = decode_typed(t, numel, esize, what);
    out.storage = OnnxStorage::kTyped;
  }
  return out;
}

}  // namespace corelocker::onnx_detail
