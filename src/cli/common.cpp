#include "cli/common.h"

#include <sodium.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
#include "train/training_run.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::cli {

// Options shared by commands that touch data or compute.

void add_threads(CLI::App* c, Common& o) {
  c->add_option("--threads", o.threads, "Compute threads (default: all cores)")
      ->check(CLI::NonNegativeNumber);
}

void add_data(CLI::App* c, Common& o) {
  c->add_option("--data-dir", o.data_dir,
                "Data set folder (default: the data set's standard location)");
  c->add_option("--test-subset", o.test_subset,
                "Evaluate on a random N-image subset of the test split (0: all)")
      ->check(CLI::NonNegativeNumber);
}

void add_input_args(CLI::App* c, InputArgs& a) {
  c->add_option(
      "--dataset", a.dataset,
      "Data set the model takes (fashion-mnist | cifar10 | cifar100; default: the model's)");
  c->add_option(
       "--mean", a.mean,
       "Per-channel mean subtracted after scaling to [0,1] (one value, or one per channel)")
      ->delimiter(',');
  c->add_option("--std", a.std,
                "Per-channel standard deviation divided by (one value, or one per channel)")
      ->delimiter(',');
  c->add_option("--pad", a.pad, "Pad images to NxN (0: no padding), with zeros or --pad-value")
      ->check(CLI::Range(0, 4096));
  c->add_option_function<double>(
      "--pad-value",
      [&a](const double& v) {
        a.pad_value = v;
        a.pad_value_given = true;
      },
      "Value of the padded pixels: in [0,1] pixel units, or in normalised units with "
      "--pad-after-normalise (default 0)");
  c->add_flag("--pad-after-normalise", a.pad_after_normalise,
              "Pad after normalising, not before (a model trained with Normalize before Pad: the "
              "padded pixels are 0 in normalised units)");
  c->add_option("--resize", a.resize, "Resize images to NxN, bilinear (0: keep the size)")
      ->check(CLI::Range(0, 4096));
  c->add_option("--channels", a.channels,
                "Repeat a grey channel this many times (e.g. 3 for an RGB network; 0: as is)")
      ->check(CLI::Range(0, 64));
}

CLI::Option* add_unit_args(CLI::App* c, UnitArgs& a, bool random_allowed) {
  auto* criterion =
      c->add_option("--criterion", a.criterion,
                    random_allowed ? kCriterionHelp : "l1 | bn (default: the default lock)");
  c->add_option("--scope", a.scope, kScopeHelp);
  c->add_option("--seed", a.seed, "Seed for --criterion random")->capture_default_str();
  c->add_option("--units", a.units, "Units drawn by --criterion random: l1 | bn")
      ->capture_default_str();
  auto* in = c->add_flag("--include-io", a.include_io, kIncludeIoHelp);
  c->add_flag("--exclude-io", a.exclude_io, kExcludeIoHelp)->excludes(in);
  return criterion;
}

namespace {

LockOptions options_for(const UnitChoice& u, const UnitArgs& a) {
  LockOptions o = lock_options_for(u, 0.0);
  o.seed = a.seed;
  if (a.units != "l1" && a.units != "bn")
    throw UsageError("units '" + a.units + "': expected l1 or bn");
  o.random_bn_units = a.units == "bn";
  return o;
}

}  // namespace

LockOptions lock_options(const UnitArgs& a) {
  return options_for(resolve_units(a.criterion, a.scope, a.include_io, a.exclude_io), a);
}

UnitChoice band_units(const std::string& criterion, const std::string& scope, bool include_io,
                      bool exclude_io) {
  const bool named = !criterion.empty() && criterion != "default";
  return resolve_units(criterion, scope, include_io, exclude_io || (!named && !include_io));
}

LockOptions band_lock_options(const UnitArgs& a) {
  return options_for(band_units(a.criterion, a.scope, a.include_io, a.exclude_io), a);
}

void require_runnable(const std::string& path, Feature feature, const char* command) {
  const ModelFormat& format = model_formats().of(path);
  const Support s = format.supports(feature);
  if (!s.works) {
    throw UsageError("`" + std::string(command) + "` cannot run model '" + path + "' (" +
                     format.name() + "): " + s.note);
  }
}

