// Runs the built `corelocker` binary for the CLI tests: exit code and stdout+stderr together.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace corelocker::testing {

struct CliRun {
  int code;
  std::string out;  // stdout and stderr
};

inline CliRun run(const std::string& args) {
  std::string cmd = std::string(CORELOCKER_BIN) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace corelocker::testing
