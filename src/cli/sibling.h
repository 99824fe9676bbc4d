// The two corelocker binaries find each other in the folder of the running one.
#pragma once

#include <unistd.h>

#include <string>
#include <vector>

namespace corelocker::cli {

// `name` in the folder of the running binary (symbolic links resolved), or "" when
// /proc/self/exe cannot be read.
inline std::string sibling_binary(const std::string& name) {
  std::vector<char> buf(4096);
  const ssize_t n = ::readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) return "";
  const std::string self(buf.data(), static_cast<size_t>(n));
  return self.substr(0, self.find_last_of('/') + 1) + name;
}

}  // namespace corelocker::cli
