// TorchScript files a model owner would bring, made once per build folder by
// tests/fixtures/torchscript_model.py with Debian's python3-torch (scripts/setup.sh installs it).
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace corelocker::testing {

constexpr const char* kPython = "/usr/bin/python3";

inline std::string fixture_script() {
  return std::string(CORELOCKER_SOURCE_DIR) + "/tests/fixtures/torchscript_model.py";
}

// Folder NAME in the test cache holding scripted.pt, traced.pt (the same weights) and
// noparams.pt, made with `make_args` (e.g. "--train-images 3000"). Throws when Python fails.
inline std::string torchscript_fixtures(const std::string& name, const std::string& make_args) {
  const std::string dir = std::string(CORELOCKER_TEST_CACHE) + "/" + name;
  std::system(("mkdir -p '" + dir + "'").c_str());
  const int fd = ::open((dir + ".lock").c_str(), O_CREAT | O_RDWR, 0644);
  ::flock(fd, LOCK_EX);
  int rc = 0;
  if (::access((dir + "/noparams.pt").c_str(), F_OK) != 0) {
    rc = std::system(
        (std::string(kPython) + " '" + fixture_script() + "' make '" + dir + "' " + make_args)
            .c_str());
  }
  ::flock(fd, LOCK_UN);
  ::close(fd);
  if (rc != 0)
    throw std::runtime_error("making TorchScript fixtures failed (is python3-torch installed?): " +
                             dir);
  return dir;
}

}  // namespace corelocker::testing
