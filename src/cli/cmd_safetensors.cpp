// The safetensors side of `lock`, `unlock`, `fingerprint` and `inspect`.
#include "cli/cmd_safetensors.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "formats/safetensors_lock.h"
#include "keyfile/key_file.h"
#include "locking/defaults.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::cli {
namespace {

using OJson = nlohmann::ordered_json;  // inspect prints fields in the order they are added

// The value of option `name` of `c`, or `fallback` when it was not given and has no default.
std::string option_text(const CLI::App& c, const std::string& name, const std::string& fallback) {
  const CLI::Option* o = c.get_option_no_throw(name);
  if (o == nullptr || (o->count() == 0 && o->get_default_str().empty())) return fallback;
  return o->as<std::string>();
}

// Options of `lock` that have no meaning for a safetensors file (no data set, no tiers here).
void refuse_options(const CLI::App& c) {
  for (const char* name : {"--tiers",
                           "--tier-bands",
                           "--eval",
                           "--decoy-tries",
                           "--decoy-target",
                           "--units",
                           "--seed",
                           "--val-size",
                           "--val-seed",
                           "--data-dir",
                           "--test-subset",
                           "--dataset",
                           "--mean",
                           "--std",
                           "--pad",
                           "--resize",
                           "--channels",
                           "--reestimate-images",
                           "--reestimate-seed",
                           "--target-plain"}) {
    const CLI::Option* o = c.get_option_no_throw(name);
    if (o != nullptr && o->count() > 0) {
      throw UsageError(std::string(name) +
                       " does not apply to safetensors files (they are locked with l1, one key, "
                       "without evaluation)");
    }
  }
  const std::string fill = option_text(c, "--fill", "zero");
  if (fill != "zero")
    throw UsageError("--fill " + fill + ": safetensors files are locked with --fill zero only");
  const std::string criterion = option_text(c, "--criterion", "");
  if (!criterion.empty() && criterion != "l1" && criterion != "default") {
    throw UsageError("--criterion " + criterion +
                     ": safetensors files are locked with l1 only (pairing norm scales with convs "
                     "by name is not "
                     "implemented)");
  }
}

}  // namespace

int lock_safetensors_command(const CLI::App& c, const std::string& model, const std::string& out,
                             const std::string& key_out, const KeyAccess& access) {
  refuse_options(c);
  if (same_file(out, key_out)) {
    throw UsageError("--out '" + out + "' and --key-out '" + key_out + "' name the same file");
  }
  if (same_file(out, model)) {
    throw UsageError("--out '" + out + "' names the input file '" + model +
                     "'; write the locked file elsewhere");
  }
  StLockOptions o;
  const CLI::Option* ratio = c.get_option_no_throw("--ratio");
  o.ratio = ratio != nullptr ? ratio->as<double>() : 0.05;
  auto given = [&](const char* name) {
    const CLI::Option* opt = c.get_option_no_throw(name);
    return opt != nullptr && opt->count() > 0;
  };
  // The same rule as every other format: no --criterion is the default lock (global, first and
  // last layers included), --criterion l1 the paper's per-layer lock.
  const UnitChoice units =
      resolve_units(option_text(c, "--criterion", ""), option_text(c, "--scope", ""),
                    given("--include-io"), given("--exclude-io"));
  o.scope = units.scope;
  o.include_io = units.include_io;
  o.threads = static_cast<unsigned>(std::stoul(option_text(c, "--threads", "0")));
  const KeyCredentials creds = credentials(access);
  uint64_t key_bytes = 0;
  bool key_written = false;
  StLockOutcome r;
  try {
    r = lock_safetensors(model, out, o, [&](const KeyFile& key) {
      key_bytes =
          write_key_file(key_out, key, creds);  // the key first: a locked file without it is lost
      key_written = true;
    });
  } catch (...) {
    if (key_written) std::remove(key_out.c_str());
    throw;
  }
  std::printf("locked %s with %s, fill zero, at ratio %s\n", model.c_str(),
              describe_units({Criterion::kL1, o.scope, o.include_io}).c_str(),
              fixed(o.ratio, 6).c_str());
  for (const auto& name : r.excluded)
    std::printf("  left alone (first/last layer): %s\n", name.c_str());
  std::printf("  units extracted:      %llu of %llu\n", static_cast<unsigned long long>(r.units),
              static_cast<unsigned long long>(r.candidates));
  std::printf("  values extracted:     %llu of %llu float elements (%s%%)\n",
              static_cast<unsigned long long>(r.values),
              static_cast<unsigned long long>(r.elements),
              fixed(r.elements ? 100.0 * double(r.values) / double(r.elements) : 0.0, 3).c_str());
  std::printf("  key size:             %llu bytes\n", static_cast<unsigned long long>(key_bytes));
  std::printf("  locked model:         %s (fingerprint %s)\n", out.c_str(),
              to_hex(r.key.header.locked_fingerprint).substr(0, 16).c_str());
  std::printf("  key:                  %s (key id %s%s)\n", key_out.c_str(),
              to_hex(r.key.header.key_id.data(), r.key.header.key_id.size()).c_str(),
              creds.kind == Encryption::kNone ? "" : ", encrypted");
  return 0;
}

