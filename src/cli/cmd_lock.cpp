// `lock`, `unlock`, `fingerprint`, `inspect`.
#include <csignal>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cli/cmd_onnx.h"
#include "cli/cmd_safetensors.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/progress.h"
#include "control/calibrate.h"
#include "data/dataset.h"
#include "eval/evaluate.h"
#include "keyfile/key_file.h"
#include "locking/fingerprint.h"
#include "locking/lock.h"
#include "models/checkpoint.h"
#include "train/trainer.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::cli {

// "model.clk" -> "model.tier1.clk" (tier 1 is applied first).
std::string tier_path(const std::string& key_out, int tier) {
  const auto slash = key_out.find_last_of('/');
  const auto dot = key_out.find_last_of('.');
  const std::string t = ".tier" + std::to_string(tier);
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return key_out + t;
  return key_out.substr(0, dot) + t + key_out.substr(dot);
}

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
    if (is_safetensors_file(model_path) && input_args_given(input)) {
      // These describe how to feed a model we run; a lock of this format never runs it.
      throw UsageError(
          "--dataset, --mean, --std, --pad, --resize and --channels apply to checkpoints, "
          "TorchScript and ONNX files, not to '" +
          model_path + "' (nothing is evaluated or stored)");
    }
    if (is_safetensors_file(model_path))
      return lock_safetensors_command(*c, model_path, out, key_out, access);
    apply_threads(common);
    const UnitChoice chosen_units = tier_bands.empty()
                                        ? resolve_units(criterion, scope, include_io, exclude_io)
                                        : band_units(criterion, scope, include_io, exclude_io);
    LockOptions o = lock_options_for(chosen_units, ratio);
    o.seed = seed;
    o.fill = parse_fill(fill);
    if (units != "l1" && units != "bn")
      throw UsageError("units '" + units + "': expected l1 or bn");
    o.random_bn_units = units == "bn";
    if (same_file(out, key_out)) {
      throw UsageError("--out '" + out + "' and --key-out '" + key_out + "' name the same file");
    }
    if (is_onnx_file(model_path)) {
      const bool tiered = !tiers.empty() || !tier_bands.empty();
      return lock_onnx({model_path, out, key_out, o, eval_after, tiered, input, common, effective},
                       access);
    }
    const KeyCredentials creds = credentials(access);
    LoadedModel model = load_model(model_path);
    apply_input_args(input, model, model_path);  // recorded in the locked model's metadata
    std::unique_ptr<Dataset> test, unlabelled;
    auto eval_state = [&](const char* label) {
      if (!test) {
        test = std::make_unique<Dataset>(test_set(model.meta, common));
        unlabelled = std::make_unique<Dataset>(effective_images(model.meta, common, effective));
      }
      const EffectiveEval e = evaluate_effective(model, *test, *unlabelled, effective.options());
      std::printf("  %-21s %s (top-3 %s%%)\n", label, effective_text(e).c_str(),
                  pct(e.plain.top3).c_str());
    };
    std::vector<std::pair<std::string, KeyFile>> keys;
    std::vector<LockStats> stats;
    std::vector<double> ratios;
    if (!tier_bands.empty()) {
      if (!tiers.empty()) throw UsageError("give --tiers or --tier-bands, not both");
      std::vector<Band> bands;
      std::stringstream ss(tier_bands);
      for (std::string item; std::getline(ss, item, ',');) bands.push_back(parse_band(item));
      const Dataset val_data = validation_set(model.meta, common, val);
      auto tensors = named_tensors(*model.net);
      const Ranking ranking = rank_units(tensors, model.net->structure(), o);
      const Dataset band_images =
          target_plain ? Dataset{} : effective_images(model.meta, common, effective);
      CalibrationOptions copt;
      if (!target_plain) copt.effective = EffectiveTarget{&band_images, effective.options()};
      TierCalibration tc = calibrate_tiers(model, ranking, val_data, bands, copt);
      for (size_t i = 0; i < bands.size(); ++i) {
        const Probe& p = tc.calibrations[i].chosen;
        std::printf("band %s-%s%%: ratio %s, validation top-1 %s%%%s (%zu evaluations)\n",
                    fixed(bands[i].low, 1).c_str(), fixed(bands[i].high, 1).c_str(),
                    fixed(p.ratio, 6).c_str(), pct(p.plain_top1).c_str(),
                    target_plain ? "" : (", effective " + pct(p.top1) + "%").c_str(),
                    tc.calibrations[i].probes.size());
      }
      ratios = tc.ratios;
    } else if (!tiers.empty()) {
      ratios = parse_ratios(tiers);
    }
    if (ratios.empty()) {
      DecoySearch search;
      std::unique_ptr<Dataset> val_data;
      if (o.fill != Fill::kZero && decoy_tries > 1) {
        val_data = std::make_unique<Dataset>(validation_set(model.meta, common, val));
        search.tries = decoy_tries;
        search.target = decoy_target == "lowest" ? DecoySearch::Target::kLowest
                                                 : DecoySearch::Target::kMatchZero;
        search.score = [&](LoadedModel& m) {
          return evaluate(*m.net, *val_data, m.meta.preprocess).top1;
        };
      }
      LockOutcome outcome = lock_model(model, o, search);
      if (search.tries > 1) {
        std::printf(
            "decoy fill: kept the %s of %d draws (top-1 on %lld validation images)\n",
            search.target == DecoySearch::Target::kLowest ? "lowest" : "one nearest zero fill",
            search.tries, static_cast<long long>(val_data->size()));
      }
      keys.emplace_back(key_out, std::move(outcome.key));
      stats.push_back(outcome.stats);
    } else {
      std::printf("tiered lock of %s with %s, fill %s\n", model_path.c_str(),
                  describe_units({o.criterion, o.scope, o.include_io}).c_str(), fill.c_str());
      auto outcomes = lock_model_tiers(model, o, ratios, [&](double r, LoadedModel&) {
        if (eval_after) eval_state(("locked at " + fixed(r, 4) + ":").c_str());
      });
      for (auto& t : outcomes) {
        keys.emplace_back(tier_path(key_out, t.key.header.tier), std::move(t.key));
        stats.push_back(t.stats);
      }
    }
    // Keys first (a locked model without its keys would be lost utility); if anything fails,
    // remove what was written so far.
    std::vector<uint64_t> sizes;
    try {
      for (const auto& [path, key] : keys) sizes.push_back(write_key_file(path, key, creds));
      save_model(out, model);
    } catch (...) {
      for (size_t i = 0; i < sizes.size(); ++i) std::remove(keys[i].first.c_str());
      throw;
    }
    if (ratios.empty()) {
      std::printf("locked %s with %s, fill %s, at ratio %s\n", model_path.c_str(),
                  describe_units({o.criterion, o.scope, o.include_io}).c_str(), fill.c_str(),
                  fixed(ratio, 6).c_str());
      print_lock_stats(LockOutcome{keys[0].second, stats[0]}, sizes[0]);
    }
    std::printf("  locked model:         %s (fingerprint %s)\n", out.c_str(),
                to_hex(keys[0].second.header.locked_fingerprint).substr(0, 16).c_str());
    for (size_t i = 0; i < keys.size(); ++i) {
      const auto& h = keys[i].second.header;
      if (ratios.empty()) {
        std::printf("  key:                  %s (key id %s%s)\n", keys[i].first.c_str(),
                    model.meta.lock->key_id.c_str(),
                    creds.kind == Encryption::kNone ? "" : ", encrypted");
      } else {
        std::printf("  tier %u of %u: %s takes ratio %s -> %s; %lld units, %llu bytes%s\n", h.tier,
                    h.tiers, keys[i].first.c_str(), fixed(h.ratio, 4).c_str(),
                    h.ratio_after > 0 ? fixed(h.ratio_after, 4).c_str() : "original",
                    static_cast<long long>(h.units), static_cast<unsigned long long>(sizes[i]),
                    creds.kind == Encryption::kNone ? "" : ", encrypted");
      }
    }
    if (eval_after && ratios.empty()) eval_state("locked accuracy:");
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
    if (is_safetensors_file(model_path))
      return unlock_safetensors_command(model_path, key_paths, out, access, threads);
    if (is_onnx_file(model_path)) return unlock_onnx(model_path, key_paths, out, access);
    LoadedModel model = load_model(model_path);
    const std::vector<KeyFile> keys = read_keys(key_paths, access);
    unlock_model(model, keys);  // checks every fingerprint; throws before anything is written
    save_model(out, model);
    // Re-read what was written: the file on disk must be the state the last key produces.
    LoadedModel written = load_model(out);
    const Digest fp = model_fingerprint(written);
    if (fp != keys.back().header.original_fingerprint) {
      std::remove(out.c_str());
      throw Error("written model '" + out +
                  "' does not match the fingerprint the key expects; removed it");
    }
    if (written.meta.lock) {
      std::printf(
          "applied %zu key(s) to %s -> %s: still locked at ratio %s (%lld tier key(s) to go)\n  "
          "fingerprint %s\n",
          keys.size(), model_path.c_str(), out.c_str(), fixed(written.meta.lock->ratio, 4).c_str(),
          static_cast<long long>(written.meta.lock->tiers), to_hex(fp).c_str());
    } else {
      std::printf(
          "restored %s -> %s\n  fingerprint %s (matches the original recorded in the key)\n",
          model_path.c_str(), out.c_str(), to_hex(fp).c_str());
    }
    return 0;
  };
}

