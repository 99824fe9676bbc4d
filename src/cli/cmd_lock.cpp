// `lock`, `unlock`, `fingerprint`, `inspect`.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/format_report.h"
#include "cli/progress.h"
#include "control/calibrate.h"
#include "data/dataset.h"
#include "eval/evaluate.h"
#include "formats/evaluation.h"
#include "formats/format.h"
#include "keyfile/key_file.h"
#include "locking/fingerprint.h"
#include "locking/lock.h"
#include "models/checkpoint.h"
#include "train/trainer.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::cli {

std::vector<double> parse_ratios(const std::string& list) {
  std::vector<double> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      out.push_back(std::stod(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw UsageError("ratio list '" + list + "': '" + item + "' is not a number");
    }
  }
  return out;
}

void add_lock(CLI::App& app) {
  auto* c = app.add_subcommand("lock", "Extract the most significant units into an access key");
  static std::string model_path, out, key_out, criterion, scope, units = "l1", fill = "zero", tiers,
                                                                 tier_bands;
  static ValArgs val;
  static double ratio = 0.05;
  static uint64_t seed = 0;
  static bool include_io = false, exclude_io = false, eval_after = false, target_plain = false;
  static EffectiveArgs effective;
  static int decoy_tries = 8;
  static std::string decoy_target = "zero";
  static std::vector<std::string> keep;
  static Common common;
  static KeyAccess access;
  static InputArgs input;
  c->add_option("--model", model_path,
                "Model checkpoint, TorchScript, safetensors or ONNX file to lock")
      ->required();
  c->add_option("--criterion", criterion, kCriterionHelp);
  c->add_option("--ratio", ratio, "Fraction of units to extract")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  c->add_option("--tiers", tiers,
                "Tiered keys: comma-separated ratios, e.g. 0.005,0.02,0.05 (replaces --ratio)");
  c->add_option(
      "--tier-bands", tier_bands,
      "Tiered keys by utility: comma-separated top-1 bands, e.g. 30-35,60-65; each tier's ratio is "
      "calibrated on a validation split of the training data");
  add_val_args(c, val);
  c->add_flag("--target-plain", target_plain,
              "--tier-bands: bands of the plain top-1 (default: of the effective top-1, after "
              "BatchNorm re-estimation "
              "and pruning)");
  c->add_option("--scope", scope, kScopeHelp);
  c->add_option("--seed", seed, "Seed for --criterion random")->capture_default_str();
  c->add_option("--units", units, "Units drawn by --criterion random: l1 | bn")
      ->capture_default_str();
  c->add_option("--fill", fill,
                "What extracted positions hold: zero | decoy | decoy-v1 (the earlier decoys, for "
                "comparison)")
      ->capture_default_str();
  c->add_option("--decoy-tries", decoy_tries,
                "With --fill decoy (single ratio): draw this many decoy fills and keep the one "
                "that --decoy-target "
                "picks by top-1 on the validation split (1: no search, no data needed)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  c->add_option(
       "--decoy-target", decoy_target,
       "zero: the draw nearest the zero-filled lock's accuracy (same utility, hidden positions); "
       "lowest: the lowest accuracy")
      ->capture_default_str()
      ->check(CLI::IsMember({"zero", "lowest"}));
  c->add_option("--keep", keep,
                "Leave the layers whose weight tensor's name matches this glob pattern alone "
                "(repeatable; formats lists where it applies)");
  auto* io = c->add_flag("--include-io", include_io, kIncludeIoHelp);
  c->add_flag("--exclude-io", exclude_io, kExcludeIoHelp)->excludes(io);
  c->add_option("--out", out, "Locked model to write")->required();
  c->add_option("--key-out", key_out,
                "Access key to write (with --tiers: NAME.tierN.EXT, N in order of application)")
      ->required();
  c->add_flag("--eval", eval_after,
              "Evaluate the locked model (every tier) on the test split: plain, after BatchNorm "
              "re-estimation and "
              "pruning, and the effective top-1 (the highest of them)");
  add_effective_args(c, effective);
  add_key_access(c, access, /*writing=*/true);
  add_threads(c, common);
  add_data(c, common);
  add_input_args(c, input);
  handlers()[c] = [c] {
    const ModelFormat& format = model_formats().of(model_path);
    if (!tiers.empty() && !tier_bands.empty())
      throw UsageError("give --tiers or --tier-bands, not both");
    LockRequest r;
    r.in = model_path;
    r.out = out;
    r.key_out = key_out;
    r.units = tier_bands.empty() ? resolve_units(criterion, scope, include_io, exclude_io)
                                 : band_units(criterion, scope, include_io, exclude_io);
    r.criterion_named = !criterion.empty();
    r.ratio = ratio;
    if (!tiers.empty()) r.tier_ratios = parse_ratios(tiers);
    r.tier_bands = !tier_bands.empty();
    r.fill = parse_fill(fill);
    r.seed = seed;
    if (units != "l1" && units != "bn")
      throw UsageError("units '" + units + "': expected l1 or bn");
    r.random_bn_units = units == "bn";
    r.keep = keep;
    check_lock_request(format, r);
    const Support evaluates = format.supports(Feature::kEvaluate);
    if (!evaluates.works) {
      // Options that only matter when the model runs are refused, not silently dropped.
      for (const char* name : {"--eval", "--tier-bands", "--target-plain", "--decoy-tries",
                               "--decoy-target", "--val-size", "--val-seed", "--data-dir",
                               "--test-subset", "--dataset", "--mean", "--std", "--pad", "--resize",
                               "--channels", "--reestimate-images", "--reestimate-seed"}) {
        if (c->get_option(name)->count() > 0) {
          throw UsageError(std::string(name) + ": not for '" + model_path + "' (" + format.name() +
                           "): " + evaluates.note);
        }
      }
    }
    r.threads = static_cast<unsigned>(apply_threads(common));
    std::vector<Band> bands;
    if (r.tier_bands) {
      std::stringstream ss(tier_bands);
      for (std::string item; std::getline(ss, item, ',');) bands.push_back(parse_band(item));
    }
    std::string after_lock;  // the single lock's evaluation, printed after the lock's report
    LockEvaluation ev;
    ev.input_given = input_args_given(input);
    ev.describe_input = [](ModelMeta& meta, bool stored, const std::string& path) {
      apply_input_args(input, meta, stored, path);
    };
    ev.test = [](const ModelMeta& meta) { return test_set(meta, common); };
    ev.validation = [](const ModelMeta& meta) { return validation_set(meta, common, val); };
    ev.unlabelled = [](const ModelMeta& meta) { return effective_images(meta, common, effective); };
    ev.effective = effective.options();
    ev.evaluate_locked = eval_after;
    ev.decoy_tries = decoy_tries;
    ev.decoy_target =
        decoy_target == "lowest" ? DecoySearch::Target::kLowest : DecoySearch::Target::kMatchZero;
    ev.tier_bands = bands;
    ev.target_plain = target_plain;
    ev.on_band = [](const Band& b, const Calibration& cal) {
      const Probe& p = cal.chosen;
      std::printf("band %s-%s%%: ratio %s, validation top-1 %s%%%s (%zu evaluations)\n",
                  fixed(b.low, 1).c_str(), fixed(b.high, 1).c_str(), fixed(p.ratio, 6).c_str(),
                  pct(p.plain_top1).c_str(),
                  target_plain ? "" : (", effective " + pct(p.top1) + "%").c_str(),
                  cal.probes.size());
    };
    ev.on_decoys = [](int n, DecoySearch::Target target, int64_t images) {
      std::printf("decoy fill: kept the %s of %d draws (top-1 on %lld validation images)\n",
                  target == DecoySearch::Target::kLowest ? "lowest" : "one nearest zero fill", n,
                  static_cast<long long>(images));
    };
    ev.on_tiers = [&r](const std::vector<double>&) {
      std::printf("tiered lock of %s with %s, fill %s\n", r.in.c_str(),
                  describe_units(r.units).c_str(), to_string(r.fill));
    };
    ev.on_evaluated = [&after_lock](double tier_ratio, const EffectiveEval& e,
                                    const std::string& runtime) {
      const std::string label =
          tier_ratio > 0 ? "locked at " + fixed(tier_ratio, 4) + ":" : "locked accuracy:";
      char line[512];
      std::snprintf(line, sizeof line, "  %-21s %s (top-3 %s%%%s)\n", label.c_str(),
                    effective_text(e).c_str(), pct(e.plain.top3).c_str(),
                    runtime.empty() ? "" : ("; " + runtime).c_str());
      if (tier_ratio > 0)
        std::fputs(line, stdout);
      else
        after_lock += line;
    };
    if (evaluates.works) r.evaluation = &ev;
    KeyCommit keys(credentials(access));
    const LockReport report = format.lock(r, keys);
    print_lock_report(r, report);
    std::fputs(after_lock.c_str(), stdout);
    return 0;
  };
}

