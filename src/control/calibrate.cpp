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

  // The smallest ratio in (lo, hi] whose plan extracts at least `units` units (hi when none
  // smaller does), found by bisection in log space without evaluating anything.
  double ratio_for_units(int64_t wanted, double lo, double hi) const {
    if (units(hi) < wanted) return hi;
    double a = lo, b = hi;
    for (int i = 0; i < 200; ++i) {
      const double m = std::exp((log_ratio(a) + log_ratio(b)) / 2.0);
      if (m <= a || m >= b) break;
      if (units(m) >= wanted)
        b = m;
      else
        a = m;
    }
    return b;
  }

  // Drops the cached plans of ratios above `ratio` (their units changed).
  void forget_above(double ratio) {
    for (auto it = cache_.begin(); it != cache_.end();) {
      if (it->second.ratio > ratio)
        it = cache_.erase(it);
      else
        ++it;
    }
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

void check_unlocked(const CurveModel& model) {
  if (model.meta().lock)
    throw UsageError("model is already locked (key id " + model.meta().lock->key_id +
                     "); unlock it first");
}

Evaluator locked_evaluator(CurveModel& model, const Ranking& ranking, const Dataset& data,
                           int64_t batch_size, const std::optional<EffectiveTarget>& effective,
                           Collective* group) {
  return [&model, &ranking, &data, batch_size, effective, group](double ratio) {
    LockedEval e = model.evaluate_locked(ranking, ratio, data, batch_size,
                                         effective ? &*effective : nullptr, group);
    return Probe{ratio,           e.stats.units, e.stats.param_fraction(),
                 e.target_top1(), e.eval.top3,   e.eval.top1};
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

std::vector<int64_t> group_sizes(const Ranking& ranking) {
  std::vector<int64_t> g;
  for (const auto& group : ranking.groups) g.push_back(static_cast<int64_t>(group.ranked.size()));
  return g;
}

void move_down(Ranking& ranking, const Reordering& r) {
  if (r.group >= ranking.groups.size())
    throw Error("reordering names group " + std::to_string(r.group) + " of a ranking with " +
                std::to_string(ranking.groups.size()));
  auto& units = ranking.groups[r.group].ranked;
  const auto n = static_cast<int64_t>(units.size());
  if (r.position < 0 || r.count < 0 || r.position + r.count > n)
    throw Error("reordering of units " + std::to_string(r.position) + "+" +
                std::to_string(r.count) + " in group '" + ranking.groups[r.group].label + "' of " +
                std::to_string(n) + " units");
  std::rotate(units.begin() + r.position, units.begin() + r.position + r.count, units.end());
}

Ranking calibrated_ranking(const Ranking& ranking, const Calibration& calibration) {
  Ranking out = ranking;
  for (const auto& r : calibration.reordered) move_down(out, r);
  return out;
}

Calibration calibrate(CurveModel& model, const Ranking& ranking, const Dataset& data, Band band,
                      const CalibrationOptions& options, const ProbeCallback& on_probe) {
  check_unlocked(model);
  Ranking work = ranking;  // the evaluator reads it, the reordering changes it
  Reorder reorder;
  if (options.reorder) {
    reorder = [&work](size_t group, int64_t position, int64_t count) {
      move_down(work, {group, position, count});
    };
  }
  Calibration c = search_band(
      group_sizes(work),
      locked_evaluator(model, work, data, options.batch_size, options.effective, options.group),
      band, options, on_probe, reorder);
  if (c.status == CalibrationStatus::kBetweenSteps && ranking.options.scope == Scope::kLayer) {
    // Layers of equal size gain their next unit at the same ratio, so layer scope moves in steps
    // of several units; global scope adds one unit at a time.
    c.explanation +=
        " (layer scope steps several equally sized layers at once: --scope global adds one unit "
        "at a time)";
  } else if (c.status == CalibrationStatus::kBetweenSteps && ranking.options.include_io) {
    // A stem or head kernel can carry tens of points of accuracy on its own.
    c.explanation +=
        " (units of the first and last layers move the accuracy in large steps: try without "
        "--include-io)";
  }
  return c;
}

Calibration search_band(const std::vector<int64_t>& groups, const Evaluator& evaluate, Band band,
                        const CalibrationOptions& options, const ProbeCallback& on_probe,
                        const Reorder& reorder) {
  check_common(options.step, options.start_ratio, options.max_evaluations);
  if (!(options.max_ratio > 0.0 && options.max_ratio <= 1.0)) {
    throw UsageError("max ratio " + std::to_string(options.max_ratio) + ": must be within (0, 1]");
  }
  Prober prober(groups, evaluate, options.max_evaluations, on_probe);
  Calibration out;
  const std::string band_text = num(band.low, 1) + "-" + num(band.high, 1) + "%";
  // The search steers toward the middle half of the band, so that the accuracy on other data
  // (the test split) has room on both sides; any probe inside the band is accepted at the end.
  const double middle = (band.low + band.high) / 2.0;
  const double quarter = (band.high - band.low) / 4.0;
  const Band core{band.low + quarter, band.high - quarter};
  // A plan that takes no unit is the unlocked model: it is never chosen (a lock takes something),
  // and where it lies in the band's middle the search counts it as above, so that it goes on to
  // the smallest plan that does take units.
  auto takes_nothing = [&](const Probe& q) { return prober.units(q.ratio) == 0; };
  auto in_core = [&](const Probe& q) { return core.contains(q.top1) && !takes_nothing(q); };
  auto side = [&](const Probe& q) {
    if (q.top1 > core.high || (takes_nothing(q) && q.top1 >= core.low)) return 1;
    return q.top1 < core.low ? -1 : 0;
  };
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
    }
    if (status == CalibrationStatus::kFound) return out;
    // Probes made before a reordering that changed their plan no longer describe the ranking
    // handed back: choose among the current ones.
    const auto valid = prober.by_ratio();
    const Probe* best = nullptr;
    for (const auto& p : valid) {
      if (band.contains(p.top1) && !takes_nothing(p) &&
          (!best || std::abs(p.top1 - middle) < std::abs(best->top1 - middle)))
        best = &p;
    }
    if (best) {
      out.status = CalibrationStatus::kFound;
      out.chosen = *best;
      out.explanation = describe(*best) + ", inside " + band_text +
                        " (the search for its middle, " + num(core.low, 2) + "-" +
                        num(core.high, 2) + "%, ended: " + out.explanation + ")";
      return out;
    }
    if (!valid.empty()) {
      out.chosen = valid.front();
      for (const auto& p : valid) {
        if (distance(band, p.top1) < distance(band, out.chosen.top1)) out.chosen = p;
      }
    }
    return out;
  };
  auto found = [&](const Probe& q) {
    out.chosen = q;
    int64_t moved_units = 0;
    for (const auto& m : out.reordered) moved_units += m.count;
    return finish(
        CalibrationStatus::kFound,
        describe(q) + ", inside " + band_text +
            (moved_units
                 ? " (with " + std::to_string(moved_units) +
                       " unit(s) that each jumped over the band moved to the end of the ranking)"
                 : std::string()));
  };
  auto out_of_budget = [&] {
    int64_t moved_units = 0;
    for (const auto& m : out.reordered) moved_units += m.count;
    return finish(
        CalibrationStatus::kOutOfBudget,
        "no ratio in " + band_text + " within " + std::to_string(options.max_evaluations) +
            " evaluations" +
            (moved_units ? " (" + std::to_string(moved_units) +
                               " unit(s) that each jumped over the band moved down the ranking)"
                         : std::string()) +
            " (raise --max-evals)");
  };

  // bracket: walk from the start ratio by factors of `step` until the core is enclosed
  Probe p;
  bool have_above = false, have_below = false;
  double r = std::min(options.start_ratio, options.max_ratio);
  for (;;) {
    if (!prober.probe(r, &p)) return out_of_budget();
    if (in_core(p)) return found(p);
    if (side(p) == 1) {
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

  // refine: every pair of neighbouring probes (in ratio order) on opposite sides of the core
  // encloses a crossing, falling or rising. Probe inside the widest such pair, interpolating
  // top-1 against log(ratio) toward the middle, kept 20% away from either end so that the pair
  // shrinks by a fixed factor even where the curve is flat.
  std::string collapsed;  // the last pair that had no unit count left between its ends
  bool explored_up = false, explored_down = false;
  int last_side = 0;
  bool same_side_twice = false;
  int64_t moved = 0;            // units reordered so far
  bool reordered_last = false;  // the last step was a reordering and its probe
  for (;;) {
    const auto probes = prober.by_ratio();
    const Probe* a = nullptr;
    const Probe* b = nullptr;
    const Probe* cliff_above = nullptr;  // a falling pair with no plan between its ends
    const Probe* cliff_below = nullptr;
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
        if (side(x) == 1 && !cliff_above) {
          cliff_above = &x;
          cliff_below = &y;
        }
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
          same_side_twice ? 0.5 : std::clamp((a->top1 - middle) / (a->top1 - b->top1), 0.2, 0.8);
      if (!prober.between(a->ratio, b->ratio, std::exp(xa + t * (xb - xa)), &next))
        next = pair_mid;  // exists: checked above
      reordered_last = false;
    } else if (cliff_above && reorder) {
      // The units that one step adds jump from above the core to below it: move them to the end
      // of their groups' rankings and try the units ranked after them in their place. Plans up
      // to the step's upper end keep their units; larger ones change and are measured afresh.
      const auto from = prober.counts(cliff_above->ratio), to = prober.counts(cliff_below->ratio);
      const double upper = cliff_above->ratio, retry = cliff_below->ratio;
      for (size_t g = 0; g < from.size(); ++g) {
        if (to[g] > from[g]) {
          reorder(g, from[g], to[g] - from[g]);
          out.reordered.push_back({g, from[g], to[g] - from[g]});
          moved += to[g] - from[g];
        }
      }
      prober.forget_above(upper);
      collapsed.clear();  // its pair no longer describes the ranking
      next = retry;
      explored_up = explored_down = false;
      same_side_twice = false;
      last_side = 0;
      reordered_last = true;
    } else if (reordered_last && probes.size() >= 2 && side(probes.back()) == 1 &&
               probes.back().ratio < options.max_ratio) {
      // After a reordering everything measured lies above the core. Near a cliff a factor of
      // `step` overshoots by many units: extrapolate the unit count from the two largest plans.
      const Probe &x = probes[probes.size() - 2], &y = probes.back();
      const int64_t ux = prober.units(x.ratio), uy = prober.units(y.ratio);
      const double slope = (x.top1 - y.top1) / double(std::max<int64_t>(uy - ux, 1));
      int64_t want = uy + 1;
      if (slope > 0.0) want = uy + std::max<int64_t>(1, std::llround((y.top1 - middle) / slope));
      const double cap = std::min(y.ratio * options.step, options.max_ratio);
      want = std::min(want, prober.units(cap));
      next = prober.ratio_for_units(want, y.ratio, cap);
      reordered_last = false;
    } else if (!explored_up && probes.back().ratio < options.max_ratio) {
      // Every crossing found is a jump over the core. A noisy curve may still cross it again
      // further out: look once beyond each end before giving up.
      explored_up = true;
      next = std::min(probes.back().ratio * options.step, options.max_ratio);
    } else if (!explored_down && probes.front().ratio > 0.0) {
      explored_down = true;
      next = probes.front().ratio / options.step;
      if (prober.units(next) == 0) next = 0.0;
    } else if (collapsed.empty()) {
      return finish(CalibrationStatus::kBetweenSteps,
                    "band " + band_text + " is reached by no unit count tried, with " +
                        std::to_string(moved) +
                        " unit(s) that each jumped over it moved down the ranking");
    } else {
      return finish(CalibrationStatus::kBetweenSteps,
                    "band " + band_text + " falls between two unit counts: " + collapsed);
    }
    if (!prober.probe(next, &p)) {
      if (collapsed.empty() || moved) return out_of_budget();
      return finish(
          CalibrationStatus::kBetweenSteps,
          "band " + band_text + " falls between two unit counts: " + collapsed +
              (moved ? " (" + std::to_string(moved) + " such units moved down the ranking, " +
                           std::to_string(options.max_evaluations) + " evaluations spent)"
                     : std::string()));
    }
    if (in_core(p)) return found(p);
    same_side_twice = a && side(p) == last_side;
    last_side = a ? side(p) : 0;
  }
}

BandsTable utility_bands(CurveModel& model, const Ranking& ranking, const Dataset& data,
                         const BandsOptions& options, const ProbeCallback& on_probe) {
  check_unlocked(model);
  if (data.classes < 1) throw UsageError("data set '" + data.name + "' has no classes");
  return search_bands(
      group_sizes(ranking),
      locked_evaluator(model, ranking, data, options.batch_size, options.effective, options.group),
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

TierCalibration calibrate_tiers(CurveModel& model, const Ranking& ranking, const Dataset& data,
                                const std::vector<Band>& bands, const CalibrationOptions& options,
                                const ProbeCallback& on_probe) {
  if (bands.empty()) throw UsageError("tier bands: give at least one band");
  TierCalibration out;
  // Tiers share one ranking (each tier's units contain the next's), so no band may reorder it.
  CalibrationOptions tier_options = options;
  tier_options.reorder = false;
  for (const Band& band : bands) {
    Calibration cal = calibrate(model, ranking, data, band, tier_options, on_probe);
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
