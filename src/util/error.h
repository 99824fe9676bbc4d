// corelocker's one exception hierarchy. Every message names the thing at fault and the value
// found (and, where there is one, the value expected). The CLI maps the type to an exit code.
#pragma once

#include <stdexcept>
#include <string>

namespace corelocker {

// Base of everything the library throws on purpose. CLI exit code 1.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A file we read is malformed: bad magic, truncated, inconsistent counts. Exit code 1.
class FormatError : public Error {
 public:
  using Error::Error;
};

// The caller asked for something invalid (bad option value, unknown architecture). Exit code 2.
class UsageError : public Error {
 public:
  using Error::Error;
};

// A key does not belong to this model, or applies to another state of it. Exit code 1.
class MismatchError : public Error {
 public:
  using Error::Error;
};

// Authentication failed: wrong passphrase/secret or an altered encrypted key. Exit code 3.
class AuthError : public Error {
 public:
  using Error::Error;
};

// An operating-system level failure (open, write, rename). Exit code 1.
class IoError : public Error {
 public:
  using Error::Error;
};

}  // namespace corelocker
