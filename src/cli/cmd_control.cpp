// `sweep`, `calibrate`, `bands`: granular utility control (accuracy against extraction ratio).
// Each also runs over a group of processes (torchrun): every rank runs the same search, the
// evaluations are shared out, rank 0 prints and writes the files.
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/format_report.h"
#include "cli/progress.h"
#include "control/calibrate.h"
#include "control/curve_model.h"
#include "control/sweep_report.h"
#include "control/utility_curve.h"
#include "distributed/agreement.h"
#include "keyfile/key_file.h"
#include "locking/fingerprint.h"
#include "locking/lock.h"
#include "models/checkpoint.h"
#include "report/csv_log.h"
#include "report/gnuplot.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::cli {
namespace {

std::string ratio_text(double r) { return fixed(r, 6); }

std::string probe_line(int n, const Probe& p, bool effective) {
  char eff[40];
  std::snprintf(eff, sizeof eff, "effective %6s%%", pct(p.top1).c_str());
  char b[240];
  std::snprintf(b, sizeof b,
                "  eval %2d: ratio %s  units %7lld  params %6s%%  val top-1 %6s%%  %s  top-3 %6s%%",
                n, ratio_text(p.ratio).c_str(), static_cast<long long>(p.units),
                fixed(100.0 * p.param_fraction, 3).c_str(), pct(p.plain_top1).c_str(),
                effective ? eff : std::string(std::strlen(eff), ' ').c_str(), pct(p.top3).c_str());
  return b;
}

// The effective target of a search, or none with --target-plain.
std::optional<EffectiveTarget> search_target(bool target_plain, const Dataset& unlabelled,
                                             const EffectiveArgs& a) {
  if (target_plain) return std::nullopt;
  return EffectiveTarget{&unlabelled, a.options()};
}

// True on the rank that reports and writes files (any process outside a group).
bool reports(const std::unique_ptr<Group>& group) { return group == nullptr || group->rank() == 0; }

// The model a search runs on, in whatever format its file is (ModelFormat::open_curve), its
// input described by the options; a locked model is refused (`verb` says what to do instead).
std::unique_ptr<CurveModel> open_unlocked(const std::string& path, const InputArgs& input,
                                          const char* verb) {
  // As many threads as join_command_group gave LibTorch.
  std::unique_ptr<CurveModel> model = model_formats().of(path).open_curve(
      path, static_cast<unsigned>(std::max(1, torch::get_num_threads())),
      [&input](ModelMeta& meta, bool stored, const std::string& p) {
        apply_input_override(input, meta, stored, p);
      });
  if (model->meta().lock) {
    throw UsageError("model '" + path + "' is locked; " + verb + " an unlocked model");
  }
  return model;
}

// Checks that every rank of a group loaded the same model and data.
void agree_on_inputs(Group* group, const CurveModel& model,
                     std::initializer_list<std::pair<const char*, const Dataset*>> data) {
  if (group == nullptr) return;
  group->agree("model (fingerprint)", to_hex(model.fingerprint()));
  for (const auto& [what, d] : data) agree_on_data(*group, what, *d);
}

// What sweep, calibrate and bands share: the unlocked model, and the options of its data,
// compute, effective target and input description.
struct SearchCommand : Command {
  std::string model_path;
  Common common;
  EffectiveArgs effective;
  InputArgs input;

