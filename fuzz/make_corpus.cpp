// Writes seed inputs for the key fuzzer: a plain key, a secret-encrypted key.
#include <cstdio>
#include <string>

#include "keyfile/key_file.h"
#include "util/atomic_file.h"

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : ".";
  corelocker::KeyFile k;
  k.header.ratio = 0.05;
  k.entries.push_back({"layer1.0.conv1.weight",
                       corelocker::DType::kF32,
                       {4, 2, 3, 3},
                       9,
                       {1, 5},
                       std::vector<uint8_t>(72, 1)});
  k.entries.push_back(
      {"fc.weight", corelocker::DType::kF16, {10, 4}, 1, {0, 3, 39}, std::vector<uint8_t>(6, 2)});
  corelocker::write_key_file(dir + "/plain.clk", k);
  corelocker::KeyCredentials c;
  c.kind = corelocker::Encryption::kSecret;
  c.secret.fill(7);
  corelocker::write_key_file(dir + "/secret.clk", k, c);
  return 0;
}
