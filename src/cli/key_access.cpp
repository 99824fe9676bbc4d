#include "cli/key_access.h"

#include <sodium.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::cli {

std::string fixed(double v, int digits) {
  char b[32];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

void add_key_access(CLI::App* c, KeyAccess& k, bool writing) {
  const std::string verb = writing ? "Encrypt" : "Decrypt";
  c->add_option("--passphrase-file", k.passphrase_file,
                verb + " the key with the passphrase in this file (one trailing newline ignored)");
  c->add_option("--passphrase-env", k.passphrase_env,
                verb + " the key with the passphrase in this environment variable");
  c->add_option("--secret-file", k.secret_file,
                verb + " the key with the raw 32-byte secret in this file");
  if (writing) {
    c->add_option("--kdf", k.kdf,
                  "Argon2id cost for a passphrase: interactive | moderate | sensitive")
        ->capture_default_str();
  }
}

KeyCredentials credentials(const KeyAccess& k) {
  KeyCredentials c;
  const int given = !k.passphrase_file.empty() + !k.passphrase_env.empty() + !k.secret_file.empty();
  if (given > 1)
    throw UsageError("give only one of --passphrase-file, --passphrase-env, --secret-file");
  set_kdf_preset(c, k.kdf);
  if (!k.passphrase_file.empty()) {
    auto bytes = read_file(k.passphrase_file);
    c.passphrase.assign(bytes.begin(), bytes.end());
    sodium_memzero(bytes.data(), bytes.size());
    if (!c.passphrase.empty() && c.passphrase.back() == '\n') c.passphrase.pop_back();
    if (!c.passphrase.empty() && c.passphrase.back() == '\r') c.passphrase.pop_back();
    if (c.passphrase.empty())
      throw UsageError("passphrase file '" + k.passphrase_file + "' is empty");
    c.kind = Encryption::kPassphrase;
  } else if (!k.passphrase_env.empty()) {
    const char* v = std::getenv(k.passphrase_env.c_str());
    if (v == nullptr || *v == '\0')
      throw UsageError("environment variable '" + k.passphrase_env + "' is unset or empty");
    c.passphrase = v;
    c.kind = Encryption::kPassphrase;
  } else if (!k.secret_file.empty()) {
    auto bytes = read_file(k.secret_file);
    if (bytes.size() != c.secret.size()) {
      throw UsageError("secret file '" + k.secret_file + "' has " + std::to_string(bytes.size()) +
                       " bytes, expected 32");
    }
    std::memcpy(c.secret.data(), bytes.data(), bytes.size());
    sodium_memzero(bytes.data(), bytes.size());
    c.kind = Encryption::kSecret;
  }
  return c;
}

std::vector<KeyFile> read_keys(const std::vector<std::string>& paths, const KeyAccess& k) {
  const KeyCredentials c = credentials(k);
  std::vector<KeyFile> keys;
  for (const auto& p : paths) keys.push_back(read_key_file(p, c));
  return keys;
}

}  // namespace corelocker::cli
