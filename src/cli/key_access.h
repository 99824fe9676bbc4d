// Torch-free pieces of the command line that the safetensors commands share with the rest:
// the options that open or encrypt keys, number formatting. (common.h includes this.)
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "keyfile/key_file.h"

namespace corelocker::cli {

std::string fixed(double v, int digits);  // printf("%.*f")

// --passphrase-file / --passphrase-env / --secret-file (and --kdf when writing keys).
struct KeyAccess {
  std::string passphrase_file, passphrase_env, secret_file, kdf = "moderate";
};
void add_key_access(CLI::App* c, KeyAccess& k, bool writing);
// Credentials from the options (kind kNone when none given). Throws UsageError / IoError.
KeyCredentials credentials(const KeyAccess& k);
// Reads keys with the same credentials.
std::vector<KeyFile> read_keys(const std::vector<std::string>& paths, const KeyAccess& k);

}  // namespace corelocker::cli
