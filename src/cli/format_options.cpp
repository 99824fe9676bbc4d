#include "cli/format_options.h"

#include <cstdio>
#include <fstream>

#include "cli/format_report.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::cli {
namespace {

using OJson = nlohmann::ordered_json;

// Whether the file starts with the key magic (only its first bytes are read: a model may be
// large).
bool starts_like_key(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> head(8);
  if (!in.read(reinterpret_cast<char*>(head.data()), 8)) return false;
  return looks_like_key(head);
}

OJson describe_key(const KeyHeader& h, const KeyFile* key, uint64_t size) {
  OJson entries = "encrypted (give the passphrase or secret to list them)";
  if (key != nullptr) {
    entries = OJson::array();
    for (const auto& e : key->entries) {
      entries.push_back({{"tensor", e.tensor},
                         {"dtype", to_string(e.dtype)},
                         {"shape", e.shape},
                         {"unit_size", e.unit_size},
                         {"units", e.units.size()}});
    }
  }
  OJson j = {{"type", "key"},
             {"version", h.version},
             {"bytes", size},
             {"key_id", to_hex(h.key_id.data(), h.key_id.size())},
             {"locked_fingerprint", to_hex(h.locked_fingerprint)},
             {"original_fingerprint", to_hex(h.original_fingerprint)},
             {"criterion", to_string(h.criterion)},
             {"scope", to_string(h.scope)},
             {"fill", to_string(h.fill)},
             {"ratio", h.ratio},
             {"ratio_after", h.ratio_after},
             {"tier", h.tier},
             {"tiers", h.tiers},
             {"seed", h.seed},
             {"include_io", h.include_io},
             {"units", h.units},
             {"encryption", to_string(h.encryption)},
             {"entries", entries}};
  if (key != nullptr) j["values"] = key->value_count();
  if (h.encryption != Encryption::kNone && key == nullptr) j["authenticated"] = false;
  if (h.encryption == Encryption::kPassphrase)
    j["kdf"] = {{"opslimit", h.kdf_opslimit}, {"memlimit", h.kdf_memlimit}};
  return j;
}

}  // namespace

const char* const kCriterionHelp =
    "l1 | bn | random: the paper's criterion (l1 and random per layer, bn global, first and last "
    "layers left "
    "alone); default: the default lock (l1 units ranked over the whole model, first and last "
    "layers included)";
const char* const kScopeHelp =
    "layer | global (default: global; with --criterion, the paper's: layer for l1/random, global "
    "for bn)";
const char* const kIncludeIoHelp =
    "Also extract from the first and last layer (the default lock does; calibrate, bands and "
    "--tier-bands leave "
    "them out unless given this)";
const char* const kExcludeIoHelp =
    "Leave the first and last layer alone (what a named --criterion does)";

void add_lock_options(CLI::App* c, LockArgs& a) {
  c->add_option(
       "--model", a.model,
       "Model file to lock (`corelocker formats` lists the formats and what each supports)")
      ->required();
  c->add_option("--criterion", a.criterion, kCriterionHelp);
  c->add_option("--ratio", a.ratio, "Fraction of units to extract")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  c->add_option("--scope", a.scope, kScopeHelp);
  c->add_option("--seed", a.seed, "Seed for --criterion random")->capture_default_str();
  c->add_option("--units", a.units, "Units drawn by --criterion random: l1 | bn")
      ->capture_default_str();
  c->add_option("--fill", a.fill,
                "What extracted positions hold: zero | decoy | decoy-v1 (the earlier decoys, for "
                "comparison)")
      ->capture_default_str();
  auto* io = c->add_flag("--include-io", a.include_io, kIncludeIoHelp);
  c->add_flag("--exclude-io", a.exclude_io, kExcludeIoHelp)->excludes(io);
  c->add_option("--keep", a.keep,
                "Leave alone the layers whose name or weight tensor's name matches this glob "
                "pattern (repeatable; `corelocker inspect` lists the names)");
  c->add_option("--out", a.out, "Locked model to write")->required();
  c->add_option("--key-out", a.key_out,
                "Access key to write (with --tiers: NAME.tierN.EXT, N in order of application)")
      ->required();
  add_key_access(c, a.access, /*writing=*/true);
  c->add_option("--threads", a.threads, "Compute threads (default: all cores)")
      ->check(CLI::NonNegativeNumber);
}

LockRequest lock_request(const LockArgs& a) {
  LockRequest r;
  r.in = a.model;
  r.out = a.out;
  r.key_out = a.key_out;
  r.units = resolve_units(a.criterion, a.scope, a.include_io, a.exclude_io);
  r.criterion_named = !a.criterion.empty();
  r.ratio = a.ratio;
  r.fill = parse_fill(a.fill);
  r.seed = a.seed;
  if (a.units != "l1" && a.units != "bn")
    throw UsageError("units '" + a.units + "': expected l1 or bn");
  r.random_bn_units = a.units == "bn";
  r.keep = a.keep;
  r.threads = static_cast<unsigned>(a.threads);
  return r;
}

void add_unlock_options(CLI::App* c, UnlockArgs& a) {
  c->add_option("--model", a.model, "Locked model")->required();
  c->add_option("--key", a.keys, "Access key; repeat for tier keys, in order (tier 1 first)")
      ->required();
  c->add_option("--out", a.out, "Model to write (the original once every tier key is applied)")
      ->required();
  add_key_access(c, a.access, /*writing=*/false);
  c->add_option("--threads", a.threads, "Threads for hashing and writing (default: all cores)");
}

void add_fingerprint_options(CLI::App* c, InspectArgs& a) {
  c->add_option("file", a.file, "Model file")->required();
}

void add_inspect_options(CLI::App* c, InspectArgs& a) {
  c->add_option("file", a.file, "Model or key file to describe")->required();
  c->add_flag("--json", a.json, "Print one JSON object");
  add_key_access(c, a.access, /*writing=*/false);
}

int run_lock(const ModelFormat& format, LockRequest& request, const KeyAccess& access) {
  check_lock_request(format, request);
  KeyCommit keys(credentials(access));
  print_lock_report(request, format.lock(request, keys));
  return 0;
}

int run_unlock(const ModelFormat& format, const UnlockArgs& a) {
  const std::vector<KeyFile> keys = read_keys(a.keys, a.access);
  const UnlockReport report = format.unlock(a.model, keys, a.out, a.threads);
  print_unlock_report(a.model, a.out, keys.size(), report);
  return 0;
}

int run_fingerprint(const ModelFormat& format, const InspectArgs& a) {
  std::printf("%s\n", to_hex(format.fingerprint(a.file, 0)).c_str());
  return 0;
}

int run_inspect(const FormatRegistry& formats, const InspectArgs& a) {
  OJson j;
  if (starts_like_key(a.file)) {
    const auto bytes = read_file(a.file);
    const std::string what = "key '" + a.file + "'";
    const KeyHeader h = parse_key_header(bytes.data(), bytes.size(), what);
    const KeyCredentials creds = credentials(a.access);
    if (h.encryption != Encryption::kNone && creds.kind == Encryption::kNone) {
      j = describe_key(h, nullptr, bytes.size());
    } else {
      const KeyFile key = parse_key(bytes.data(), bytes.size(), what, creds);
      j = describe_key(key.header, &key, bytes.size());
    }
  } else {
    j = formats.of(a.file).describe(a.file);
  }
  j["file"] = a.file;
  if (a.json)
    std::printf("%s\n", j.dump().c_str());
  else
    print_json_as_text(j);
  return 0;
}

}  // namespace corelocker::cli