// ---------------------------------------------------------------- unlock
void add_unlock(CLI::App& app) {
  auto* c =
      app.add_subcommand("unlock", "Restore the original model from a locked model and its key(s)");
  static std::string model_path, out;
  static std::vector<std::string> key_paths;
  static KeyAccess access;
  static unsigned threads = 0;
  c->add_option("--model", model_path, "Locked model")->required();
  c->add_option("--key", key_paths, "Access key; repeat for tier keys, in order (tier 1 first)")
      ->required();
  c->add_option("--out", out, "Model to write (the original once every tier key is applied)")
      ->required();
  add_key_access(c, access, /*writing=*/false);
  c->add_option("--threads", threads,
                "Threads for hashing and writing a safetensors file (default: all cores)");
  handlers()[c] = [] {
    const ModelFormat& format = model_formats().of(model_path);
    const std::vector<KeyFile> keys = read_keys(key_paths, access);
    const UnlockReport report = format.unlock(model_path, keys, out, threads);
    print_unlock_report(model_path, out, keys.size(), report);
    return 0;
  };
}

// ---------------------------------------------------------------- fingerprint
void add_fingerprint(CLI::App& app) {
  auto* c = app.add_subcommand("fingerprint", "Print a model's fingerprint (BLAKE2b-256, hex)");
  static std::string path;
  c->add_option("file", path, "Model checkpoint")->required();
  handlers()[c] = [] {
    std::printf("%s\n", to_hex(model_formats().of(path).fingerprint(path, 0)).c_str());
    return 0;
  };
}

