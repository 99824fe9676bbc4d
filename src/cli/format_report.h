// What `lock`, `unlock`, `inspect` and `formats` print for any model format (formats/format.h).
// Torch-free: both binaries print with these.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "formats/format.h"

namespace corelocker::cli {

// "locked IN with UNITS, fill F, at ratio R", the counts, the locked model and key lines (one
// line a tier key with tiers).
void print_lock_report(const LockRequest& request, const LockReport& report);
// The counts lines of a lock: units, parameters extracted, key size (also `calibrate --out`).
void print_extraction(int64_t units, int64_t candidates, int64_t values, int64_t parameters,
                      uint64_t key_bytes);
void print_unlock_report(const std::string& in, const std::string& out, size_t keys,
                         const UnlockReport& report);
// `inspect`'s text form: key: value, nested objects indented, lists of objects one line each.
void print_json_as_text(const nlohmann::ordered_json& j, int indent = 0);
// `corelocker formats`: the capability matrix of `registry`, as a table or one JSON array.
void print_formats(const FormatRegistry& registry, bool json);

}  // namespace corelocker::cli