  void add_model(CLI::App* c) {
    c->add_option("--model", model_path, "Model file: checkpoint, TorchScript or ONNX (unlocked)")
        ->required();
  }
  // The options every search ends with.
  void add_run_options(CLI::App* c) {
    add_threads(c, common);
    add_data(c, common);
    add_input_args(c, input);
  }
};

// ---------------------------------------------------------------- sweep
struct Sweep : SearchCommand {
  std::string ratios, criteria = "l1,bn,random", units = "l1", out_dir, scope;
  double from = 0.0, to = 0.0;
  int steps = 0, seeds = 5;
  uint64_t first_seed = 0;
  bool log_space = false, include_io = false, exclude_io = false, no_plot = false,
       plain_only = false, resume = false;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand(
        "sweep", "Accuracy against extraction ratio for several criteria (CSV, JSON, plot)");
    add_model(c);
    auto* r = c->add_option("--ratios", ratios, "Comma-separated ratios, e.g. 0.0005,0.001,0.005");
    auto* f = c->add_option("--from", from, "First ratio of a range")->check(CLI::Range(0.0, 1.0));
    auto* t = c->add_option("--to", to, "Last ratio of a range")->check(CLI::Range(0.0, 1.0));
    auto* s = c->add_option("--steps", steps, "Ratios in the range, ends included")
                  ->check(CLI::PositiveNumber);
    c->add_flag("--log", log_space, "Space the range evenly in log(ratio) (default: linearly)");
    r->excludes(f)->excludes(t)->excludes(s);
    c->add_option("--criteria", criteria,
                  "Comma-separated: l1, bn, random (the paper's criteria, each in its own scope "
                  "unless --scope; "
                  "--scope global --include-io gives the default lock's units)")
        ->capture_default_str();
    c->add_option("--seeds", seeds, "Seeds for random (mean and sample sd)")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    c->add_option("--first-seed", first_seed, "First seed for random")->capture_default_str();
    c->add_option("--units", units, "Units drawn by random: l1 | bn")->capture_default_str();
    auto* io = c->add_flag("--include-io", include_io, kIncludeIoHelp);
    c->add_flag("--exclude-io", exclude_io,
                "Leave the first and last layer alone (the default here)")
        ->excludes(io);
    c->add_option("--scope", scope,
                  "layer | global for every criterion (default: the paper's, layer for l1/random, "
                  "global for bn)");
    c->add_flag("--plain-only", plain_only,
                "Measure only the plain top-1 (no effective top-1: BatchNorm re-estimation and "
                "pruning per point)");
    add_effective_args(c, effective);
    c->add_option("--out-dir", out_dir,
                  "Folder for sweep.csv (row by row), sweep.json, sweep.png, sweep.svg, sweep.gp");
    c->add_flag("--no-plot", no_plot, "Skip the plot (no gnuplot needed)");
    c->add_flag("--resume", resume,
                "Go on from the points an interrupted run of the same sweep left in --out-dir "
                "(sweep.json); without one there, start");
    add_run_options(c);
    return c;
  }