int apply_threads(const Common& o, int ranks_on_host) {
  const int n =
      o.threads > 0
          ? o.threads
          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency() /
                                              static_cast<unsigned>(std::max(1, ranks_on_host))));
  torch::set_num_threads(n);
  return n;
}

Json given_options(const CLI::App* c) {
  Json j = Json::object();
  for (const CLI::Option* opt : c->get_options()) {
    if (opt->count() > 0) j[opt->get_name()] = opt->results();
  }
  return j;
}

std::unique_ptr<Group> join_command_group(const CLI::App* c, const Common& o) {
  std::unique_ptr<Group> group = join_group_from_environment();
  apply_threads(o, group ? group->config().local_size : 1);
  if (group == nullptr) return group;
  group->agree("options of `" + c->get_name() + "`", given_options(c).dump());
  if (group->rank() != 0 && std::freopen("/dev/null", "w", stdout) == nullptr)
    throw IoError("rank " + std::to_string(group->rank()) + ": cannot discard its output");
  return group;
}

Dataset test_set(const ModelMeta& meta, const Common& o) {
  Dataset d =
      load_dataset(meta.dataset.empty() ? "fashion-mnist" : meta.dataset, o.data_dir, Split::kTest);
  return subset(d, o.test_subset, /*seed=*/12345);
}

