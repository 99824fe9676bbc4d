// The attack harness: runs an attack over several trials, each on a fresh random subset of the
// training split, and measures the test accuracy it wins back. The test split is only ever
// evaluated on, never trained or calibrated on.
//
// Trial t (0-based) draws round(data_fraction * |train|) training images with seed `seed + t`
// and trains with the same seed, so every attack of one run sees the same data in trial t:
// differences between attacks (and against `scratch`) are paired.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "attacks/attacks.h"
#include "distributed/collective.h"
#include "eval/evaluate.h"

namespace corelocker {

struct AttackConfig {
  AttackKind kind = AttackKind::kFinetune;
  TrainOptions train;            // the budget: epochs, lr, batch size, schedule
  double prune_ratio = 0.2;      // prune
  bool bn_train_affine = false;  // bn-recalibrate
  // "finetune", "reinit + finetune", "prune 0.20", "prune 0.20 + finetune",
  // "bn-recalibrate + affine", ...
  std::string label() const;
  // False when the attack ignores the attacker's data (prune without fine-tuning): one trial is
  // then enough, as every trial would give the same model.
  bool uses_data() const;
};

struct HarnessOptions {
  double data_fraction = 0.05;  // of the training split, in (0, 1]
  int trials = 3;
  uint64_t seed = 0;
  int64_t eval_batch = 500;
};

struct TrialResult {
  int trial = 0;
  uint64_t seed = 0;
  int64_t train_images = 0;
  double top1 = 0.0;       // test accuracy after the attack (percent)
  double recovered = 0.0;  // top1 - locked top1 (points)
  double seconds = 0.0;    // attack time, evaluation excluded
  std::string detail;      // what the attack found or did, in words
};

struct AttackReport {
  AttackConfig config;
  HarnessOptions options;
  std::string label;
  int64_t train_split_size = 0;
  double locked_top1 = 0.0;
  std::optional<double> original_top1;
  std::vector<TrialResult> trials;
  double mean_top1 = 0.0, sd_top1 = 0.0;            // sample sd over trials
  double mean_recovered = 0.0, sd_recovered = 0.0;  // points
  // Set by compare_to_scratch: mean over trials of (attack top-1 - scratch top-1), paired by
  // trial, and its sample sd.
  std::optional<double> advantage, sd_advantage;
  int advantage_pairs = 0;  // differences behind the advantage (sd needs two)
  // Why the attack cannot run on this model (bn-recalibrate on a traced TorchScript graph, or on
  // a model without BatchNorm statistics); empty when it ran. A skipped report has no trials.
  std::string skipped;
};

struct AttackHooks {
  // Progress of any training inside a trial.
  std::function<void(const std::string& label, int trial, const TrainProgress&)> on_train;
  // After each trial: the attacker's data and the attacked model (before evaluation).
  std::function<void(int trial, const Dataset& attacker_data, LoadedModel& attacked)> on_trial;
};

// The attacker's data for one trial: round(fraction * |train|) images drawn with `seed`.
// Throws UsageError when the fraction is outside (0, 1] or selects no image.
Dataset attacker_data(const Dataset& train_split, double fraction, uint64_t seed);

// Why `config`'s attack cannot run on `model` (see AttackReport::skipped); empty when it can.
std::string attack_unavailable(LoadedModel& model, const AttackConfig& config);

// Runs one attack over options.trials trials (one when the attack uses no data), or none, with
// the reason in report.skipped, when attack_unavailable says it cannot run. `locked` is never
// modified: each trial attacks a copy (scratch builds a fresh model from the metadata only, or
// re-initialises a copy of a TorchScript module). `locked_top1` is the locked model's accuracy on
// `test` (evaluate it once and pass it to every attack); `original_top1`, when known, is recorded
// for the report. Throws UsageError for bad options.
AttackReport run_attack(LoadedModel& locked, const Dataset& train_split, const Dataset& test,
                        double locked_top1, std::optional<double> original_top1,
                        const AttackConfig& config, const HarnessOptions& options,
                        const AttackHooks& hooks = {});

// Fills report.advantage from a scratch report of the same data fraction and seed (paired by
// trial; an attack with a single trial is compared with every scratch trial). Throws UsageError
// when the two runs did not use the same data.
void compare_to_scratch(AttackReport& report, const AttackReport& scratch);

// What `attack` runs for the attacks it is asked for.
struct AttackPlanOptions {
  std::vector<AttackKind> kinds;
  // `attack all`: prune also with `prune_epochs` of fine-tuning, bn-recalibrate both without
  // and with training the BatchNorm affine parameters.
  bool all = false;
  TrainOptions train;    // the budget of the attacks that train
  int epochs = -1;       // -1: 2 for the attacks that train, 0 for prune
  int prune_epochs = 0;  // with `all`
  std::vector<double> prune_ratios = {0.2};
  bool bn_train_affine = false;  // bn-recalibrate (without `all`)
};
// The configurations, in report-table order (prune once a ratio).
std::vector<AttackConfig> attack_plan(const AttackPlanOptions& options);

struct AttackGridHooks : AttackHooks {
  std::function<void(const AttackConfig& config, double fraction)> on_start;
  std::function<void(const AttackReport& report)> on_done;
};

// Runs every configuration of `plan` at every attacker data fraction with `base`'s trials and
// seed (an attack that uses no data once, at the first fraction), then compares each row with
// the scratch row of the same fraction when scratch is in the plan. Rows in order: fraction,
// then plan. Throws what run_attack throws.
//
// With a group (`group`, more than one rank), every rank calls it alike: the ranks check that
// they have the same grid, model and data, then take trials from a shared queue until none is
// left; rank 0 gathers the trials and returns the reports, which are those of one process with
// the same seeds (each trial draws only from its own seed; floating-point results also need the
// same --threads). The other ranks return nothing. on_start runs on the rank that runs a trial,
// as it starts one; on_done on rank 0, once every trial is in.
std::vector<AttackReport> run_attack_grid(
    LoadedModel& locked, const Dataset& train_split, const Dataset& test, double locked_top1,
    std::optional<double> original_top1, const std::vector<AttackConfig>& plan,
    const std::vector<double>& fractions, const HarnessOptions& base,
    const AttackGridHooks& hooks = {}, Collective* group = nullptr);

// Caveats of the report for this model, in words; empty when there are none (a traced
// TorchScript graph that fixes BatchNorm in evaluation mode makes scratch a weak yardstick).
std::string attack_caveat(LoadedModel& locked);

// The first trial's detail of each row, "  LABEL (F% data): DETAIL", each distinct line once.
std::vector<std::string> report_details(const std::vector<AttackReport>& reports);

// A deep copy of a model: metadata and every parameter and buffer (a TorchScript module is
// copied whole, see TorchScriptNetwork::deep_copy).
LoadedModel copy_model(LoadedModel& model);

// One table, one row per report that ran: attack, data, trials, locked, after attack, recovered,
// advantage over scratch, time per trial; then one line per skipped report with its reason.
std::string report_table(const std::vector<AttackReport>& reports);

// The non-scratch report with the largest advantage over scratch (the first of equals); null when
// no report has an advantage (scratch did not run).
const AttackReport* best_advantage(const std::vector<AttackReport>& reports);

// One line per non-scratch report with an advantage over scratch, then a verdict line naming the
// largest advantage, or saying that no attack beats scratch when none is above 0:
//   advantage over scratch: finetune (5% data) +27.81 ± 1.20 points
//   verdict: the largest advantage over scratch is +27.81 points (finetune, 5% data)
// Empty when no report has an advantage.
std::string advantage_summary(const std::vector<AttackReport>& reports);

// All reports with every trial (a skipped one with "skipped": its reason, and no numbers), and
// the verdict (best_advantage: attack, kind, data_fraction,
// advantage, sd_advantage; null without one), as one JSON object.
nlohmann::json report_json(const std::vector<AttackReport>& reports);

}  // namespace corelocker
