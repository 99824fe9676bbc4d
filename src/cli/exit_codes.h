// How both corelocker binaries end: 0 success, 1 failure, 2 usage error, 3 authentication
// failure, with one line on stderr for every error.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "util/error.h"

namespace corelocker::cli {

// Runs `body` (which parses `app` and runs the command) and turns what it throws into the
// message and exit code of the tool.
template <typename Body>
int exit_code_of(CLI::App& app, Body&& body) {
  try {
    return body();
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "corelocker: usage error: %s\n", e.what());
    return 2;
  } catch (const AuthError& e) {
    std::fprintf(stderr, "corelocker: %s\n", e.what());
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "corelocker: error: %s\n", e.what());
    return 1;
  }
}

}  // namespace corelocker::cli