  int run() override {
    const std::unique_ptr<Group> group = join_command_group(sub, common);
    require_runnable(model_path, Feature::kCalibrate, "sweep");
    if (resume && out_dir.empty()) throw UsageError("--resume needs the sweep's --out-dir");
    if (!resume && !out_dir.empty() && holds_finished_sweep(out_dir)) {
      throw UsageError("'" + out_dir +
                       "' holds a finished sweep (sweep.json): choose another --out-dir, or "
                       "remove it to measure again");
    }
    SweepOptions o;
    if (!ratios.empty()) {
      o.ratios = parse_ratios(ratios);
    } else {
      if (steps == 0) throw UsageError("give --ratios or --from, --to and --steps");
      o.ratios = ratio_steps(from, to, steps, log_space);
    }
    o.criteria = parse_criteria(criteria);
    o.seeds = seeds;
    o.first_seed = first_seed;
    o.include_io = include_io;
    if (units != "l1" && units != "bn")
      throw UsageError("units '" + units + "': expected l1 or bn");
    o.random_bn_units = units == "bn";
    if (!scope.empty()) o.scope = parse_scope(scope);

    const std::unique_ptr<CurveModel> model = open_unlocked(model_path, input, "sweep");
    const ModelMeta& meta = model->meta();
    const Digest fp_before = model->fingerprint();
    const Dataset data = test_set(meta, common);
    const Dataset unlabelled = plain_only ? Dataset{} : effective_images(meta, common, effective);
    agree_on_inputs(group.get(), *model,
                    {{"test data", &data}, {"re-estimation images", &unlabelled}});
    o.group = group.get();
    const EvalResult original = model->evaluate(data, 500, group.get());
    const double chance = 100.0 / double(data.classes);
    if (!plain_only) o.effective = EffectiveTarget{&unlabelled, effective.options()};
    SweepRun run;
    run.model = model_path;
    run.fingerprint = fp_before;
    run.dataset = meta.dataset;
    run.test_images = data.size();
    run.unlocked = original;
    run.chance = chance;
    run.reestimate_images = unlabelled.size();
    run.scope = scope.empty() ? "default" : scope;
    run.random_units = units;
    // Rank 0 writes the files, so it reads what an earlier run left; the others learn how many
    // points to skip from it.
    EarlierSweep earlier;
    if (resume && reports(group)) earlier = read_earlier_sweep(out_dir, run, o);
    o.skip_points = earlier.points.size();
    if (group) {
      std::vector<torch::Tensor> skip = {torch::full({1}, int64_t(o.skip_points), torch::kInt64)};
      group->sum(skip);
      o.skip_points = size_t(skip[0].item<int64_t>());
    }
    std::unique_ptr<SweepReport> report;
    if (!out_dir.empty() && reports(group))
      report = std::make_unique<SweepReport>(out_dir, run, o, earlier);
    std::printf("sweep %s on %lld test images: unlocked top-1 %s%%, top-3 %s%%\n",
                model_path.c_str(), static_cast<long long>(data.size()), pct(original.top1).c_str(),
                pct(original.top3).c_str());
    if (resume && earlier.found) {
      std::printf("resuming: %zu points are in %s/sweep.json\n", earlier.points.size(),
                  out_dir.c_str());
    } else if (resume) {
      std::printf("nothing to resume in %s: starting\n", out_dir.c_str());
    }
    std::printf("%-9s %10s %9s %9s %16s %16s %10s %10s\n", "criterion", "ratio", "units", "params%",
                "top-1 %", "top-3 %", "BN re-est.", "effective");
    std::fflush(stdout);
    const size_t total = o.ratios.size() * o.criteria.size();
    Progress line;
    StopOnSigint stop;
    const auto start = std::chrono::steady_clock::now();
    auto points = sweep(*model, data, o, [&](const CurvePoint& p) {
      const bool spread = p.top1_runs.size() > 1;
      auto acc = [&](double m, double sd) {
        return spread ? pct(m) + " +- " + fixed(sd, 2) : pct(m);
      };
      line.finish("");
      auto opt = [](const std::optional<double>& v) { return v ? pct(*v) : std::string("-"); };
      std::printf("%-9s %10s %9lld %9s %16s %16s %10s %10s\n", to_string(p.criterion),
                  ratio_text(p.ratio).c_str(), static_cast<long long>(p.units),
                  fixed(100.0 * p.param_fraction, 3).c_str(), acc(p.top1, p.top1_sd).c_str(),
                  acc(p.top3, p.top3_sd).c_str(), opt(p.top1_reestimated).c_str(),
                  opt(p.top1_effective).c_str());
      std::fflush(stdout);
      if (report) report->add(p);
      return !stop.stopped();
    });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    line.finish("");
    // The sweep restored every point from memory: the model must be exactly the one loaded.
    if (model->fingerprint() != fp_before)
      throw Error("model changed during the sweep (fingerprint differs)");
    const size_t measured = o.skip_points + points.size();
    const bool complete = measured == total;
    std::printf("%zu of %zu points in %s\n", measured, total, format_duration(seconds).c_str());
    if (report) {
      const auto written = report->finish(complete, seconds, !no_plot);
      std::printf("wrote %s/sweep.csv", out_dir.c_str());
      for (const auto& file : written) std::printf(", %s", file.c_str());
      std::printf("\n");
    }
    if (!complete)
      throw Error("sweep interrupted after " + std::to_string(measured) + " of " +
                  std::to_string(total) +
                  " points; the files hold the points measured (--resume goes on)");
    return 0;
  }
};

