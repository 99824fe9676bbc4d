// A scratch folder per test, removed afterwards.
#pragma once

#include <cstdlib>
#include <string>

namespace corelocker::testing {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/corelocker-test-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace corelocker::testing