std::string pct(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

namespace {
std::atomic<bool> g_stop{false};
extern "C" void on_stop_signal(int) { g_stop = true; }

void train_progress(Progress& bar_line, const TrainProgress& p) {
  const double frac = double(p.step) / double(p.steps);
  std::string line = "epoch " + std::to_string(p.epoch) + "/" + std::to_string(p.epochs) + " " +
                     bar(frac) + " " + std::to_string(p.step) + "/" + std::to_string(p.steps) +
                     " loss " + fixed(p.loss, 4) + " acc " + fixed(p.accuracy, 2) + "% lr " +
                     fixed(p.lr, 4) + " " + fixed(p.images_per_second, 0) + " img/s ETA " +
                     format_duration(p.eta_seconds);
  if (p.epoch_done)
    bar_line.finish(line);
  else if (p.step % 5 == 0)
    bar_line.update(line);
}

}  // namespace

StopOnSigint::StopOnSigint() {
  g_stop = false;
  previous_ = std::signal(SIGINT, on_stop_signal);
}

StopOnSigint::~StopOnSigint() { std::signal(SIGINT, previous_); }

bool StopOnSigint::stopped() const { return g_stop.load(); }

void add_train_args(CLI::App* c, TrainArgs& a) {
  c->add_option("--arch", a.arch, "Architecture (see `corelocker models`)")->capture_default_str();
  c->add_option("--dataset", a.dataset, "Data set: fashion-mnist, cifar10, cifar100")
      ->capture_default_str();
  c->add_option("--depth", a.depth, "Depth option of the architecture (default: its own)");
  c->add_option("--width", a.width, "Width option of the architecture (default: its own)");
  c->add_option("--set", a.set,
                "Architecture option KEY=VALUE (repeatable; see `corelocker models`)");
  c->add_option("--epochs", a.opts.epochs, "Epochs (0 writes a freshly initialised model)")
      ->capture_default_str();
  c->add_option("--batch-size", a.opts.batch_size, "Batch size")->capture_default_str();
  c->add_option("--lr", a.opts.lr, "Peak learning rate")->capture_default_str();
  c->add_option("--optimizer", a.opts.optimizer, "sgd (Nesterov momentum) | adam")
      ->capture_default_str()
      ->check(CLI::IsMember({"sgd", "adam"}));
  c->add_option("--momentum", a.opts.momentum, "SGD momentum (Nesterov)")->capture_default_str();
  c->add_option("--weight-decay", a.opts.weight_decay, "Weight decay")->capture_default_str();
  c->add_option("--schedule", a.opts.schedule, "onecycle | cosine | constant")
      ->capture_default_str();
  c->add_option("--seed", a.opts.seed, "Random seed")->capture_default_str();
  c->add_option("--train-subset", a.train_subset, "Train on a random N-image subset (0: all)");
  c->add_flag("!--no-augment", a.opts.augment, "Disable random-crop (and flip) augmentation");
  c->add_flag("--flip", a.flip, "Random horizontal flips (default: on for CIFAR, off otherwise)");
}

LoadedModel train_model(const TrainArgs& a, const Common& common, Json& summary_out,
                        Collective* collective) {
  TrainingRun run;
  run.arch = a.arch;
  run.dataset = a.dataset;
  run.arch_options = architecture_options(a.depth, a.width, a.set);
  run.flip = a.flip;
  run.train_subset = a.train_subset;
  run.opts = a.opts;
  run.data_dir = common.data_dir;
  run.checkpoint = a.checkpoint;
  run.resume = a.resume;
  run.collective = collective;
  const bool shown = collective == nullptr || collective->rank() == 0;
  Progress line;
  TrainingRunHooks hooks;
  if (shown) hooks.on_progress = [&](const TrainProgress& p) { train_progress(line, p); };
  StopOnSigint stop;
  hooks.keep_going = [&stop] { return !stop.stopped(); };
  if (shown)
    hooks.on_resume = [&](int next_epoch, int epochs) {
      std::printf("resuming %s at epoch %d of %d\n", a.checkpoint.c_str(), next_epoch, epochs);
      std::fflush(stdout);
    };
  return run_training(run, hooks, summary_out);
}

EffectiveOptions EffectiveArgs::options() const {
  EffectiveOptions o;
  o.reestimate_images = reestimate_images;
  o.seed = seed;
  return o;
}

void add_effective_args(CLI::App* c, EffectiveArgs& a) {
  c->add_option("--reestimate-images", a.reestimate_images,
                "Unlabelled training images on which the effective accuracy re-estimates BatchNorm "
                "statistics "
                "(0: no re-estimation)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  c->add_option("--reestimate-seed", a.seed, "Seed that draws the re-estimation images")
      ->capture_default_str();
}

Dataset effective_images(const ModelMeta& meta, const Common& common, const EffectiveArgs& a) {
  if (a.reestimate_images <= 0) return Dataset{};
  Dataset train = load_dataset(meta.dataset.empty() ? "fashion-mnist" : meta.dataset,
                               common.data_dir, Split::kTrain);
  return reestimation_images(train, a.options());
}

std::string effective_text(const EffectiveEval& e) {
  std::string s = "top-1 " + pct(e.plain.top1) + "%, after BN re-estimation ";
  s += e.reestimated ? pct(e.reestimated->top1) + "%" : "n/a (" + e.reestimate_note + ")";
  if (!e.pruned.empty()) {
    std::string ratios, accs;
    for (const auto& p : e.pruned) {
      ratios += (ratios.empty() ? "" : " / ") + fixed(p.ratio, 2);
      accs += (accs.empty() ? "" : " / ") + pct(p.eval.top1);
    }
    s += ", pruned " + ratios + ": " + accs + "%";
  }
  return s + "; effective " + pct(e.top1_effective) + "%";
}

void print_eval(const std::string& model, const EvalResult& r, bool json, const Json& extra) {
  if (json) {
    Json j = {{"model", model}, {"top1", r.top1},  {"top3", r.top3},
              {"n", r.n},       {"locked", false}, {"seconds", r.seconds}};
    j.update(extra);
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s: top-1 %s%%, top-3 %s%% on %lld test images\n", model.c_str(),
                pct(r.top1).c_str(), pct(r.top3).c_str(), static_cast<long long>(r.n));
  }
}

void print_eval(const std::string& model, const EffectiveEval& e, bool json, const Json& extra) {
  if (json) {
    Json j = effective_to_json(e);
    j.update({{"model", model}, {"n", e.plain.n}, {"locked", true}, {"seconds", e.plain.seconds}});
    j.update(extra);
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s (locked): %s; top-3 %s%% on %lld test images\n", model.c_str(),
                effective_text(e).c_str(), pct(e.plain.top3).c_str(),
                static_cast<long long>(e.plain.n));
  }
}

void add_val_args(CLI::App* c, ValArgs& v) {
  c->add_option("--val-size", v.size, "Validation images, drawn from the training split")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--val-seed", v.seed, "Seed that draws the validation images")
      ->capture_default_str();
}

Dataset validation_set(const ModelMeta& meta, const Common& common, const ValArgs& v) {
  Dataset train = load_dataset(meta.dataset.empty() ? "fashion-mnist" : meta.dataset,
                               common.data_dir, Split::kTrain);
  return subset(train, v.size, v.seed);
}

}  // namespace corelocker::cli
