// Finding extraction ratios for a target utility: `calibrate` finds a ratio whose locked
// accuracy falls inside a band, `utility_bands` the smallest ratio for each band of a table
// (the paper's Tables 5 and 6). Both bracket the ratio and bisect in log space (the curve spans
// decades of ratio), interpolating the accuracy between the bracket's ends; plans that extract
// the same units are evaluated once. The model is locked and restored in memory at each probe
// and ends as it started.
//
// Noisy, non-monotone stretches: the search only ever keeps a bracket whose smaller ratio is
// above the band and whose larger ratio is below it, and probes strictly inside it; whatever a
// probe returns, one end moves in, so a crossing stays between the ends however the curve
// wiggles, and the search ends when the bracket has no unit count left inside it.
//
// Cliffs: with a global ranking, one unit (a stem kernel, say) can take the accuracy from above
// the band to below it. `calibrate` then moves that unit to the end of the ranking and tries the
// units ranked after it in its place, so the band is reached with a set that is not a prefix
// of the original ranking; the key records the units, whatever their order.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "control/curve_model.h"
#include "control/utility_curve.h"

namespace corelocker {

// An accuracy band in percent, both ends included.
struct Band {
  double low = 0.0;
  double high = 100.0;
  bool contains(double acc) const { return acc >= low && acc <= high; }
};

// Parses "50-55" (percent). Throws UsageError unless 0 <= low < high <= 100.
Band parse_band(const std::string& text);

struct CalibrationOptions {
  // Set: search on the effective top-1 (attacks/effective.h); unset: on the plain top-1.
  std::optional<EffectiveTarget> effective;
  int max_evaluations = 8;
  double start_ratio = 0.005;  // first probe
  double step = 4.0;           // bracketing: multiply / divide the ratio by this
  double max_ratio = 1.0;
  int64_t batch_size = 500;
  // When one more unit jumps from above the band to below it, move that unit to the end of the
  // ranking and go on with the units after it (Calibration::reordered records the moves).
  bool reorder = true;
  // Several ranks: every rank runs the same search and each evaluation is shared out
  // (evaluate_locked), so every rank sees the probes one process would see.
  Collective* group = nullptr;
};

// One evaluation the search made (top-1 / top-3 on the data it was given). `top1` is what the
// search targets: the effective top-1 when the options ask for it, else the plain one, which
// `plain_top1` always holds.
struct Probe {
  double ratio = 0.0;
  int64_t units = 0;
  double param_fraction = 0.0;
  double top1 = 0.0;
  double top3 = 0.0;
  double plain_top1 = 0.0;
};

enum class CalibrationStatus {
  kFound,         // `chosen` is inside the band
  kAboveReach,    // even ratio 0 (the original model) is below the band
  kBelowReach,    // even max_ratio is above the band
  kBetweenSteps,  // one more unit jumps from above the band to below it
  kOutOfBudget,   // max_evaluations reached; `chosen` is the probe closest to the band
};
const char* to_string(CalibrationStatus s);

// Units a search moved to the end of one group's ranking: `count` units from `position` on, in
// the ranking as it stood at that moment.
struct Reordering {
  size_t group = 0;
  int64_t position = 0;
  int64_t count = 0;
};

struct Calibration {
  CalibrationStatus status = CalibrationStatus::kOutOfBudget;
  Probe chosen;
  std::vector<Probe> probes;  // every evaluation, in the order made
  double reach_low = 0.0;     // lowest and highest top-1 among the probes
  double reach_high = 0.0;
  std::string explanation;  // one sentence with the numbers, for every status
  // The moves, in order, that turn the ranking the search started from into the one `chosen`
  // applies to (empty: the ranking as given).
  std::vector<Reordering> reordered;
  bool found() const { return status == CalibrationStatus::kFound; }
};

using ProbeCallback = std::function<void(const Probe&)>;

// The curve a search walks: what locking at a ratio gives. The searches call it once per
// distinct plan (per distinct vector of per-group unit counts).
using Evaluator = std::function<Probe(double ratio)>;

// Moves `count` units from `position` of a group's ranking to its end; the evaluator must see
// the change. Given to a search, it lets the search step over units that jump over the band.
using Reorder = std::function<void(size_t group, int64_t position, int64_t count)>;

// Sizes of the groups that compete for a fraction (what turns a ratio into unit counts).
std::vector<int64_t> group_sizes(const Ranking& ranking);

// The search behind `calibrate`, on any curve: `groups` are the ranking's group sizes. It
// steers toward the middle half of the band and accepts any probe inside the band when the
// budget or the unit steps end the search. Throws UsageError for bad options.
Calibration search_band(const std::vector<int64_t>& groups, const Evaluator& evaluate, Band band,
                        const CalibrationOptions& options, const ProbeCallback& on_probe = {},
                        const Reorder& reorder = {});

// Applies one reordering to a ranking. Throws Error when it does not fit the ranking.
void move_down(Ranking& ranking, const Reordering& r);

// The ranking a calibration's chosen ratio applies to: `ranking` with its reorderings applied.
Ranking calibrated_ranking(const Ranking& ranking, const Calibration& calibration);

// Searches a ratio whose top-1 accuracy on `data` (a validation split) lies in `band`, reordering
// the ranking as the options allow (lock with calibrated_ranking(ranking, result)).
// Throws UsageError (bad options, model locked) / Error.
// The model may be any CurveModel (an ONNX graph, say); the LoadedModel overload is ours in place.
Calibration calibrate(CurveModel& model, const Ranking& ranking, const Dataset& data, Band band,
                      const CalibrationOptions& options, const ProbeCallback& on_probe = {});
Calibration calibrate(LoadedModel& model, const Ranking& ranking, const Dataset& data, Band band,
                      const CalibrationOptions& options, const ProbeCallback& on_probe = {});

// Tiered keys by utility: calibrates one ratio per band (each band searched on its own) and
// returns them with the calibrations, in the order of `bands`. Throws Error naming the first
// band that cannot be reached, with the search's explanation; UsageError when two bands land on
// the same ratio.
struct TierCalibration {
  std::vector<double> ratios;
  std::vector<Calibration> calibrations;
};
TierCalibration calibrate_tiers(CurveModel& model, const Ranking& ranking, const Dataset& data,
                                const std::vector<Band>& bands, const CalibrationOptions& options,
                                const ProbeCallback& on_probe = {});
TierCalibration calibrate_tiers(LoadedModel& model, const Ranking& ranking, const Dataset& data,
                                const std::vector<Band>& bands, const CalibrationOptions& options,
                                const ProbeCallback& on_probe = {});

struct BandsOptions {
  std::optional<EffectiveTarget> effective;  // as in CalibrationOptions
  double width = 5.0;                        // band width in points
  double tolerance = 0.05;    // a band's ratio is the smallest within this relative precision
  int max_evaluations = 200;  // for the whole table
  double step = 4.0;
  double start_ratio = 0.001;
  int64_t batch_size = 500;
  Collective* group = nullptr;  // as in CalibrationOptions
};

struct BandRow {
  Band band;  // [low, high): accuracy below `high` and at least `low`
  bool reached = false;
  Probe first;               // the smallest ratio whose accuracy fell below `high`
  double below_ratio = 0.0;  // the largest ratio known to stay at or above `high`
  double below_top1 = 0.0;
};

struct BandsTable {
  double original_top1 = 0.0;
  double chance = 0.0;        // 100 / classes
  std::vector<BandRow> rows;  // from the highest band down
  std::vector<Probe> probes;  // every evaluation, in ratio order
  int evaluations = 0;
  bool complete = true;  // false when max_evaluations ran out
};

// The search behind `utility_bands`, on any curve; `chance` is the lowest band's floor.
BandsTable search_bands(const std::vector<int64_t>& groups, const Evaluator& evaluate,
                        double chance, const BandsOptions& options,
                        const ProbeCallback& on_probe = {});

// For each `width`-point band from the original accuracy (rounded down to a multiple of width)
// down to chance (100 / classes), the smallest ratio whose top-1 on `data` falls into it.
// Throws UsageError / Error.
BandsTable utility_bands(CurveModel& model, const Ranking& ranking, const Dataset& data,
                         const BandsOptions& options, const ProbeCallback& on_probe = {});
BandsTable utility_bands(LoadedModel& model, const Ranking& ranking, const Dataset& data,
                         const BandsOptions& options, const ProbeCallback& on_probe = {});

}  // namespace corelocker