// ---------------------------------------------------------------- inspect
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

void add_inspect(CLI::App& app) {
  auto* c = app.add_subcommand("inspect", "Describe a checkpoint, a locked model or a key");
  static std::string path;
  static bool json = false;
  static KeyAccess access;
  c->add_option("file", path, "File to describe")->required();
  c->add_flag("--json", json, "Print one JSON object");
  add_key_access(c, access, /*writing=*/false);
  handlers()[c] = [] {
    OJson j;
    if (starts_like_key(path)) {
      const auto bytes = read_file(path);
      const std::string what = "key '" + path + "'";
      const KeyHeader h = parse_key_header(bytes.data(), bytes.size(), what);
      const KeyCredentials creds = credentials(access);
      if (h.encryption != Encryption::kNone && creds.kind == Encryption::kNone) {
        j = describe_key(h, nullptr, bytes.size());
      } else {
        const KeyFile key = parse_key(bytes.data(), bytes.size(), what, creds);
        j = describe_key(key.header, &key, bytes.size());
      }
    } else {
      j = model_formats().of(path).describe(path);
    }
    j["file"] = path;
    if (json)
      std::printf("%s\n", j.dump().c_str());
    else
      print_json_as_text(j);
    return 0;
  };
}

// ---------------------------------------------------------------- formats
void add_formats(CLI::App& app) {
  auto* c = app.add_subcommand(
      "formats", "Print what each model format supports (the capability matrix) and why not");
  static bool json = false;
  c->add_flag("--json", json, "Print one JSON array");
  handlers()[c] = [] {
    print_formats(model_formats(), json);
    return 0;
  };
}

}  // namespace corelocker::cli