// ---------------------------------------------------------------- calibrate
struct Calibrate : SearchCommand {
  std::string target, out, key_out;
  UnitArgs unit_args;
  ValArgs val;
  CalibrationOptions copt;
  bool target_plain = false;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand("calibrate",
                                 "Find an extraction ratio whose accuracy falls in a target band");
    add_model(c);
    c->add_option("--target", target,
                  "Top-1 band in percent, e.g. 50-55, of the effective top-1 (after BatchNorm "
                  "re-estimation and "
                  "pruning; measured on validation)")
        ->required();
    c->add_flag("--target-plain", target_plain,
                "Target the plain top-1 of the locked model instead of the effective one");
    add_effective_args(c, effective);
    add_unit_args(c, unit_args, /*random_allowed=*/true);
    add_val_args(c, val);
    c->add_option("--max-evals", copt.max_evaluations, "Most evaluations to spend")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    c->add_option("--start", copt.start_ratio, "First ratio tried")
        ->capture_default_str()
        ->check(CLI::Range(1e-9, 1.0));
    c->add_option("--step", copt.step, "Bracketing factor")->capture_default_str();
    c->add_option("--out", out, "Write the model locked at the chosen ratio here (with --key-out)");
    c->add_option("--key-out", key_out, "Write its access key here (with --out)");
    add_run_options(c);
    return c;
  }

  int run() override {
    const std::unique_ptr<Group> group = join_command_group(sub, common);
    require_runnable(model_path, Feature::kCalibrate, "calibrate");
    const Band band = parse_band(target);
    const LockOptions lopt = band_lock_options(unit_args);
    if (out.empty() != key_out.empty()) throw UsageError("--out and --key-out go together");
    if (!out.empty() && same_file(out, key_out))
      throw UsageError("--out '" + out + "' and --key-out '" + key_out + "' name the same file");
    if (!out.empty() && &model_formats().of(out) != &model_formats().of(model_path)) {
      const ModelFormat& format = model_formats().of(model_path);
      throw UsageError("--out '" + out + "': '" + model_path + "' is written as " + format.name() +
                       " (" + format.recognition() + ")");
    }
    // The input description is stored in the locked model --out writes, where the format can.
    const std::unique_ptr<CurveModel> model = open_unlocked(model_path, input, "calibrate");
    const ModelMeta& meta = model->meta();
    const Dataset val_data = validation_set(meta, common, val);
    const Dataset unlabelled = target_plain ? Dataset{} : effective_images(meta, common, effective);
    agree_on_inputs(group.get(), *model,
                    {{"validation data", &val_data}, {"re-estimation images", &unlabelled}});
    copt.effective = search_target(target_plain, unlabelled, effective);
    copt.group = group.get();
    const Ranking ranking = model->rank(lopt);
    std::printf(
        "calibrate %s: %s to %s top-1 %s-%s%% on %lld validation images from the training "
        "split "
        "(seed %llu)\n",
        model_path.c_str(), describe_units({lopt.criterion, lopt.scope, lopt.include_io}).c_str(),
        target_plain ? "plain" : "effective", fixed(band.low, 1).c_str(),
        fixed(band.high, 1).c_str(), static_cast<long long>(val_data.size()),
        static_cast<unsigned long long>(val.seed));
    std::fflush(stdout);
    int n = 0;
    Calibration cal = calibrate(*model, ranking, val_data, band, copt, [&](const Probe& p) {
      std::printf("%s\n", probe_line(++n, p, !target_plain).c_str());
      std::fflush(stdout);
    });
    std::printf("%s after %d evaluations: %s\n", to_string(cal.status),
                static_cast<int>(cal.probes.size()), cal.explanation.c_str());
    std::printf("  validation top-1 seen: %s%% .. %s%%\n", pct(cal.reach_low).c_str(),
                pct(cal.reach_high).c_str());
    if (!cal.found()) {
      if (!cal.probes.empty()) {
        std::printf("  closest: ratio %s gives %s%% on validation\n",
                    ratio_text(cal.chosen.ratio).c_str(), pct(cal.chosen.top1).c_str());
      }
      throw Error("no ratio found for band " + target + ": " + cal.explanation +
                  "; nothing written");
    }
    // The ranking the chosen ratio applies to, with the units that jumped over the band moved down.
    const Ranking chosen_ranking = calibrated_ranking(ranking, cal);
    const Dataset test_data = test_set(meta, common);
    agree_on_inputs(group.get(), *model, {{"test data", &test_data}});
    const EffectiveTarget test_target{&unlabelled, effective.options()};
    const LockedEval on_test =
        model->evaluate_locked(chosen_ranking, cal.chosen.ratio, test_data, 500,
                               target_plain ? nullptr : &test_target, group.get());
    std::printf("chosen ratio %s: %lld units, %s%% of parameters\n",
                ratio_text(cal.chosen.ratio).c_str(), static_cast<long long>(cal.chosen.units),
                fixed(100.0 * cal.chosen.param_fraction, 3).c_str());
    if (!cal.reordered.empty()) {
      int64_t moved = 0;
      for (const auto& m : cal.reordered) moved += m.count;
      std::printf(
          "  %lld unit(s) that each took the accuracy from above the band to below it were moved "
          "to the end of "
          "the ranking; `lock --ratio` at this ratio takes other units, the key written here holds "
          "these\n",
          static_cast<long long>(moved));
    }
    std::printf("  validation top-1 %s%%%s  top-3 %s%%\n", pct(cal.chosen.plain_top1).c_str(),
                target_plain ? "" : ("  effective " + pct(cal.chosen.top1) + "%").c_str(),
                pct(cal.chosen.top3).c_str());
    if (on_test.effective) {
      std::printf("  test       %s (%lld images)\n", effective_text(*on_test.effective).c_str(),
                  static_cast<long long>(on_test.eval.n));
    } else {
      std::printf("  test       top-1 %s%%  top-3 %s%% (%lld images)\n",
                  pct(on_test.eval.top1).c_str(), pct(on_test.eval.top3).c_str(),
                  static_cast<long long>(on_test.eval.n));
    }
    if (!out.empty() && reports(group)) {
      // Key first: a locked model without its key would be lost utility; a key without its
      // locked model is removed again.
      KeyCommit keys(KeyCredentials{});
      const LockReport s =
          model->lock_and_write(chosen_ranking, cal.chosen.ratio, out, key_out, keys);
      std::printf("locked at ratio %s\n", ratio_text(cal.chosen.ratio).c_str());
      print_extraction(s.units, s.candidates, s.values, s.parameters, s.keys.front().bytes);
      std::printf("  locked model:         %s\n  key:                  %s (key id %s)\n",
                  out.c_str(), key_out.c_str(), s.key_id.c_str());
    }
    return 0;
  }
};

