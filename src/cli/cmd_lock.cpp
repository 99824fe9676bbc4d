// `lock`, `unlock`, `fingerprint`, `inspect`.
#include <csignal>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/progress.h"
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

void add_lock(CLI::App& app) {
  auto* c = app.add_subcommand("lock", "Extract the most significant units into an access key");
  static std::string model_path, out, key_out, criterion = "l1", scope, units = "l1";
  static double ratio = 0.05;
  static uint64_t seed = 0;
  static bool include_io = false, eval_after = false;
  static Common common;
  c->add_option("--model", model_path, "Model checkpoint to lock")->required();
  c->add_option("--criterion", criterion, "l1 | bn | random")->capture_default_str();
  c->add_option("--ratio", ratio, "Fraction of units to extract")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  c->add_option("--scope", scope, "layer | global (default: layer for l1/random, global for bn)");
  c->add_option("--seed", seed, "Seed for --criterion random")->capture_default_str();
  c->add_option("--units", units, "Units drawn by --criterion random: l1 | bn")->capture_default_str();
  c->add_flag("--include-io", include_io, "Also extract from the first and last layer");
  c->add_option("--out", out, "Locked model to write")->required();
  c->add_option("--key-out", key_out, "Access key to write")->required();
  c->add_flag("--eval", eval_after, "Evaluate the locked model on the test split");
  add_threads(c, common);
  add_data(c, common);
  handlers()[c] = [] {
    apply_threads(common);
    LockOptions o;
    o.criterion = parse_criterion(criterion);
    o.scope = scope.empty() ? default_scope(o.criterion) : parse_scope(scope);
    o.ratio = ratio;
    o.seed = seed;
    o.include_io = include_io;
    if (units != "l1" && units != "bn") throw UsageError("units '" + units + "': expected l1 or bn");
    o.random_bn_units = units == "bn";
    if (out == key_out) throw UsageError("--out and --key-out name the same file '" + out + "'");
    LoadedModel model = load_model(model_path);
    LockOutcome outcome = lock_model(model, o);
    // Key first: a locked model without its key would be lost utility.
    const uint64_t key_bytes = write_key_file(key_out, outcome.key);
    save_model(out, model);
    std::printf("locked %s with %s (scope %s) at ratio %s\n", model_path.c_str(), criterion.c_str(),
                to_string(o.scope), fixed(ratio, 6).c_str());
    print_lock_stats(outcome, key_bytes);
    std::printf("  locked model:         %s (fingerprint %s)\n", out.c_str(),
                to_hex(outcome.key.header.locked_fingerprint).substr(0, 16).c_str());
    std::printf("  key:                  %s (key id %s)\n", key_out.c_str(), model.meta.lock->key_id.c_str());
    if (eval_after) {
      EvalResult r = evaluate(*model.net, test_set(model.meta, common), model.meta.preprocess);
      std::printf("  locked accuracy:      top-1 %s%%, top-3 %s%%\n", pct(r.top1).c_str(), pct(r.top3).c_str());
    }
    return 0;
  };
}

// ---------------------------------------------------------------- unlock
void add_unlock(CLI::App& app) {
  auto* c = app.add_subcommand("unlock", "Restore the original model from a locked model and its key");
  static std::string model_path, key_path, out;
  c->add_option("--model", model_path, "Locked model")->required();
  c->add_option("--key", key_path, "Access key")->required();
  c->add_option("--out", out, "Restored model to write")->required();
  handlers()[c] = [] {
    LoadedModel model = load_model(model_path);
    KeyFile key = read_key_file(key_path);
    unlock_model(model, key);  // checks both fingerprints; throws before anything is written
    save_model(out, model);
    // Re-read what was written: the file on disk must be the original too.
    LoadedModel written = load_model(out);
    const Digest fp = model_fingerprint(written);
    if (fp != key.header.original_fingerprint) {
      std::remove(out.c_str());
      throw Error("written model '" + out + "' does not match the original fingerprint; removed it");
    }
    std::printf("restored %s -> %s\n  fingerprint %s (matches the original recorded in the key)\n",
                model_path.c_str(), out.c_str(), to_hex(fp).c_str());
    return 0;
  };
}

