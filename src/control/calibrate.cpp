#include "control/calibrate.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "util/error.h"

namespace corelocker {
namespace {

std::string num(double v, int digits) {
  char b[48];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

// Evaluates a curve at a ratio, once per distinct plan, within a budget.
class Prober {
 public:
  Prober(const std::vector<int64_t>& groups, const Evaluator& evaluate, int budget,
         const ProbeCallback& on_probe)
      : groups_(groups), evaluate_(evaluate), budget_(budget), on_probe_(on_probe) {
    int64_t largest = 1;
    for (int64_t n : groups) largest = std::max(largest, n);
    first_unit_ratio_ = 0.5 / double(largest);
  }

  std::vector<int64_t> counts(double ratio) const {
    std::vector<int64_t> c;
    for (int64_t n : groups_) c.push_back(units_at_ratio(n, ratio));
    return c;
  }
  int64_t units(double ratio) const {
    int64_t u = 0;
    for (int64_t n : groups_) u += units_at_ratio(n, ratio);
    return u;
  }

  // The smallest ratio that extracts a unit: log-space arithmetic puts ratio 0 a step below it.
  double log_ratio(double ratio) const {
    return std::log(ratio > 0.0 ? ratio : first_unit_ratio_ / 2.0);
  }
  double first_unit_ratio() const { return first_unit_ratio_; }

  // Cached result for the ratio's plan, or a fresh evaluation; false when the budget is spent.
  bool probe(double ratio, Probe* out) {
    auto key = counts(ratio);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      *out = it->second;
      return true;
    }
    if (evaluations_ >= budget_) return false;
    Probe p = evaluate_(ratio);
    p.ratio = ratio;
    ++evaluations_;
    cache_.emplace(std::move(key), p);
    made_.push_back(p);
    if (on_probe_) on_probe_(p);
    *out = p;
    return true;
  }

  // A ratio strictly between two ratios whose plan extracts a unit count strictly between
  // theirs, as close to `wanted` (in log space) as the unit counts allow; false when none.
  bool between(double lo, double hi, double wanted, double* out) const {
    const int64_t ulo = units(lo), uhi = units(hi);
    if (uhi - ulo <= 1) return false;  // a necessary condition only: see the search loops
    double r = wanted;
    // Unit counts grow with the ratio: bisect (no evaluation) toward the side that has room.
    double a = lo, b = hi;
    for (int i = 0; i < 200; ++i) {
      const int64_t u = units(r);
      if (u > ulo && u < uhi) {
        *out = r;
        return true;
      }
      if (u <= ulo)
        a = r;
      else
        b = r;
      r = std::exp((log_ratio(a) + log_ratio(b)) / 2.0);
    }
    return false;
  }

  int evaluations() const { return evaluations_; }
  const std::vector<Probe>& made() const { return made_; }
  std::vector<Probe> by_ratio() const {
    std::vector<Probe> v;
    for (const auto& [k, p] : cache_) v.push_back(p);
    std::sort(v.begin(), v.end(), [](const Probe& x, const Probe& y) { return x.ratio < y.ratio; });
    return v;
  }

 private:
  std::vector<int64_t> groups_;
  const Evaluator& evaluate_;
  int budget_;
  const ProbeCallback& on_probe_;
  double first_unit_ratio_ = 0.0;
  int evaluations_ = 0;
  std::map<std::vector<int64_t>, Probe> cache_;
  std::vector<Probe> made_;
};

double distance(const Band& band, double acc) {
  return acc > band.high ? acc - band.high : acc < band.low ? band.low - acc : 0.0;
}

void check_unlocked(const LoadedModel& model) {
  if (model.meta.lock)
    throw UsageError("model is already locked (key id " + model.meta.lock->key_id +
                     "); unlock it first");
}

Evaluator locked_evaluator(LoadedModel& model, const Ranking& ranking, const Dataset& data,
                           int64_t batch_size, const std::optional<EffectiveTarget>& effective) {
  return [&model, &ranking, &data, batch_size, effective](double ratio) {
    LockedEval e = evaluate_locked(model, ranking, ratio, data, batch_size, effective ? &*effective : nullptr);
    return Probe{ratio, e.stats.units, e.stats.param_fraction(), e.target_top1(), e.eval.top3, e.eval.top1};
  };
}

void check_common(double step, double start, int budget) {
  if (!(step > 1.0)) throw UsageError("step " + std::to_string(step) + ": must be greater than 1");
  if (!(start > 0.0 && start <= 1.0))
    throw UsageError("start ratio " + std::to_string(start) + ": must be within (0, 1]");
  if (budget < 1)
    throw UsageError("max evaluations " + std::to_string(budget) + ": must be at least 1");
}

std::string describe(const Probe& p) {
  return "ratio " + num(p.ratio, 6) + " (" + std::to_string(p.units) + " units) gives " +
         num(p.top1, 2) + "%";
}

}  // namespace

Band parse_band(const std::string& text) {
  const size_t dash = text.find('-', 1);
  auto fail = [&](const std::string& why) {
    return UsageError("band '" + text + "': " + why +
                      " (expected LOW-HIGH in percent, e.g. 50-55)");
  };
  if (dash == std::string::npos) throw fail("no '-'");
  Band b;
  try {
    size_t used = 0;
    const std::string lo = text.substr(0, dash), hi = text.substr(dash + 1);
    b.low = std::stod(lo, &used);
    if (used != lo.size()) throw fail("'" + lo + "' is not a number");
    b.high = std::stod(hi, &used);
    if (used != hi.size()) throw fail("'" + hi + "' is not a number");
  } catch (const std::invalid_argument&) {
    throw fail("not a number");
  } catch (const std::out_of_range&) {
    throw fail("number out of range");
  }
  if (!(b.low >= 0.0 && b.high <= 100.0 && b.low < b.high))
    throw fail("needs 0 <= LOW < HIGH <= 100");
  return b;
}

const char* to_string(CalibrationStatus s) {
  switch (s) {
    case CalibrationStatus::kFound:
      return "found";
    case CalibrationStatus::kAboveReach:
      return "above reach";
    case CalibrationStatus::kBelowReach:
      return "below reach";
    case CalibrationStatus::kBetweenSteps:
      return "between unit steps";
    case CalibrationStatus::kOutOfBudget:
      return "out of evaluations";
  }
  return "?";
}

std::vector<int64_t> group_sizes(const Ranking& ranking) {
  std::vector<int64_t> g;
  for (const auto& group : ranking.groups) g.push_back(static_cast<int64_t>(group.ranked.size()));
  return g;
}

Calibration calibrate(LoadedModel& model, const Ranking& ranking, const Dataset& data, Band band,
                      const CalibrationOptions& options, const ProbeCallback& on_probe) {
  check_unlocked(model);
  return search_band(group_sizes(ranking),
                     locked_evaluator(model, ranking, data, options.batch_size, options.effective), band, options,
                     on_probe);
}

Calibration search_band(const std::vector<int64_t>& groups, const Evaluator& evaluate, Band band,
                        const CalibrationOptions& options, const ProbeCallback& on_probe) {
  check_common(options.step, options.start_ratio, options.max_evaluations);
  if (!(options.max_ratio > 0.0 && options.max_ratio <= 1.0)) {
    throw UsageError("max ratio " + std::to_string(options.max_ratio) + ": must be within (0, 1]");
  }
  Prober prober(groups, evaluate, options.max_evaluations, on_probe);
  Calibration out;
  auto finish = [&](CalibrationStatus status, std::string why) {
    out.status = status;
    out.probes = prober.made();
    out.explanation = std::move(why);
    if (!out.probes.empty()) {
      out.reach_low = out.reach_high = out.probes.front().top1;
      for (const auto& p : out.probes) {
        out.reach_low = std::min(out.reach_low, p.top1);
        out.reach_high = std::max(out.reach_high, p.top1);
      }
      if (status != CalibrationStatus::kFound) {
        out.chosen = out.probes.front();
        for (const auto& p : out.probes) {
          if (distance(band, p.top1) < distance(band, out.chosen.top1)) out.chosen = p;
        }
      }
    }
    return out;
  };
  const std::string band_text = num(band.low, 1) + "-" + num(band.high, 1) + "%";
  auto out_of_budget = [&] {
    return finish(CalibrationStatus::kOutOfBudget, "no ratio in " + band_text + " within " +
                                                       std::to_string(options.max_evaluations) +
                                                       " evaluations (raise --max-evals)");
  };

  // bracket: walk from the start ratio by factors of `step` until the band is enclosed
  Probe p;
  bool have_above = false, have_below = false;
  double r = std::min(options.start_ratio, options.max_ratio);
  for (;;) {
    if (!prober.probe(r, &p)) return out_of_budget();
    if (band.contains(p.top1)) {
      out.chosen = p;
      return finish(CalibrationStatus::kFound, describe(p) + ", inside " + band_text);
    }
    if (p.top1 > band.high) {
      have_above = true;
      if (have_below) break;
      if (r >= options.max_ratio) {
        return finish(
            CalibrationStatus::kBelowReach,
            "band " + band_text + " is below reach: the largest ratio tried, " + describe(p));
      }
      r = std::min(r * options.step, options.max_ratio);
    } else {
      have_below = true;
      if (have_above) break;
      if (r == 0.0) {
        return finish(CalibrationStatus::kAboveReach,
                      "band " + band_text + " is above reach: the unlocked model itself gives " +
                          num(p.top1, 2) + "%");
      }
      r /= options.step;
      if (prober.units(r) == 0) r = 0.0;
    }
  }

  // refine: every pair of neighbouring probes (in ratio order) on opposite sides of the band
  // encloses a crossing, falling or rising. Probe inside the widest such pair, interpolating
  // top-1 against log(ratio) toward the middle of the band, kept 20% away from either end so
  // that the pair shrinks by a fixed factor even where the curve is flat.
  const double target = (band.low + band.high) / 2.0;
  auto side = [&](const Probe& q) { return q.top1 > band.high ? 1 : q.top1 < band.low ? -1 : 0; };
  std::string collapsed;  // the last pair that had no unit count left between its ends
  bool explored_up = false, explored_down = false;
  int last_side = 0;
  bool same_side_twice = false;
  for (;;) {
    const auto probes = prober.by_ratio();
    const Probe* a = nullptr;
    const Probe* b = nullptr;
    double pair_mid = 0.0;  // a ratio strictly inside the chosen pair
    for (size_t i = 0; i + 1 < probes.size(); ++i) {
      const Probe &x = probes[i], &y = probes[i + 1];
      if (side(x) * side(y) != -1) continue;
      // Layers of the same size gain a unit at the same ratio, so neighbouring totals can
      // differ by several units with no plan in between: ask for one rather than subtract.
      double probe_at = 0.0;
      const double mid = std::exp((prober.log_ratio(x.ratio) + prober.log_ratio(y.ratio)) / 2.0);
      if (!prober.between(x.ratio, y.ratio, mid, &probe_at)) {
        collapsed = describe(x) + ", " + describe(y);
        continue;
      }
      const double gap = prober.log_ratio(y.ratio) - prober.log_ratio(x.ratio);
      if (!a || gap > prober.log_ratio(b->ratio) - prober.log_ratio(a->ratio)) {
        a = &x;
        b = &y;
        pair_mid = probe_at;
      }
    }
    double next = 0.0;
    if (a) {
      const double xa = prober.log_ratio(a->ratio), xb = prober.log_ratio(b->ratio);
      // Interpolation stalls on a cliff (one end keeps moving by the 20% floor): after a probe
      // lands on the same side twice in a row, bisect instead.
      const double t =
          same_side_twice ? 0.5 : std::clamp((a->top1 - target) / (a->top1 - b->top1), 0.2, 0.8);
      if (!prober.between(a->ratio, b->ratio, std::exp(xa + t * (xb - xa)), &next))
        next = pair_mid;  // exists: checked above
    } else if (!explored_up && probes.back().ratio < options.max_ratio) {
      // Every crossing found is a jump over the band. A noisy curve may still cross it again
      // further out: look once beyond each end before giving up.
      explored_up = true;
      next = std::min(probes.back().ratio * options.step, options.max_ratio);
    } else if (!explored_down && probes.front().ratio > 0.0) {
      explored_down = true;
      next = probes.front().ratio / options.step;
      if (prober.units(next) == 0) next = 0.0;
    } else {
      return finish(CalibrationStatus::kBetweenSteps,
                    "band " + band_text + " falls between two unit counts: " + collapsed);
    }
    if (!prober.probe(next, &p)) {
      if (collapsed.empty()) return out_of_budget();
      return finish(CalibrationStatus::kBetweenSteps,
                    "band " + band_text + " falls between two unit counts: " + collapsed);
    }
    if (band.contains(p.top1)) {
      out.chosen = p;
      return finish(CalibrationStatus::kFound, describe(p) + ", inside " + band_text);
    }
    same_side_twice = a && side(p) == last_side;
    last_side = a ? side(p) : 0;
  }
}

BandsTable utility_bands(LoadedModel& model, const Ranking& ranking, const Dataset& data,
                         const BandsOptions& options, const ProbeCallback& on_probe) {
  check_unlocked(model);
  if (data.classes < 1) throw UsageError("data set '" + data.name + "' has no classes");
  return search_bands(group_sizes(ranking),
                      locked_evaluator(model, ranking, data, options.batch_size, options.effective),
                      100.0 / double(data.classes), options, on_probe);
}

BandsTable search_bands(const std::vector<int64_t>& groups, const Evaluator& evaluate,
                        double chance, const BandsOptions& options, const ProbeCallback& on_probe) {
  check_common(options.step, options.start_ratio, options.max_evaluations);
  if (!(options.width > 0.0 && options.width <= 100.0)) {
    throw UsageError("band width " + std::to_string(options.width) + ": must be within (0, 100]");
  }
  if (!(options.tolerance > 0.0))
    throw UsageError("tolerance " + std::to_string(options.tolerance) + ": must be positive");
  if (!(chance >= 0.0 && chance < 100.0))
    throw UsageError("chance level " + std::to_string(chance) + ": must be within [0, 100)");
  Prober prober(groups, evaluate, options.max_evaluations, on_probe);
  BandsTable table;
  table.chance = chance;
  Probe original;
  if (!prober.probe(0.0, &original))
    throw UsageError("max evaluations must allow the unlocked model");
  table.original_top1 = original.top1;
  auto done = [&](bool complete) {
    table.complete = complete;
    table.probes = prober.by_ratio();
    table.evaluations = prober.evaluations();
    return table;
  };
  // The first ratio whose top-1 drops below `level`, and the probe just before it (which the
  // ratio-0 probe guarantees exists for every level at or below the original accuracy).
  auto crossing = [&](double level, Probe* before, Probe* after) {
    const auto probes = prober.by_ratio();
    for (size_t i = 1; i < probes.size(); ++i) {
      if (probes[i].top1 < level) {
        *before = probes[i - 1];
        *after = probes[i];
        return true;
      }
    }
    *before = probes.back();
    return false;
  };
  for (double high = std::floor(original.top1 / options.width) * options.width;
       high > table.chance + 1e-9; high -= options.width) {
    BandRow row;
    row.band = {std::max(0.0, high - options.width), high};
    Probe a, b;
    // bracket: grow the ratio until something falls below the band's top
    while (!crossing(high, &a, &b)) {
      if (a.ratio >= 1.0) {
        table.rows.push_back(row);  // not reached: even ratio 1 stays above
        return done(true);
      }
      Probe ignored;
      const double next = std::min(1.0, std::max(options.start_ratio, a.ratio * options.step));
      if (!prober.probe(next, &ignored)) return done(false);
    }
    // bisect in log space down to the tolerance or to adjacent unit counts
    for (;;) {
      const bool tight = a.ratio > 0.0 && b.ratio / a.ratio <= 1.0 + options.tolerance;
      double next = 0.0;
      if (tight ||
          !prober.between(a.ratio, b.ratio,
                          std::exp((prober.log_ratio(a.ratio) + prober.log_ratio(b.ratio)) / 2.0),
                          &next)) {
        break;
      }
      Probe ignored;
      if (!prober.probe(next, &ignored)) return done(false);
      crossing(high, &a, &b);
    }
    row.first = b;
    row.reached = b.top1 >= row.band.low;
    row.below_ratio = a.ratio;
    row.below_top1 = a.top1;
    table.rows.push_back(row);
  }
  return done(true);
}

TierCalibration calibrate_tiers(LoadedModel& model, const Ranking& ranking, const Dataset& data,
                                const std::vector<Band>& bands, const CalibrationOptions& options,
                                const ProbeCallback& on_probe) {
  if (bands.empty()) throw UsageError("tier bands: give at least one band");
  TierCalibration out;
  for (const Band& band : bands) {
    Calibration cal = calibrate(model, ranking, data, band, options, on_probe);
    if (!cal.found()) {
      throw Error("tier band " + std::to_string(band.low) + "-" + std::to_string(band.high) + ": " +
                  cal.explanation);
    }
    for (double r : out.ratios) {
      if (r == cal.chosen.ratio) {
        throw UsageError("tier bands: two bands land on ratio " + std::to_string(r) +
                         "; choose bands further apart");
      }
    }
    out.ratios.push_back(cal.chosen.ratio);
    out.calibrations.push_back(std::move(cal));
  }
  return out;
}

}  // namespace corelocker