// ---------------------------------------------------------------- bands
struct Bands : SearchCommand {
  std::string json_out;
  UnitArgs unit_args;
  ValArgs val;
  BandsOptions bopt;
  bool no_test = false, target_plain = false;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand(
        "bands", "The smallest ratio for each utility band (the paper's Tables 5 and 6)");
    add_model(c);
    c->add_option("--width", bopt.width, "Band width in points")->capture_default_str();
    c->add_flag("--target-plain", target_plain,
                "Bands of the plain top-1 of the locked model (default: of the effective top-1, "
                "after BatchNorm "
                "re-estimation and pruning)");
    add_effective_args(c, effective);
    add_unit_args(c, unit_args, /*random_allowed=*/true);
    add_val_args(c, val);
    c->add_option("--tolerance", bopt.tolerance, "Relative precision of each band's smallest ratio")
        ->capture_default_str();
    c->add_option("--max-evals", bopt.max_evaluations,
                  "Most validation evaluations for the whole table")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    c->add_flag("--no-test", no_test, "Do not evaluate each band's ratio on the test split");
    c->add_option("--json", json_out, "Also write the table as JSON");
    add_run_options(c);
    return c;
  }

  int run() override {
    const std::unique_ptr<Group> group = join_command_group(sub, common);
    require_runnable(model_path, Feature::kCalibrate, "bands");
    const LockOptions lopt = band_lock_options(unit_args);
    const std::unique_ptr<CurveModel> model = open_unlocked(model_path, input, "use");
    const ModelMeta& meta = model->meta();
    const Dataset val_data = validation_set(meta, common, val);
    const Dataset unlabelled = target_plain ? Dataset{} : effective_images(meta, common, effective);
    agree_on_inputs(group.get(), *model,
                    {{"validation data", &val_data}, {"re-estimation images", &unlabelled}});
    bopt.effective = search_target(target_plain, unlabelled, effective);
    bopt.group = group.get();
    const Ranking ranking = model->rank(lopt);
    std::printf(
        "bands %s: %s, %s-point bands of the %s top-1, on %lld validation images from the training "
        "split\n",
        model_path.c_str(), describe_units({lopt.criterion, lopt.scope, lopt.include_io}).c_str(),
        fixed(bopt.width, 1).c_str(), target_plain ? "plain" : "effective",
        static_cast<long long>(val_data.size()));
    std::fflush(stdout);
    int n = 0;
    BandsTable table = utility_bands(*model, ranking, val_data, bopt, [&](const Probe& p) {
      std::printf("%s\n", probe_line(++n, p, !target_plain).c_str());
      std::fflush(stdout);
    });
    Dataset test_data;
    if (!no_test) {
      test_data = test_set(meta, common);
      agree_on_inputs(group.get(), *model, {{"test data", &test_data}});
    }
    std::printf("\nunlocked: validation top-1 %s%%; chance %s%%; %d evaluations%s\n",
                pct(table.original_top1).c_str(), pct(table.chance).c_str(), table.evaluations,
                table.complete ? "" : " (budget ran out: table incomplete)");
    std::printf("%-12s %10s %9s %9s %11s %11s   (%s top-1)\n", "band", "ratio", "units", "params%",
                "val top-1", "test top-1", target_plain ? "plain" : "effective");
    Json rows = Json::array();
    for (const auto& row : table.rows) {
      const std::string label = fixed(row.band.low, 0) + "-" + fixed(row.band.high, 0) + "%";
      Json jr = {{"low", row.band.low}, {"high", row.band.high}, {"reached", row.reached}};
      if (!row.reached) {
        if (row.first.units > 0 || row.first.ratio > 0) {
          std::printf("%-12s skipped: ratio %s (%s%%) -> %s (%s%%)\n", label.c_str(),
                      ratio_text(row.below_ratio).c_str(), pct(row.below_top1).c_str(),
                      ratio_text(row.first.ratio).c_str(), pct(row.first.top1).c_str());
        } else {
          std::printf("%-12s not reached\n", label.c_str());
        }
        rows.push_back(jr);
        continue;
      }
      std::string test_col = "-";
      if (!no_test) {
        const EffectiveTarget test_target{&unlabelled, effective.options()};
        const LockedEval e =
            model->evaluate_locked(ranking, row.first.ratio, test_data, 500,
                                   target_plain ? nullptr : &test_target, group.get());
        test_col = pct(e.target_top1());
        jr["test_top1"] = e.eval.top1;
        jr["test_top3"] = e.eval.top3;
        if (e.effective) jr["test_top1_effective"] = e.effective->top1_effective;
      }
      std::printf("%-12s %10s %9lld %9s %11s %11s\n", label.c_str(),
                  ratio_text(row.first.ratio).c_str(), static_cast<long long>(row.first.units),
                  fixed(100.0 * row.first.param_fraction, 3).c_str(), pct(row.first.top1).c_str(),
                  test_col.c_str());
      std::fflush(stdout);
      jr.update({{"ratio", row.first.ratio},
                 {"units", row.first.units},
                 {"param_fraction", row.first.param_fraction},
                 {"val_top1", row.first.plain_top1},
                 {"val_top1_target", row.first.top1},
                 {"val_top3", row.first.top3}});
      rows.push_back(jr);
    }
    if (!json_out.empty() && reports(group)) {
      Json probes = Json::array();
      for (const auto& p : table.probes) {
        probes.push_back(
            {{"ratio", p.ratio}, {"units", p.units}, {"top1", p.top1}, {"top3", p.top3}});
      }
      Json j = {{"model", model_path},
                {"criterion", to_string(lopt.criterion)},
                {"scope", to_string(lopt.scope)},
                {"include_io", lopt.include_io},
                {"target", target_plain ? "plain" : "effective"},
                {"width", bopt.width},
                {"val_size", val_data.size()},
                {"val_seed", val.seed},
                {"unlocked_val_top1", table.original_top1},
                {"chance", table.chance},
                {"evaluations", table.evaluations},
                {"complete", table.complete},
                {"rows", rows},
                {"probes", probes}};
      write_file_atomic(json_out, j.dump(2) + "\n");
      std::printf("wrote %s\n", json_out.c_str());
    }
    if (!table.complete)
      throw Error("bands: --max-evals " + std::to_string(bopt.max_evaluations) +
                  " ran out; table incomplete");
    return 0;
  }
};

}  // namespace

std::unique_ptr<Command> make_sweep() { return std::make_unique<Sweep>(); }
std::unique_ptr<Command> make_calibrate() { return std::make_unique<Calibrate>(); }
std::unique_ptr<Command> make_bands() { return std::make_unique<Bands>(); }

}  // namespace corelocker::cli