// ---------------------------------------------------------------- fingerprint
void add_fingerprint(CLI::App& app) {
  auto* c = app.add_subcommand("fingerprint", "Print a model's fingerprint (BLAKE2b-256, hex)");
  static std::string path;
  c->add_option("file", path, "Model checkpoint")->required();
  handlers()[c] = [] {
    LoadedModel model = load_model(path);
    std::printf("%s\n", to_hex(model_fingerprint(model)).c_str());
    return 0;
  };
}


// ---------------------------------------------------------------- inspect
Json describe_key(const KeyFile& key, uint64_t size) {
  const auto& h = key.header;
  Json entries = Json::array();
  for (const auto& e : key.entries) {
    entries.push_back({{"tensor", e.tensor}, {"dtype", to_string(e.dtype)}, {"shape", e.shape},
                       {"unit_size", e.unit_size}, {"units", e.units.size()}});
  }
  return {{"type", "key"}, {"version", kKeyVersion}, {"bytes", size},
          {"key_id", to_hex(h.key_id.data(), h.key_id.size())},
          {"locked_fingerprint", to_hex(h.locked_fingerprint)},
          {"original_fingerprint", to_hex(h.original_fingerprint)},
          {"criterion", to_string(h.criterion)}, {"scope", to_string(h.scope)}, {"fill", to_string(h.fill)},
          {"ratio", h.ratio}, {"seed", h.seed}, {"include_io", h.include_io}, {"units", h.units},
          {"values", key.value_count()}, {"entries", entries}};
}

Json describe_model(const std::string& path) {
  LoadedModel model = load_model(path);
  const auto& m = model.meta;
  Json layers = Json::array();
  for (const auto& l : model.net->structure()) {
    Json j = {{"name", l.name}, {"kind", to_string(l.kind)}};
    if (l.producer >= 0) j["producer"] = model.net->structure()[static_cast<size_t>(l.producer)].name;
    layers.push_back(j);
  }
  Json j = {{"type", m.lock ? "locked model" : "model"},
            {"arch", m.arch},
            {"options", m.options},
            {"dataset", m.dataset},
            {"input", {m.input.channels, m.input.height, m.input.width}},
            {"pad_to", m.preprocess.pad_to},
            {"mean", m.preprocess.mean},
            {"std", m.preprocess.std},
            {"classes", m.classes},
            {"parameters", parameter_count(*model.net)},
            {"fingerprint", to_hex(model_fingerprint(model))},
            {"training", Json::parse(m.training_json)},
            {"layers", layers}};
  if (m.lock) {
    j["lock"] = {{"key_id", m.lock->key_id}, {"original_fingerprint", m.lock->original_fingerprint},
                 {"criterion", m.lock->criterion}, {"scope", m.lock->scope}, {"ratio", m.lock->ratio},
                 {"tool_version", m.lock->tool_version}};
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
        for (auto f = e.begin(); f != e.end(); ++f) line += (line.empty() ? "" : "  ") + f.key() + "=" + (f->is_string() ? f->get<std::string>() : f->dump());
        std::printf("%s  %s\n", pad.c_str(), line.c_str());
      }
    } else {
      std::printf("%s%s: %s\n", pad.c_str(), it.key().c_str(), it->is_string() ? it->get<std::string>().c_str() : it->dump().c_str());
    }
  }
}

void add_inspect(CLI::App& app) {
  auto* c = app.add_subcommand("inspect", "Describe a checkpoint, a locked model or a key");
  static std::string path;
  static bool json = false;
  c->add_option("file", path, "File to describe")->required();
  c->add_flag("--json", json, "Print one JSON object");
  handlers()[c] = [] {
    auto bytes = read_file(path);
    Json j = looks_like_key(bytes) ? describe_key(parse_key(bytes.data(), bytes.size(), "key '" + path + "'"), bytes.size())
                                   : describe_model(path);
    j["file"] = path;
    if (json) std::printf("%s\n", j.dump().c_str());
    else print_json_as_text(j);
    return 0;
  };
}


}  // namespace corelocker::cli
