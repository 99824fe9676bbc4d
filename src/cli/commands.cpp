#include "cli/commands.h"

#include <csignal>
#include <cstdio>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

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
namespace {

using Json = nlohmann::json;

std::map<CLI::App*, std::function<int()>>& handlers() {
  static std::map<CLI::App*, std::function<int()>> h;
  return h;
}

// Options shared by commands that touch data or compute.
struct Common {
  int threads = 0;
  std::string data_dir;
  int64_t test_subset = 0;
};

void add_threads(CLI::App* c, Common& o) {
  c->add_option("--threads", o.threads, "Compute threads (default: all cores)")->check(CLI::NonNegativeNumber);
}

void add_data(CLI::App* c, Common& o) {
  c->add_option("--data-dir", o.data_dir, "Data set folder (default: the data set's standard location)");
  c->add_option("--test-subset", o.test_subset, "Evaluate on a random N-image subset of the test split (0: all)")
      ->check(CLI::NonNegativeNumber);
}

void apply_threads(const Common& o) {
  const int n = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(n);
}

Dataset test_set(const ModelMeta& meta, const Common& o) {
  Dataset d = load_dataset(meta.dataset.empty() ? "fashion-mnist" : meta.dataset, o.data_dir, Split::kTest);
  return subset(d, o.test_subset, /*seed=*/12345);
}

std::string pct(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

std::string fixed(double v, int digits) {
  char b[32];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

std::atomic<bool> g_interrupted{false};
extern "C" void on_sigint(int) { g_interrupted = true; }

void train_progress(Progress& bar_line, const TrainProgress& p) {
  const double frac = double(p.step) / double(p.steps);
  std::string line = "epoch " + std::to_string(p.epoch) + "/" + std::to_string(p.epochs) + " " + bar(frac) + " " +
                     std::to_string(p.step) + "/" + std::to_string(p.steps) + " loss " + fixed(p.loss, 4) +
                     " acc " + fixed(p.accuracy, 2) + "% lr " + fixed(p.lr, 4) + " " +
                     fixed(p.images_per_second, 0) + " img/s ETA " + format_duration(p.eta_seconds);
  if (p.epoch_done) bar_line.finish(line);
  else if (p.step % 5 == 0) bar_line.update(line);
}

// Trains a model per the options and writes it atomically; shared by `train` and `demo`.
struct TrainArgs {
  std::string arch = "resnet20";
  std::string dataset = "fashion-mnist";
  int64_t depth = 20;
  int64_t width = 8;
  int64_t train_subset = 0;
  TrainOptions opts;
};

void add_train_args(CLI::App* c, TrainArgs& a) {
  c->add_option("--arch", a.arch, "Architecture (see `corelocker models`)")->capture_default_str();
  c->add_option("--dataset", a.dataset, "Data set")->capture_default_str();
  c->add_option("--depth", a.depth, "Depth for resnet (6n+2)")->capture_default_str();
  c->add_option("--width", a.width, "Width for tinycnn")->capture_default_str();
  c->add_option("--epochs", a.opts.epochs, "Epochs (0 writes a freshly initialised model)")->capture_default_str();
  c->add_option("--batch-size", a.opts.batch_size, "Batch size")->capture_default_str();
  c->add_option("--lr", a.opts.lr, "Peak learning rate")->capture_default_str();
  c->add_option("--momentum", a.opts.momentum, "SGD momentum (Nesterov)")->capture_default_str();
  c->add_option("--weight-decay", a.opts.weight_decay, "Weight decay")->capture_default_str();
  c->add_option("--schedule", a.opts.schedule, "onecycle | cosine | constant")->capture_default_str();
  c->add_option("--seed", a.opts.seed, "Random seed")->capture_default_str();
  c->add_option("--train-subset", a.train_subset, "Train on a random N-image subset (0: all)");
  c->add_flag("!--no-augment", a.opts.augment, "Disable random-crop augmentation");
}

LoadedModel train_model(const TrainArgs& a, const Common& common, Json& summary_out) {
  ModelMeta meta = new_model_meta(a.arch, a.dataset);
  if (a.arch == "resnet20" || a.arch == "resnet") meta.options["depth"] = a.depth;
  if (a.arch == "tinycnn") meta.options["width"] = a.width;
  torch::manual_seed(a.opts.seed);
  LoadedModel model = create_model(meta);
  Json summary = {{"epochs", a.opts.epochs}, {"batch_size", a.opts.batch_size}, {"lr", a.opts.lr},
                  {"schedule", a.opts.schedule}, {"seed", a.opts.seed}, {"augment", a.opts.augment},
                  {"weight_decay", a.opts.weight_decay}, {"momentum", a.opts.momentum}};
  if (a.opts.epochs > 0) {
    Dataset train_data = load_dataset(a.dataset, common.data_dir, Split::kTrain);
    train_data = subset(train_data, a.train_subset, a.opts.seed);
    summary["train_images"] = train_data.size();
    Progress line;
    g_interrupted = false;
    auto previous = std::signal(SIGINT, on_sigint);
    TrainSummary s = train(*model.net, train_data, meta.preprocess, a.opts,
                           [&](const TrainProgress& p) { train_progress(line, p); },
                           [] { return !g_interrupted.load(); });
    std::signal(SIGINT, previous);
    if (g_interrupted) throw Error("training interrupted (Ctrl-C) after " + std::to_string(s.epochs) + " epochs; nothing written");
    summary["seconds"] = s.seconds;
    summary["final_train_loss"] = s.final_loss;
    summary["final_train_accuracy"] = s.final_train_accuracy;
  }
  model.meta.training_json = summary.dump();
  summary_out = summary;
  return model;
}

// ---------------------------------------------------------------- train
void add_train(CLI::App& app) {
  auto* c = app.add_subcommand("train", "Train a built-in architecture and write a checkpoint");
  static TrainArgs a;
  static Common common;
  static std::string out;
  static bool eval_after = true;
  add_train_args(c, a);
  add_threads(c, common);
  add_data(c, common);
  c->add_option("--out", out, "Checkpoint to write")->required();
  c->add_flag("!--no-eval", eval_after, "Skip the test-set evaluation at the end");
  handlers()[c] = [] {
    apply_threads(common);
    Json summary;
    LoadedModel model = train_model(a, common, summary);
    if (eval_after && a.opts.epochs > 0) {
      EvalResult r = evaluate(*model.net, test_set(model.meta, common), model.meta.preprocess);
      summary["test_top1"] = r.top1;
      summary["test_top3"] = r.top3;
      model.meta.training_json = summary.dump();
      std::printf("test accuracy: top-1 %s%%, top-3 %s%% (%lld images)\n", pct(r.top1).c_str(), pct(r.top3).c_str(),
                  static_cast<long long>(r.n));
    }
    save_model(out, model);
    std::printf("wrote %s (%s, %lld parameters", out.c_str(), model.meta.arch.c_str(),
                static_cast<long long>(parameter_count(*model.net)));
    if (summary.contains("seconds")) std::printf(", trained %s", format_duration(summary["seconds"].get<double>()).c_str());
    std::printf(")\n");
    return 0;
  };
}

// ---------------------------------------------------------------- eval
void add_eval(CLI::App& app) {
  auto* c = app.add_subcommand("eval", "Top-1 / top-3 accuracy of a model on the test split");
  static std::string model_path, key_path;
  static bool json = false;
  static Common common;
  c->add_option("--model", model_path, "Model checkpoint (original or locked)")->required();
  c->add_option("--key", key_path, "Unlock in memory with this key before evaluating (nothing is written)");
  c->add_flag("--json", json, "Print one JSON object");
  add_threads(c, common);
  add_data(c, common);
  handlers()[c] = [] {
    apply_threads(common);
    LoadedModel model = load_model(model_path);
    if (!key_path.empty()) unlock_model(model, read_key_file(key_path));
    EvalResult r = evaluate(*model.net, test_set(model.meta, common), model.meta.preprocess);
    if (json) {
      Json j = {{"model", model_path}, {"top1", r.top1}, {"top3", r.top3}, {"n", r.n},
                {"locked", model.meta.lock.has_value()}, {"seconds", r.seconds}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%s: top-1 %s%%, top-3 %s%% on %lld test images%s\n", model_path.c_str(), pct(r.top1).c_str(),
                  pct(r.top3).c_str(), static_cast<long long>(r.n), model.meta.lock ? " (locked)" : "");
    }
    return 0;
  };
}

// ---------------------------------------------------------------- lock
void print_lock_stats(const LockOutcome& o, uint64_t key_bytes) {
  const auto& s = o.stats;
  std::printf("  units extracted:      %lld of %lld\n", static_cast<long long>(s.units),
              static_cast<long long>(s.candidates));
  std::printf("  parameters extracted: %lld of %lld (%s%%)\n", static_cast<long long>(s.values),
              static_cast<long long>(s.parameters), fixed(100.0 * s.param_fraction(), 3).c_str());
  std::printf("  key size:             %llu bytes (%s bytes per extracted value)\n",
              static_cast<unsigned long long>(key_bytes),
              fixed(s.values ? double(key_bytes) / double(s.values) : 0.0, 2).c_str());
}

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

// ---------------------------------------------------------------- models
void add_models(CLI::App& app) {
  auto* c = app.add_subcommand("models", "List the built-in architectures with parameter counts");
  static std::string dataset = "fashion-mnist";
  c->add_option("--dataset", dataset, "Data set that sets input shape and classes")->capture_default_str();
  handlers()[c] = [] {
    for (const auto& a : list_architectures()) {
      LoadedModel m = create_model(new_model_meta(a.name, dataset));
      std::printf("%-10s %10lld parameters  %s\n", a.name.c_str(), static_cast<long long>(parameter_count(*m.net)),
                  a.description.c_str());
    }
    return 0;
  };
}

// ---------------------------------------------------------------- demo (the README's main job)
void add_demo(CLI::App& app) {
  auto* c = app.add_subcommand("demo", "Train (or reuse) resnet20 on Fashion-MNIST, lock with l1 / bn / random, unlock, print one table");
  static TrainArgs a;
  static Common common;
  static std::string workdir = "runs/demo";
  static double ratio = 0.05;
  static int seeds = 5;
  static bool retrain = false;
  add_train_args(c, a);
  add_threads(c, common);
  add_data(c, common);
  c->add_option("--workdir", workdir, "Folder for the checkpoint, locked models and keys")->capture_default_str();
  c->add_option("--ratio", ratio, "Extraction ratio")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  c->add_option("--seeds", seeds, "Seeds for the random baseline")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_flag("--retrain", retrain, "Train even when a cached checkpoint exists");
  handlers()[c] = [] {
    apply_threads(common);
    if (std::system(("mkdir -p '" + workdir + "'").c_str()) != 0) throw IoError("cannot create '" + workdir + "'");
    const std::string ckpt = workdir + "/" + a.arch + ".ckpt";
    if (retrain || !file_exists(ckpt)) {
      std::printf("training %s on %s for %d epochs -> %s\n", a.arch.c_str(), a.dataset.c_str(), a.opts.epochs, ckpt.c_str());
      std::fflush(stdout);
      Json summary;
      LoadedModel m = train_model(a, common, summary);
      save_model(ckpt, m);
      if (summary.contains("seconds")) std::printf("trained in %s\n", format_duration(summary["seconds"].get<double>()).c_str());
    } else {
      std::printf("reusing cached checkpoint %s (--retrain to train again)\n", ckpt.c_str());
    }
    LoadedModel original = load_model(ckpt);
    const Digest original_fp = model_fingerprint(original);
    Dataset test = test_set(original.meta, common);
    struct Row {
      Row(std::string n, EvalResult e) : name(std::move(n)), r(e) {}
      std::string name;
      EvalResult r;
      std::string key_bytes = "-", extracted = "-", spread;
    };
    std::vector<Row> rows;
    rows.emplace_back("original", evaluate(*original.net, test, original.meta.preprocess));

    std::vector<std::pair<std::string, std::string>> locked_files;
    for (Criterion crit : {Criterion::kL1, Criterion::kBn}) {
      LockOptions o;
      o.criterion = crit;
      o.scope = default_scope(crit);
      o.ratio = ratio;
      LoadedModel m = load_model(ckpt);
      LockOutcome out = lock_model(m, o);
      const std::string name = to_string(crit);
      const std::string locked_path = workdir + "/locked-" + name + ".ckpt", key_path = workdir + "/key-" + name + ".clk";
      const uint64_t bytes = write_key_file(key_path, out.key);
      save_model(locked_path, m);
      locked_files.push_back({locked_path, key_path});
      Row row("locked " + name + " (" + to_string(o.scope) + ")", evaluate(*m.net, test, m.meta.preprocess));
      row.key_bytes = std::to_string(bytes);
      row.extracted = fixed(100.0 * out.stats.param_fraction(), 3) + "%";
      rows.push_back(row);
    }
    {
      Progress line;
      std::vector<double> top1, top3;
      LockStats stats;
      for (int s = 0; s < seeds; ++s) {
        line.update("random baseline: seed " + std::to_string(s + 1) + "/" + std::to_string(seeds));
        LockOptions o;
        o.criterion = Criterion::kRandom;
        o.ratio = ratio;
        o.seed = static_cast<uint64_t>(s);
        LoadedModel m = load_model(ckpt);
        stats = lock_model(m, o).stats;
        EvalResult r = evaluate(*m.net, test, m.meta.preprocess);
        top1.push_back(r.top1);
        top3.push_back(r.top3);
      }
      line.finish("random baseline: " + std::to_string(seeds) + " seeds done");
      auto mean_sd = [](const std::vector<double>& v) {
        double m = 0, q = 0;
        for (double x : v) m += x;
        m /= double(v.size());
        for (double x : v) q += (x - m) * (x - m);
        return std::make_pair(m, v.size() > 1 ? std::sqrt(q / double(v.size() - 1)) : 0.0);
      };
      auto [m1, sd1] = mean_sd(top1);
      auto [m3, sd3] = mean_sd(top3);
      double lo = *std::min_element(top1.begin(), top1.end()), hi = *std::max_element(top1.begin(), top1.end());
      EvalResult mean_result;
      mean_result.top1 = m1;
      mean_result.top3 = m3;
      mean_result.n = test.size();
      Row row("random (mean of " + std::to_string(seeds) + ")", mean_result);
      row.extracted = fixed(100.0 * stats.param_fraction(), 3) + "%";
      row.spread = "top-1 sd " + fixed(sd1, 2) + ", min " + pct(lo) + ", max " + pct(hi) + "; top-3 sd " + fixed(sd3, 2);
      rows.push_back(row);
    }
    bool all_exact = true;
    for (const auto& [locked_path, key_path] : locked_files) {
      LoadedModel m = load_model(locked_path);
      unlock_model(m, read_key_file(key_path));
      const std::string restored_path = locked_path.substr(0, locked_path.size() - 5) + "-restored.ckpt";
      save_model(restored_path, m);
      LoadedModel back = load_model(restored_path);
      const bool exact = model_fingerprint(back) == original_fp;
      all_exact = all_exact && exact;
      Row row("restored from " + key_path.substr(key_path.find_last_of('/') + 1), evaluate(*back.net, test, back.meta.preprocess));
      row.spread = exact ? "fingerprint equals original" : "FINGERPRINT DIFFERS";
      rows.push_back(row);
    }
    std::printf("\n%s, %s, %lld test images, extraction ratio %s\n\n", a.arch.c_str(), original.meta.dataset.c_str(),
                static_cast<long long>(test.size()), fixed(ratio, 4).c_str());
    std::printf("%-28s %8s %8s %10s %10s  %s\n", "model", "top-1 %", "top-3 %", "key bytes", "params", "notes");
    for (const auto& r : rows) {
      std::printf("%-28s %8s %8s %10s %10s  %s\n", r.name.c_str(), pct(r.r.top1).c_str(), pct(r.r.top3).c_str(),
                  r.key_bytes.c_str(), r.extracted.c_str(), r.spread.c_str());
    }
    std::printf("\noriginal fingerprint %s\nrestore bit-exact: %s\n", to_hex(original_fp).c_str(), all_exact ? "yes" : "NO");
    return all_exact ? 0 : 1;
  };
}

}  // namespace

void register_commands(CLI::App& app) {
  add_train(app);
  add_eval(app);
  add_lock(app);
  add_unlock(app);
  add_fingerprint(app);
  add_inspect(app);
  add_models(app);
  add_demo(app);
}

int run_selected(CLI::App& app) {
  for (auto* sub : app.get_subcommands()) {
    auto it = handlers().find(sub);
    if (it != handlers().end()) return it->second();
  }
  throw UsageError("no command given (see --help)");
}

}  // namespace corelocker::cli
