// Utility curves: the accuracy of a model locked at many extraction ratios. Units are ranked once
// per criterion (and per seed for `random`); each point extracts the plan in memory, evaluates
// and writes the original values back, so the model is never reloaded from a file and ends
// exactly as it started (same fingerprint).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "attacks/effective.h"
#include "data/dataset.h"
#include "distributed/collective.h"
#include "eval/evaluate.h"
#include "locking/lock.h"
#include "locking/selection.h"
#include "models/checkpoint.h"

namespace corelocker {

class CurveModel;

// Where a curve or a search measures the effective accuracy (attacks/effective.h) beside the
// plain one: the unlabelled images the BatchNorm re-estimation uses (not owned; empty: no
// re-estimation) and the options.
struct EffectiveTarget {
  const Dataset* unlabelled = nullptr;
  EffectiveOptions options;
};

// What one locked evaluation measured.
struct LockedEval {
  double ratio = 0.0;
  EvalResult eval;                         // plain
  std::optional<EffectiveEval> effective;  // when asked for
  LockStats stats;
  // The effective top-1 when measured, the plain one otherwise.
  double target_top1() const { return effective ? effective->top1_effective : eval.top1; }
};

// Locks `model` in memory with `ranking`'s plan at `ratio`, evaluates it on `data` (with
// `effective`, also after re-estimation and pruning) and restores it; the model is restored even
// when the evaluation throws. With a `group` of several ranks, every rank calls it alike and the
// evaluation is shared out (attacks/effective.h), with the one-process result. Throws UsageError
// (ratio outside [0, 1], model already locked) / Error.
LockedEval evaluate_locked(LoadedModel& model, const Ranking& ranking, double ratio,
                           const Dataset& data, int64_t batch_size = 500,
                           const EffectiveTarget* effective = nullptr, Collective* group = nullptr);

// Extracted units at `ratio` under `ranking`, without touching any tensor (pure arithmetic).
int64_t units_at(const Ranking& ranking, double ratio);

struct SweepOptions {
  std::vector<Criterion> criteria = {Criterion::kL1, Criterion::kBn, Criterion::kRandom};
  std::vector<double> ratios;
  int seeds = 5;  // random: seeds first_seed .. first_seed + seeds - 1
  uint64_t first_seed = 0;
  bool include_io = false;
  bool random_bn_units = false;  // random draws bn units instead of l1 units
  // Scope for every criterion; unset: each criterion's default (layer for l1 / random, global
  // for bn), as `lock` does.
  std::optional<Scope> scope;
  int64_t batch_size = 500;
  // Also measure every point's effective accuracy (per seed for random).
  std::optional<EffectiveTarget> effective;
  // Several ranks: each point's evaluations are shared out; every rank runs the same sweep, gets
  // the same points and calls the callback; the sweep stops after a point when any rank's
  // callback returned false.
  Collective* group = nullptr;
  // The first points in sweep order were measured by an earlier run (a resumed sweep): skip them
  // (no evaluation, no callback).
  size_t skip_points = 0;
};

// One (criterion, ratio) point. For `random` the accuracies are the mean over the seeds and the
// *_sd fields their sample standard deviation (0 for one seed or a deterministic criterion).
struct CurvePoint {
  Criterion criterion = Criterion::kL1;
  Scope scope = Scope::kLayer;
  double ratio = 0.0;
  int64_t units = 0;
  int64_t candidates = 0;
  double param_fraction = 0.0;
  double top1 = 0.0, top1_sd = 0.0;
  double top3 = 0.0, top3_sd = 0.0;
  std::vector<double> top1_runs, top3_runs;  // one per seed (one entry for l1 / bn)
  // With SweepOptions::effective: the mean over seeds after re-estimation (empty when it could
  // not be measured) and of the effective top-1, with the per-seed values.
  std::optional<double> top1_reestimated;
  std::optional<double> top1_effective;
  std::vector<double> top1_effective_runs;
  int64_t images = 0;
  double seconds = 0.0;
};

// Called after each point; return false to stop the sweep after that point.
using SweepCallback = std::function<bool(const CurvePoint&)>;

// Parses "l1,bn,random" into criteria. Throws UsageError naming the bad entry.
std::vector<Criterion> parse_criteria(const std::string& list);

// `steps` ratios from `from` to `to` inclusive, evenly spaced in log space (`log`) or linearly.
// Throws UsageError for steps < 1, a ratio outside (0, 1] in log space or outside [0, 1].
std::vector<double> ratio_steps(double from, double to, int steps, bool log);

// Parses "0.001,0.005,0.01". Throws UsageError naming the bad entry.
std::vector<double> parse_ratios(const std::string& list);

// Sample mean and standard deviation (sd 0 for fewer than two values).
void sample_mean_sd(const std::vector<double>& v, double* mean, double* sd);

// Evaluates every (ratio, criterion) point in ratio order, criteria inside, but the first
// `skip_points`. The model must not be locked; it ends bit for bit as it started. Returns the
// points measured (fewer than all when the callback stopped the sweep). Throws UsageError (bad
// options, bn on a model without normalisation) / Error.
// `model` may be any CurveModel (control/curve_model.h: an ONNX graph, say); the LoadedModel
// overload is ours in place.
std::vector<CurvePoint> sweep(CurveModel& model, const Dataset& data, const SweepOptions& options,
                              const SweepCallback& on_point = {});
std::vector<CurvePoint> sweep(LoadedModel& model, const Dataset& data, const SweepOptions& options,
                              const SweepCallback& on_point = {});

}  // namespace corelocker