// ---------------------------------------------------------------- fingerprint
void add_fingerprint(CLI::App& app) {
  auto* c = app.add_subcommand("fingerprint", "Print a model's fingerprint (BLAKE2b-256, hex)");
  static std::string path;
  c->add_option("file", path, "Model checkpoint")->required();
  handlers()[c] = [] {
    if (is_safetensors_file(path)) return fingerprint_safetensors_command(path);
    if (is_onnx_file(path)) return fingerprint_onnx(path);
    LoadedModel model = load_model(path);
    std::printf("%s\n", to_hex(model_fingerprint(model)).c_str());
    return 0;
  };
}

// ---------------------------------------------------------------- inspect
Json describe_key(const KeyHeader& h, const KeyFile* key, uint64_t size) {
  Json entries = "encrypted (give the passphrase or secret to list them)";
  if (key != nullptr) {
    entries = Json::array();
    for (const auto& e : key->entries) {
      entries.push_back({{"tensor", e.tensor},
                         {"dtype", to_string(e.dtype)},
                         {"shape", e.shape},
                         {"unit_size", e.unit_size},
                         {"units", e.units.size()}});
    }
  }
  Json j = {{"type", "key"},
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

Json describe_model(const std::string& path) {
  LoadedModel model = load_model(path);
  const auto& m = model.meta;
  Json layers = Json::array();
  for (const auto& l : model.net->structure()) {
    Json j = {{"name", l.name}, {"kind", to_string(l.kind)}};
    if (l.producer >= 0)
      j["producer"] = model.net->structure()[static_cast<size_t>(l.producer)].name;
    layers.push_back(j);
  }
  Json j = {{"type", m.lock ? "locked model" : "model"},
            {"arch", m.arch},
            {"options", m.options},
            {"dataset", m.dataset},
            {"input", {m.input.channels, m.input.height, m.input.width}},
            {"pad_to", m.preprocess.pad_to},
            {"resize_to", m.preprocess.resize_to},
            {"channels_fed", m.preprocess.channels > 0 ? m.preprocess.channels : m.input.channels},
            {"mean", m.preprocess.mean},
            {"std", m.preprocess.std},
            {"classes", m.classes},
            {"parameters", parameter_count(*model.net)},
            {"fingerprint", to_hex(model_fingerprint(model))},
            {"training", Json::parse(m.training_json)},
            {"layers", layers}};
  if (m.lock) {
    j["lock"] = {
        {"key_id", m.lock->key_id},       {"original_fingerprint", m.lock->original_fingerprint},
        {"criterion", m.lock->criterion}, {"scope", m.lock->scope},
        {"ratio", m.lock->ratio},         {"fill", m.lock->fill},
        {"tiers", m.lock->tiers},         {"tool_version", m.lock->tool_version}};
  }
  return j;
}

void print_json_as_text(const Json& j, int indent = 0) {
  const std::string pad(static_cast<size_t>(indent), ' ');
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it->is_object()) {
      std::printf("%s%s:\n", pad.c_str(), it.key().c_str());
      print_json_as_text(*it, indent + 2);
    } else if (it->is_array() && !it->empty() && it->front().is_object()) {
      std::printf("%s%s: %zu\n", pad.c_str(), it.key().c_str(), it->size());
      for (const auto& e : *it) {
        std::string line;
        for (auto f = e.begin(); f != e.end(); ++f)
          line += (line.empty() ? "" : "  ") + f.key() + "=" +
                  (f->is_string() ? f->get<std::string>() : f->dump());
        std::printf("%s  %s\n", pad.c_str(), line.c_str());
      }
    } else {
      std::printf("%s%s: %s\n", pad.c_str(), it.key().c_str(),
                  it->is_string() ? it->get<std::string>().c_str() : it->dump().c_str());
    }
  }
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
    if (is_safetensors_file(path)) return inspect_safetensors_command(path, json);
    if (is_onnx_file(path)) return inspect_onnx(path, json);
    auto bytes = read_file(path);
    Json j;
    if (looks_like_key(bytes)) {
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
      j = describe_model(path);
    }
    j["file"] = path;
    if (json)
      std::printf("%s\n", j.dump().c_str());
    else
      print_json_as_text(j);
    return 0;
  };
}

}  // namespace corelocker::cli
