#include "cli/format_report.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "cli/key_access.h"

namespace corelocker::cli {

void print_lock_report(const LockRequest& r, const LockReport& rep) {
  const bool tiered = rep.keys.size() > 1 || !r.tier_ratios.empty() || r.tier_bands;
  if (!tiered) {
    std::printf("locked %s with %s, fill %s, at ratio %s\n", r.in.c_str(),
                describe_units(r.units).c_str(), to_string(r.fill), fixed(r.ratio, 6).c_str());
    for (const auto& name : rep.left_alone)
      std::printf("  left alone (first/last layer): %s\n", name.c_str());
    for (const auto& name : rep.kept) std::printf("  left alone (--keep): %s\n", name.c_str());
    print_extraction(rep.units, rep.candidates, rep.values, rep.parameters, rep.keys.front().bytes);
  }
  std::printf("  locked model:         %s (fingerprint %s%s)\n", r.out.c_str(),
              to_hex(rep.locked_fingerprint).substr(0, 16).c_str(),
              rep.note.empty() ? "" : (", " + rep.note).c_str());
  for (const auto& k : rep.keys) {
    const char* encrypted = k.header.encryption == Encryption::kNone ? "" : ", encrypted";
    if (!tiered) {
      std::printf("  key:                  %s (key id %s%s)\n", k.path.c_str(), rep.key_id.c_str(),
                  encrypted);
      continue;
    }
    const auto& h = k.header;
    std::printf("  tier %u of %u: %s takes ratio %s -> %s; %lld units, %llu bytes%s\n", h.tier,
                h.tiers, k.path.c_str(), fixed(h.ratio, 4).c_str(),
                h.ratio_after > 0 ? fixed(h.ratio_after, 4).c_str() : "original",
                static_cast<long long>(h.units), static_cast<unsigned long long>(k.bytes),
                encrypted);
  }
}

void print_extraction(int64_t units, int64_t candidates, int64_t values, int64_t parameters,
                      uint64_t key_bytes) {
  std::printf("  units extracted:      %lld of %lld\n", static_cast<long long>(units),
              static_cast<long long>(candidates));
  const double fraction = parameters ? 100.0 * double(values) / double(parameters) : 0.0;
  std::printf("  parameters extracted: %lld of %lld (%s%%)\n", static_cast<long long>(values),
              static_cast<long long>(parameters), fixed(fraction, 3).c_str());
  std::printf("  key size:             %llu bytes (%s bytes per extracted value)\n",
              static_cast<unsigned long long>(key_bytes),
              fixed(values ? double(key_bytes) / double(values) : 0.0, 2).c_str());
}

void print_unlock_report(const std::string& in, const std::string& out, size_t keys,
                         const UnlockReport& rep) {
  if (rep.original) {
    std::printf("restored %s -> %s\n  fingerprint %s (matches the original recorded in the key)\n",
                in.c_str(), out.c_str(), to_hex(rep.fingerprint).c_str());
    return;
  }
  std::printf(
      "applied %zu key(s) to %s -> %s: still locked at ratio %s (%lld tier key(s) to go)\n  "
      "fingerprint %s\n",
      keys, in.c_str(), out.c_str(), fixed(rep.ratio_left, 4).c_str(),
      static_cast<long long>(rep.keys_left), to_hex(rep.fingerprint).c_str());
}

void print_json_as_text(const nlohmann::ordered_json& j, int indent) {
  const std::string pad(static_cast<size_t>(indent), ' ');
  auto text = [](const nlohmann::ordered_json& v) {
    return v.is_string() ? v.get<std::string>() : v.dump();
  };
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it->is_object()) {
      std::printf("%s%s:\n", pad.c_str(), it.key().c_str());
      print_json_as_text(*it, indent + 2);
    } else if (it->is_array() && !it->empty() && it->front().is_object()) {
      std::printf("%s%s: %zu\n", pad.c_str(), it.key().c_str(), it->size());
      for (const auto& e : *it) {
        std::string line;
        for (auto f = e.begin(); f != e.end(); ++f)
          line += (line.empty() ? "" : "  ") + f.key() + "=" + text(*f);
        std::printf("%s  %s\n", pad.c_str(), line.c_str());
      }
    } else {
      std::printf("%s%s: %s\n", pad.c_str(), it.key().c_str(), text(*it).c_str());
    }
  }
}

void print_formats(const FormatRegistry& registry, bool json) {
  const nlohmann::ordered_json m = capability_matrix(registry);
  if (json) {
    std::printf("%s\n", m.dump().c_str());
    return;
  }
  // One row a format, one column a feature; the notes under the table say why a cell is "no"
  // and how a "yes" works where that is worth knowing.
  auto width = [](Feature f) {
    return std::max<int>(3, static_cast<int>(std::strlen(feature_name(f))));
  };
  std::printf("%-12s", "format");
  for (Feature f : all_features()) std::printf(" | %-*s", width(f), feature_name(f));
  std::printf("\n");
  for (const auto& row : m) {
    char cell[64];
    std::snprintf(cell, sizeof cell, "%-12s", row["format"].get<std::string>().c_str());
    std::string line = cell;
    for (Feature f : all_features()) {
      const bool ok = row["features"][feature_name(f)]["works"].get<bool>();
      std::snprintf(cell, sizeof cell, " | %-*s", width(f), ok ? "yes" : "no");
      line += cell;
    }
    line.erase(line.find_last_not_of(' ') + 1);
    std::printf("%s\n", line.c_str());
  }
  for (const auto& row : m) {
    std::printf("\n%s: %s\n", row["format"].get<std::string>().c_str(),
                row["files"].get<std::string>().c_str());
    for (const auto& [name, cell] : row["features"].items()) {
      const std::string note = cell["note"].get<std::string>();
      if (note.empty()) continue;
      std::printf("  %s: %s%s\n", name.c_str(),
                  cell["works"].get<bool>() ? "" : "no: ", note.c_str());
    }
  }
}

}  // namespace corelocker::cli
