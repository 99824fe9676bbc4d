// The lock's metadata entries of a locked safetensors file live in its header text, spliced into
// the original text so that unlocking can take them out again byte for byte.
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "formats/safetensors/st_lock_internal.h"
#include "util/error.h"

namespace corelocker::st_detail {
namespace {

// The lock's metadata is spliced into the original header text; these find where.
size_t skip_ws(const std::string& s, size_t i) {
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  return i;
}
size_t skip_string(const std::string& s, size_t i) {  // s[i] == '"'
  ++i;
  while (i < s.size() && s[i] != '"') i += s[i] == '\\' ? 2 : 1;
  return i + 1;
}
size_t skip_value(const std::string& s, size_t i) {
  if (s[i] == '"') return skip_string(s, i);
  if (s[i] == '{' || s[i] == '[') {
    int depth = 0;
    do {
      if (s[i] == '"') {
        i = skip_string(s, i);
        continue;
      }
      if (s[i] == '{' || s[i] == '[') ++depth;
      if (s[i] == '}' || s[i] == ']') --depth;
      ++i;
    } while (depth > 0 && i < s.size());
    return i;
  }
  while (i < s.size() && std::strchr(",}] \t\r\n", s[i]) == nullptr) ++i;
  return i;
}

struct SplicePoint {
  size_t at = 0;             // insert here
  bool in_metadata = false;  // inside an existing __metadata__ object
  bool object_empty = true;  // the object we insert into has no entries yet
};

// `text` is JSON the parser accepted.
SplicePoint find_splice_point(const std::string& text) {
  SplicePoint top;
  size_t i = skip_ws(text, 0);
  top.at = i + 1;  // just after the top-level '{'
  i = skip_ws(text, i + 1);
  top.object_empty = text[i] == '}';
  while (i < text.size() && text[i] != '}') {
    const size_t key_end = skip_string(text, i);
    const std::string key = nlohmann::json::parse(text.substr(i, key_end - i)).get<std::string>();
    i = skip_ws(text, key_end) + 1;  // past ':'
    i = skip_ws(text, i);
    if (key == "__metadata__") {
      SplicePoint m;
      m.at = i + 1;
      m.in_metadata = true;
      m.object_empty = text[skip_ws(text, i + 1)] == '}';
      return m;
    }
    i = skip_ws(text, skip_value(text, i));
    if (i < text.size() && text[i] == ',') i = skip_ws(text, i + 1);
  }
  return top;
}

std::string fixed20(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%020" PRIu64, v);
  return buf;
}

uint64_t parse_fixed20(const std::string& s, const std::string& what) {
  if (s.size() != 20 || s.find_first_not_of("0123456789") != std::string::npos) {
    throw FormatError(what + ": expected 20 digits, found '" + s + "'");
  }
  return std::stoull(s);
}

std::string json_str(const std::string& s) { return nlohmann::json(s).dump(); }

std::string meta_or_throw(const StHeader& h, const std::string& key, const std::string& what) {
  auto it = h.metadata.find(key);
  if (it == h.metadata.end()) throw FormatError(what + ": lock metadata '" + key + "' is missing");
  return it->second;
}

}  // namespace

// The locked header: the original text with the lock entries spliced in and space padding so
// that the data stays 8-aligned. Entry values are fixed-width so the text's length is known
// before the splice entry that records it is written.
std::string locked_header_text(const StHeader& h, const KeyHeader& key,
                               const std::string& scope_text, double ratio) {
  const SplicePoint sp = find_splice_point(h.header_text);
  const std::string& orig = h.header_text;
  char ratio_buf[64];
  std::snprintf(ratio_buf, sizeof ratio_buf, "%.17g", ratio);
  std::vector<std::pair<std::string, std::string>> entries = {
      {"corelocker.tool_version", CORELOCKER_VERSION},
      {"corelocker.key_id", to_hex(key.key_id.data(), key.key_id.size())},
      {"corelocker.criterion", to_string(key.criterion)},
      {"corelocker.scope", scope_text},
      {"corelocker.ratio", ratio_buf},
      {"corelocker.original_fingerprint", to_hex(key.original_fingerprint)},
      {"corelocker.fingerprint_scheme", std::to_string(static_cast<int>(kStFingerprintCurrent))},
      {"corelocker.original_header_blake2b", to_hex(hash_bytes(orig.data(), orig.size()))},
      {"corelocker.original_header_bytes", fixed20(orig.size())},
      {"corelocker.splice", fixed20(0) + "+" + fixed20(0)},
  };
  auto render = [&] {
    std::string t;
    for (const auto& [k, v] : entries)
      t += (t.empty() ? "" : ",") + json_str(k) + ":" + json_str(v);
    if (!sp.in_metadata) t = "\"__metadata__\":{" + t + "}";
    if (!sp.object_empty) t += ",";
    return t;
  };
  const size_t length = render().size();  // fixed width: the final values do not change it
  entries.back().second = fixed20(sp.at) + "+" + fixed20(length);
  const std::string insert = render();
  std::string out = orig.substr(0, sp.at) + insert + orig.substr(sp.at);
  while ((8 + out.size()) % 8 != 0) out += ' ';
  return out;
}

// The original header text of a locked file (checked against the hash recorded at lock time).
std::string original_header_text(const StHeader& h, const std::string& what) {
  const std::string splice = meta_or_throw(h, "corelocker.splice", what);
  if (splice.size() != 41 || splice[20] != '+')
    throw FormatError(what + ": corelocker.splice is malformed: '" + splice + "'");
  const uint64_t at = parse_fixed20(splice.substr(0, 20), what + ": corelocker.splice");
  const uint64_t length = parse_fixed20(splice.substr(21), what + ": corelocker.splice");
  const uint64_t orig_size =
      parse_fixed20(meta_or_throw(h, "corelocker.original_header_bytes", what),
                    what + ": corelocker.original_header_bytes");
  const std::string& text = h.header_text;
  if (at > orig_size || length > text.size() || at > text.size() - length ||
      orig_size - at > text.size() - at - length) {
    throw FormatError(what + ": corelocker.splice " + splice + " does not fit a header of " +
                      std::to_string(text.size()) + " bytes");
  }
  std::string orig = text.substr(0, at) + text.substr(at + length, orig_size - at);
  const std::string padding = text.substr(at + length + (orig_size - at));
  const std::string expected = meta_or_throw(h, "corelocker.original_header_blake2b", what);
  if (padding.find_first_not_of(' ') != std::string::npos ||
      to_hex(hash_bytes(orig.data(), orig.size())) != expected) {
    throw FormatError(
        what + ": the header was changed after locking (the original header no longer hashes to " +
        expected.substr(0, 16) + "...); it cannot be restored byte for byte");
  }
  return orig;
}

}  // namespace corelocker::st_detail
