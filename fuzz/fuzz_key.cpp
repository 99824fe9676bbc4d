// libFuzzer harness for the key parser: any bytes, with and without credentials, must either
// parse or throw a corelocker::Error; never crash, hang or read out of bounds.
#include <cstddef>
#include <cstdint>

#include "keyfile/key_file.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static corelocker::KeyCredentials secret = [] {
    corelocker::KeyCredentials c;
    c.kind = corelocker::Encryption::kSecret;
    c.secret.fill(7);
    return c;
  }();
  try {
    corelocker::parse_key_header(data, size, "fuzz");
  } catch (const corelocker::Error&) {
  }
  try {
    corelocker::KeyFile k = corelocker::parse_key(data, size, "fuzz", secret);
    // Whatever parses must serialise and parse back to the same entries.
    auto bytes = corelocker::serialize_key(k);
    corelocker::KeyFile again = corelocker::parse_key(bytes.data(), bytes.size(), "again");
    if (again.entries.size() != k.entries.size()) __builtin_trap();
  } catch (const corelocker::Error&) {
  }
  return 0;
}
