// `lock`, `unlock`, `fingerprint` and `inspect` for safetensors files (torch-free): the handlers in
// cmd_lock.cpp hand over to these when is_safetensors_file() says so, and so does the `corelocker`
// front binary (front_main.cpp) without loading LibTorch.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "cli/key_access.h"
#include "formats/safetensors.h"

namespace corelocker::cli {

// `lock` of a safetensors file; reads the remaining options from the subcommand `c` and refuses
// those that do not apply (UsageError). Options `c` does not define count as not given.
int lock_safetensors_command(const CLI::App& c, const std::string& model, const std::string& out,
                             const std::string& key_out, const KeyAccess& access);
// `unlock` of a locked safetensors file with one key; `threads` 0: all cores.
int unlock_safetensors_command(const std::string& model, const std::vector<std::string>& keys,
                               const std::string& out, const KeyAccess& access, unsigned threads);
// `fingerprint`: prints the safetensors fingerprint (hex).
int fingerprint_safetensors_command(const std::string& path);
// `inspect`: tensors, layers, metadata, lock and fingerprint, as text or one JSON object.
int inspect_safetensors_command(const std::string& path, bool json);

}  // namespace corelocker::cli
