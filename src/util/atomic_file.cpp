#include "util/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "util/error.h"

namespace corelocker {
namespace {

std::string os_error(const std::string& action, const std::string& path) {
  return action + " '" + path + "': " + std::strerror(errno);
}

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw IoError(os_error("cannot open", path));
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw IoError(os_error("cannot fsync", path));
}

std::string parent_dir(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Drops the cached pages of the file a PendingFile will replace. The rename frees them anyway;
// freed now, the new file's pages reuse them: the page cache holds one copy of the file instead of
// two for the length of the write, and on a virtual machine whose idle memory goes back to the host
// (this project's CI machines) pages freed a moment ago are much cheaper to take than fresh ones (a
// 1 GiB lock: 3.3-4.3 s -> 1.5-2.2 s, docs/benchmarks.md). Only a regular file with one link, which
// the rename will delete; the file itself is not touched, so a failed write still leaves it as it
// was.
void drop_cached_pages(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return;  // no file yet (or a link, or unreadable): nothing to drop
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1) {
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);  // advice only: no error to report
  }
  ::close(fd);
}

}  // namespace

std::vector<uint8_t> read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw IoError(os_error("cannot open", path));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IoError("cannot read '" + path + "': not a regular file");
  }
  std::vector<uint8_t> out(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < out.size()) {
    ssize_t n = ::read(fd, out.data() + got, out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      throw IoError(os_error("cannot read", path));
    }
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  return out;
}

PendingFile::PendingFile(std::string path) : path_(std::move(path)) {
  std::string tmpl = path_ + ".tmp-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  int fd = ::mkstemp(buf.data());
  if (fd < 0) throw IoError(os_error("cannot create a temporary file next to", path_));
  ::close(fd);
  temp_ = buf.data();
  drop_cached_pages(path_);
}

PendingFile::~PendingFile() {
  if (!committed_) ::unlink(temp_.c_str());
}

void PendingFile::commit() {
  fsync_path(temp_);
  // mkstemp creates 0600; give the file the usual permissions of a new file.
  mode_t mask = ::umask(0);
  ::umask(mask);
  ::chmod(temp_.c_str(), 0666 & ~mask);
  if (::rename(temp_.c_str(), path_.c_str()) != 0)
    throw IoError(os_error("cannot rename onto", path_));
  committed_ = true;
  int dfd = ::open(parent_dir(path_).c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

static void write_all(const std::string& path, const void* data, size_t size) {
  PendingFile pending(path);
  int fd = ::open(pending.temp_path().c_str(), O_WRONLY | O_TRUNC);
  if (fd < 0) throw IoError(os_error("cannot open", pending.temp_path()));
  const auto* p = static_cast<const uint8_t*>(data);
  size_t left = size;
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      throw IoError(os_error("cannot write", pending.temp_path()));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::close(fd) != 0) throw IoError(os_error("cannot close", pending.temp_path()));
  pending.commit();
}

void write_file_atomic(const std::string& path, const std::vector<uint8_t>& bytes) {
  write_all(path, bytes.data(), bytes.size());
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  write_all(path, bytes.data(), bytes.size());
}

bool same_file(const std::string& a, const std::string& b) {
  if (a == b) return true;
  auto entry = [](const std::string& p) -> std::string {  // resolved folder + last name
    char* real = ::realpath(parent_dir(p).c_str(), nullptr);
    if (real == nullptr) return "";
    std::string r(real);
    std::free(real);
    const auto slash = p.find_last_of('/');
    return r + "/" + (slash == std::string::npos ? p : p.substr(slash + 1));
  };
  const std::string ea = entry(a);
  if (!ea.empty() && ea == entry(b)) return true;
  struct stat sa {
  }, sb{};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace corelocker