int unlock_safetensors_command(const std::string& model, const std::vector<std::string>& keys,
                               const std::string& out, const KeyAccess& access, unsigned threads) {
  if (keys.size() != 1) {
    throw UsageError("safetensors files are locked with one key; " + std::to_string(keys.size()) +
                     " given");
  }
  if (same_file(out, model)) {
    throw UsageError("--out '" + out + "' names the input file '" + model +
                     "'; write the restored file elsewhere");
  }
  const std::vector<KeyFile> key = read_keys(keys, access);
  const StUnlockOutcome r = unlock_safetensors(model, out, key.front(), threads);
  std::printf("restored %s -> %s\n  fingerprint %s (matches the original recorded in the key)\n",
              model.c_str(), out.c_str(), to_hex(r.fingerprint).c_str());
  return 0;
}

int fingerprint_safetensors_command(const std::string& path) {
  std::printf("%s\n", to_hex(st_fingerprint(StFile(path))).c_str());
  return 0;
}

int inspect_safetensors_command(const std::string& path, bool json) {
  const StFile file(path);
  const StHeader& h = file.header;
  const auto lock = st_lock_metadata(h);
  OJson tensors = OJson::array();
  for (const auto& t : h.tensors)
    tensors.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}});
  OJson layers = OJson::array();
  for (const auto& l : st_layers(h, /*include_io=*/false)) {
    layers.push_back({{"name", l.tensor},
                      {"kind", l.kind == StLayerKind::kConv ? "conv" : "linear"},
                      {"units", l.units},
                      {"unit_size", l.unit_size},
                      {"eligible", l.eligible}});
  }
  OJson metadata = OJson::object();
  for (const auto& [k, v] : h.metadata) {
    if (k.rfind(kStLockPrefix, 0) != 0) metadata[k] = v;
  }
  OJson j = {{"type", lock.empty() ? "safetensors model" : "locked safetensors model"},
             {"file", path},
             {"bytes", file.map.size()},
             {"header_bytes", h.header_size},
             {"fingerprint", to_hex(st_fingerprint(file))},
             {"metadata", metadata},
             {"layers", layers},
             {"tensors", tensors}};
  if (!lock.empty()) {
    OJson l = OJson::object();
    for (const auto& [k, v] : lock) l[k.substr(std::string(kStLockPrefix).size())] = v;
    j["lock"] = l;
  }
  if (json) {
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  // Same shape as the checkpoint text output: key: value, nested objects indented, lists of
  // objects one line each.
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it->is_object()) {
      std::printf("%s:\n", it.key().c_str());
      for (auto f = it->begin(); f != it->end(); ++f) {
        std::printf("  %s: %s\n", f.key().c_str(),
                    f->is_string() ? f->get<std::string>().c_str() : f->dump().c_str());
      }
    } else if (it->is_array()) {
      std::printf("%s: %zu\n", it.key().c_str(), it->size());
      for (const auto& e : *it) {
        std::string line;
        for (auto f = e.begin(); f != e.end(); ++f) {
          line += (line.empty() ? "" : "  ") + f.key() + "=" +
                  (f->is_string() ? f->get<std::string>() : f->dump());
        }
        std::printf("  %s\n", line.c_str());
      }
    } else {
      std::printf("%s: %s\n", it.key().c_str(),
                  it->is_string() ? it->get<std::string>().c_str() : it->dump().c_str());
    }
  }
  return 0;
}

}  // namespace corelocker::cli
