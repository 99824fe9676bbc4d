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

namespace {

struct Lock : Command {
  LockArgs args;  // what every format reads (format_options.h)
  std::string tiers, tier_bands;
  ValArgs val;
  bool eval_after = false, target_plain = false;
  EffectiveArgs effective;
  int decoy_tries = 8;
  std::string decoy_target = "zero";
  Common common;  // data options (threads: args.threads)
  InputArgs input;
  // The options run() asks about: whether --decoy-tries / --decoy-target were given, and those
  // that only matter when the model runs (refused for a format that cannot run it), in order.
  CLI::Option* decoy_tries_opt = nullptr;
  CLI::Option* decoy_target_opt = nullptr;
  std::vector<CLI::Option*> run_only;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand("lock", "Extract the most significant units into an access key");
    add_lock_options(c, args);
    c->add_option("--tiers", tiers,
                  "Tiered keys: comma-separated ratios, e.g. 0.005,0.02,0.05 (replaces --ratio)");
    auto* tier_bands_opt = c->add_option(
        "--tier-bands", tier_bands,
        "Tiered keys by utility: comma-separated top-1 bands, e.g. 30-35,60-65; each tier's ratio "
        "is calibrated on a validation split of the training data");
    add_val_args(c, val);
    auto* target_plain_opt =
        c->add_flag("--target-plain", target_plain,
                    "--tier-bands: bands of the plain top-1 (default: of the effective top-1, "
                    "after BatchNorm re-estimation and pruning)");
    decoy_tries_opt =
        c->add_option("--decoy-tries", decoy_tries,
                      "With --fill decoy (single ratio): draw this many decoy fills and keep the "
                      "one that --decoy-target picks by top-1 on the validation split (1: no "
                      "search, no data needed)")
            ->capture_default_str()
            ->check(CLI::Range(1, 1000));
    decoy_target_opt =
        c->add_option("--decoy-target", decoy_target,
                      "zero: the draw nearest the zero-filled lock's accuracy (same utility, "
                      "hidden positions); lowest: the lowest accuracy")
            ->capture_default_str()
            ->check(CLI::IsMember({"zero", "lowest"}));
    auto* eval_opt =
        c->add_flag("--eval", eval_after,
                    "Evaluate the locked model (every tier) on the test split: plain, after "
                    "BatchNorm re-estimation and pruning, and the effective top-1 (the highest of "
                    "them)");
    add_effective_args(c, effective);
    add_data(c, common);
    add_input_args(c, input);
    run_only = {eval_opt, tier_bands_opt, target_plain_opt, decoy_tries_opt, decoy_target_opt};
    // Declared by the helpers above (common.h): looked up once, while building the parser.
    for (const char* name :
         {"--val-size", "--val-seed", "--data-dir", "--test-subset", "--dataset", "--mean", "--std",
          "--pad", "--resize", "--channels", "--reestimate-images", "--reestimate-seed"}) {
      run_only.push_back(c->get_option(name));
    }
    return c;
  }

  int run() override {
    const std::string& model_path = args.model;
    const ModelFormat& format = model_formats().of(model_path);
    if (!tiers.empty() && !tier_bands.empty())
      throw UsageError("give --tiers or --tier-bands, not both");
    LockRequest r = lock_request(args);
    if (!tier_bands.empty())
      r.units = band_units(args.criterion, args.scope, args.include_io, args.exclude_io);
    if (!tiers.empty()) r.tier_ratios = parse_ratios(tiers);
    r.tier_bands = !tier_bands.empty();
    check_lock_request(format, r);
    const Support evaluates = format.supports(Feature::kEvaluate);
    if (!evaluates.works) {
      // Options that only matter when the model runs are refused, not silently dropped.
      for (const CLI::Option* o : run_only) {
        if (o == decoy_tries_opt && decoy_tries == 1) continue;  // one draw: nothing runs
        if (o->count() > 0) {
          throw UsageError(o->get_name() + ": not for '" + model_path + "' (" + format.name() +
                           "): " + evaluates.note);
        }
      }
    }
    common.threads = args.threads;
    r.threads = static_cast<unsigned>(apply_threads(common));
    std::vector<Band> bands;
    if (r.tier_bands) {
      std::stringstream ss(tier_bands);
      for (std::string item; std::getline(ss, item, ',');) bands.push_back(parse_band(item));
    }
    std::string after_lock;  // the single lock's evaluation, printed after the lock's report
    LockEvaluation ev;
    ev.input_given = input.given();
    ev.describe_input = [this](ModelMeta& meta, bool stored, const std::string& path) {
      apply_input_override(input, meta, stored, path);
    };
    ev.test = [this](const ModelMeta& meta) { return test_set(meta, common); };
    ev.validation = [this](const ModelMeta& meta) { return validation_set(meta, common, val); };
    ev.unlabelled = [this](const ModelMeta& meta) {
      return effective_images(meta, common, effective);
    };
    ev.effective = effective.options();
    ev.evaluate_locked = eval_after;
    ev.decoy_tries = decoy_tries;
    ev.decoy_search_given =
        decoy_tries > 1 && (decoy_tries_opt->count() > 0 || decoy_target_opt->count() > 0);
    ev.decoy_target =
        decoy_target == "lowest" ? DecoySearch::Target::kLowest : DecoySearch::Target::kMatchZero;
    ev.tier_bands = bands;
    ev.target_plain = target_plain;
    ev.on_band = [this](const Band& b, const Calibration& cal) {
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
    run_lock(format, r, args.access);
    std::fputs(after_lock.c_str(), stdout);
    return 0;
  }
};

// ---------------------------------------------------------------- unlock
struct Unlock : Command {
  UnlockArgs args;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand("unlock",
                                 "Restore the original model from a locked model and its key(s)");
    add_unlock_options(c, args);
    return c;
  }

  int run() override { return run_unlock(model_formats().of(args.model), args); }
};

// ---------------------------------------------------------------- fingerprint
struct Fingerprint : Command {
  InspectArgs args;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand("fingerprint", "Print a model's fingerprint (BLAKE2b-256, hex)");
    add_fingerprint_options(c, args);
    return c;
  }

  int run() override { return run_fingerprint(model_formats().of(args.file), args); }
};

// ---------------------------------------------------------------- inspect
struct Inspect : Command {
  InspectArgs args;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand("inspect", "Describe a model file or a key");
    add_inspect_options(c, args);
    return c;
  }

  int run() override { return run_inspect(model_formats(), args); }
};

// ---------------------------------------------------------------- formats
struct Formats : Command {
  bool json = false;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand(
        "formats", "Print what each model format supports (the capability matrix) and why not");
    c->add_flag("--json", json, "Print one JSON array");
    return c;
  }

  int run() override {
    print_formats(model_formats(), json);
    return 0;
  }
};

}  // namespace

std::unique_ptr<Command> make_lock() { return std::make_unique<Lock>(); }
std::unique_ptr<Command> make_unlock() { return std::make_unique<Unlock>(); }
std::unique_ptr<Command> make_fingerprint() { return std::make_unique<Fingerprint>(); }
std::unique_ptr<Command> make_inspect() { return std::make_unique<Inspect>(); }
std::unique_ptr<Command> make_formats() { return std::make_unique<Formats>(); }

}  // namespace corelocker::cli
