#include "cli/common.h"

#include <sodium.h>

#include <cstdlib>
#include <cstring>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
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

std::map<CLI::App*, std::function<int()>>& handlers() {
  static std::map<CLI::App*, std::function<int()>> h;
  return h;
}

// Options shared by commands that touch data or compute.

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

namespace {
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

}  // namespace

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


void add_key_access(CLI::App* c, KeyAccess& k, bool writing) {
  const std::string verb = writing ? "Encrypt" : "Decrypt";
  c->add_option("--passphrase-file", k.passphrase_file, verb + " the key with the passphrase in this file (one trailing newline ignored)");
  c->add_option("--passphrase-env", k.passphrase_env, verb + " the key with the passphrase in this environment variable");
  c->add_option("--secret-file", k.secret_file, verb + " the key with the raw 32-byte secret in this file");
  if (writing) {
    c->add_option("--kdf", k.kdf, "Argon2id cost for a passphrase: interactive | moderate | sensitive")->capture_default_str();
  }
}

KeyCredentials credentials(const KeyAccess& k) {
  KeyCredentials c;
  const int given = !k.passphrase_file.empty() + !k.passphrase_env.empty() + !k.secret_file.empty();
  if (given > 1) throw UsageError("give only one of --passphrase-file, --passphrase-env, --secret-file");
  set_kdf_preset(c, k.kdf);
  if (!k.passphrase_file.empty()) {
    auto bytes = read_file(k.passphrase_file);
    c.passphrase.assign(bytes.begin(), bytes.end());
    sodium_memzero(bytes.data(), bytes.size());
    if (!c.passphrase.empty() && c.passphrase.back() == '\n') c.passphrase.pop_back();
    if (!c.passphrase.empty() && c.passphrase.back() == '\r') c.passphrase.pop_back();
    if (c.passphrase.empty()) throw UsageError("passphrase file '" + k.passphrase_file + "' is empty");
    c.kind = Encryption::kPassphrase;
  } else if (!k.passphrase_env.empty()) {
    const char* v = std::getenv(k.passphrase_env.c_str());
    if (v == nullptr || *v == '\0') throw UsageError("environment variable '" + k.passphrase_env + "' is unset or empty");
    c.passphrase = v;
    c.kind = Encryption::kPassphrase;
  } else if (!k.secret_file.empty()) {
    auto bytes = read_file(k.secret_file);
    if (bytes.size() != c.secret.size()) {
      throw UsageError("secret file '" + k.secret_file + "' has " + std::to_string(bytes.size()) +
                       " bytes, expected 32");
    }
    std::memcpy(c.secret.data(), bytes.data(), bytes.size());
    sodium_memzero(bytes.data(), bytes.size());
    c.kind = Encryption::kSecret;
  }
  return c;
}

std::vector<KeyFile> read_keys(const std::vector<std::string>& paths, const KeyAccess& k) {
  const KeyCredentials c = credentials(k);
  std::vector<KeyFile> keys;
  for (const auto& p : paths) keys.push_back(read_key_file(p, c));
  return keys;
}

std::pair<double, double> mean_sd(const std::vector<double>& v) {
  if (v.empty()) return {0.0, 0.0};
  double m = 0, q = 0;
  for (double x : v) m += x;
  m /= double(v.size());
  for (double x : v) q += (x - m) * (x - m);
  return {m, v.size() > 1 ? std::sqrt(q / double(v.size() - 1)) : 0.0};
}

}  // namespace corelocker::cli
