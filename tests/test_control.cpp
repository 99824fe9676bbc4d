// Granular utility control: in-memory sweeps, calibration to a band, the bands table.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>

#include "control/calibrate.h"
#include "control/sweep_report.h"
#include "control/utility_curve.h"
#include "locking/lock.h"
#include "temp_dir.h"
#include "test_support.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::control_test {
namespace {

using testing::clone;
using testing::fmnist_test;
using testing::fresh_tiny;
using testing::same_tensors;
using testing::trained_resnet;

Ranking rank(LoadedModel& m, Criterion c, uint64_t seed = 0) {
  LockOptions o;
  o.criterion = c;
  o.scope = default_scope(c);
  o.seed = seed;
  return rank_units(named_tensors(*m.net), m.net->structure(), o);
}

// ---------------------------------------------------------------- parsing
TEST(ControlParsing, RatiosCriteriaBandsAndSteps) {
  EXPECT_EQ(parse_ratios("0.001,0.5,1"), (std::vector<double>{0.001, 0.5, 1.0}));
  EXPECT_THROW(parse_ratios("0.1,x"), UsageError);
  EXPECT_THROW(parse_ratios("0.1,,0.2"), UsageError);
  EXPECT_THROW(parse_ratios("1.5"), UsageError);
  EXPECT_THROW(parse_ratios("0.1abc"), UsageError);
  EXPECT_EQ(parse_criteria("l1,random"),
            (std::vector<Criterion>{Criterion::kL1, Criterion::kRandom}));
  EXPECT_THROW(parse_criteria("l1,l1"), UsageError);
  EXPECT_THROW(parse_criteria("l2"), UsageError);
  Band b = parse_band("50-55");
  EXPECT_EQ(b.low, 50.0);
  EXPECT_EQ(b.high, 55.0);
  EXPECT_TRUE(b.contains(55.0));
  EXPECT_FALSE(b.contains(55.01));
  EXPECT_THROW(parse_band("55-50"), UsageError);
  EXPECT_THROW(parse_band("50"), UsageError);
  EXPECT_THROW(parse_band("50-x"), UsageError);
  EXPECT_THROW(parse_band("90-101"), UsageError);
  auto log_steps = ratio_steps(0.0005, 0.05, 12, /*log=*/true);
  ASSERT_EQ(log_steps.size(), 12u);
  EXPECT_DOUBLE_EQ(log_steps.front(), 0.0005);
  EXPECT_EQ(log_steps.back(), 0.05);
  // Evenly spaced in log space: constant ratio between neighbours.
  EXPECT_NEAR(log_steps[1] / log_steps[0], log_steps[11] / log_steps[10], 1e-9);
  EXPECT_THROW(ratio_steps(0.0, 0.1, 5, /*log=*/true), UsageError);
  EXPECT_EQ(ratio_steps(0.0, 0.1, 3, /*log=*/false), (std::vector<double>{0.0, 0.05, 0.1}));
  double m = 0, sd = 0;
  sample_mean_sd({1.0, 2.0, 3.0, 4.0}, &m, &sd);
  EXPECT_DOUBLE_EQ(m, 2.5);
  EXPECT_NEAR(sd, 1.2909944, 1e-6);  // sample (n-1), not population
}

// ---------------------------------------------------------------- sweep
TEST(Sweep, RestoresTheModelBitForBitAndMatchesAFreshLock) {
  LoadedModel model = fresh_tiny(3);
  LoadedModel original = clone(model);
  const Digest fp = model_fingerprint(model);
  Dataset data = fmnist_test(200);
  SweepOptions o;
  o.criteria = {Criterion::kL1, Criterion::kBn, Criterion::kRandom};
  o.ratios = {0.02, 0.1, 0.4};
  o.seeds = 3;
  auto points = sweep(model, data, o);
  ASSERT_EQ(points.size(), 9u);
  EXPECT_TRUE(same_tensors(model, original));
  EXPECT_EQ(model_fingerprint(model), fp);
  EXPECT_FALSE(model.meta.lock.has_value());
  for (const auto& p : points) {
    // Every point agrees with locking a fresh copy from scratch (ranking recomputed, file-free).
    LoadedModel fresh = clone(original);
    LockOptions lo;
    lo.criterion = p.criterion;
    lo.scope = default_scope(p.criterion);
    lo.ratio = p.ratio;
    lo.seed = o.first_seed + (p.criterion == Criterion::kRandom ? 1 : 0);  // the second seed
    LockOutcome out = lock_model(fresh, lo);
    EXPECT_EQ(p.units, out.stats.units) << to_string(p.criterion) << " " << p.ratio;
    const EvalResult e = evaluate(*fresh.net, data, fresh.meta.preprocess);
    const size_t run = p.criterion == Criterion::kRandom ? 1 : 0;
    ASSERT_GT(p.top1_runs.size(), run);
    EXPECT_DOUBLE_EQ(p.top1_runs[run], e.top1) << to_string(p.criterion) << " " << p.ratio;
    EXPECT_DOUBLE_EQ(p.top3_runs[run], e.top3);
    EXPECT_EQ(p.top1_runs.size(), p.criterion == Criterion::kRandom ? 3u : 1u);
  }
  // Units grow with the ratio for every criterion.
  for (size_t c = 0; c < 3; ++c) {
    EXPECT_LT(points[c].units, points[3 + c].units);
    EXPECT_LT(points[3 + c].units, points[6 + c].units);
  }
}

TEST(Sweep, ReusedRankingGivesTheSamePlanAsAFreshLock) {
  LoadedModel model = fresh_tiny(5);
  for (Criterion c : {Criterion::kL1, Criterion::kBn, Criterion::kRandom}) {
    const Ranking ranking = rank(model, c, /*seed=*/4);
    for (double ratio : {0.01, 0.05, 0.3}) {
      LoadedModel a = clone(model), b = clone(model);
      LockOptions o = ranking.options;
      o.ratio = ratio;
      LockOutcome fresh = lock_model(a, o);
      LockOutcome reused = lock_model(b, ranking, ratio);
      EXPECT_EQ(fresh.key.header.locked_fingerprint, reused.key.header.locked_fingerprint)
          << to_string(c) << " " << ratio;
      EXPECT_TRUE(same_tensors(a, b));
      ASSERT_EQ(fresh.key.entries.size(), reused.key.entries.size());
      for (size_t i = 0; i < fresh.key.entries.size(); ++i) {
        EXPECT_EQ(fresh.key.entries[i].units, reused.key.entries[i].units);
      }
      EXPECT_EQ(units_at(ranking, ratio), reused.stats.units);
    }
  }
}

TEST(Sweep, ScopeOptionAppliesToEveryCriterionAndMatchesALockWithThatScope) {
  // An fcn: several hidden layers of each kind compete, so the two scopes differ (tinycnn has
  // one eligible layer per kind, where global and layer scope coincide).
  torch::manual_seed(4);
  ModelMeta meta = new_model_meta("fcn", "fashion-mnist");
  meta.options = {{"depth", 4}, {"width", 24}, {"norm", 1}};
  LoadedModel model = create_model(meta);
  {
    torch::NoGradGuard no_grad;
    for (auto& t : named_tensors(*model.net)) {
      if (t.name.rfind("bn", 0) == 0 && !t.is_buffer) t.tensor.uniform_(-1.0, 1.0);
    }
  }
  LoadedModel original = clone(model);
  Dataset data = fmnist_test(100);
  SweepOptions o;
  o.criteria = {Criterion::kL1, Criterion::kBn};
  o.ratios = {0.03};
  o.scope = Scope::kGlobal;
  auto global = sweep(model, data, o);
  o.scope = Scope::kLayer;
  auto layer = sweep(model, data, o);
  ASSERT_EQ(global.size(), 2u);
  ASSERT_EQ(layer.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(global[i].scope, Scope::kGlobal);
    EXPECT_EQ(layer[i].scope, Scope::kLayer);
    std::vector<Digest> locked;
    for (Scope scope : {Scope::kGlobal, Scope::kLayer}) {
      const CurvePoint& p = scope == Scope::kGlobal ? global[i] : layer[i];
      LoadedModel fresh = clone(original);
      LockOptions lo;
      lo.criterion = p.criterion;
      lo.scope = scope;
      lo.ratio = 0.03;
      LockOutcome out = lock_model(fresh, lo);
      EXPECT_EQ(p.units, out.stats.units);
      EXPECT_DOUBLE_EQ(p.top1, evaluate(*fresh.net, data, fresh.meta.preprocess).top1);
      locked.push_back(out.key.header.locked_fingerprint);
    }
    // The two scopes extract different units here, so matching both locks means the option
    // reached the ranking.
    EXPECT_NE(locked[0], locked[1]) << to_string(global[i].criterion);
  }
  EXPECT_TRUE(same_tensors(model, original));
}

TEST(Sweep, CallbackStopsAfterThePointAndTheModelIsRestored) {
  LoadedModel model = fresh_tiny(2);
  LoadedModel original = clone(model);
  SweepOptions o;
  o.criteria = {Criterion::kL1};
  o.ratios = {0.01, 0.02, 0.03, 0.04};
  int seen = 0;
  auto points = sweep(model, fmnist_test(100), o, [&](const CurvePoint&) { return ++seen < 2; });
  EXPECT_EQ(points.size(), 2u);
  EXPECT_TRUE(same_tensors(model, original));
}

TEST(Sweep, RefusesALockedModelAndBadOptions) {
  LoadedModel model = fresh_tiny(1);
  SweepOptions o;
  o.ratios = {0.1};
  o.seeds = 0;
  EXPECT_THROW(sweep(model, fmnist_test(10), o), UsageError);
  o.seeds = 1;
  o.ratios = {1.5};
  EXPECT_THROW(sweep(model, fmnist_test(10), o), UsageError);
  LockOptions lo;
  lock_model(model, lo);
  o.ratios = {0.1};
  EXPECT_THROW(sweep(model, fmnist_test(10), o), UsageError);
}

TEST(Sweep, TrainedResnetL1DropsAndRandomKeepsUtility) {
  LoadedModel model = trained_resnet();
  Dataset data = fmnist_test(500);
  SweepOptions o;
  o.criteria = {Criterion::kL1, Criterion::kRandom};
  o.ratios = {0.001, 0.05};
  o.seeds = 3;
  auto points = sweep(model, data, o);
  ASSERT_EQ(points.size(), 4u);
  const CurvePoint& l1_small = points[0];
  const CurvePoint& l1_big = points[2];
  const CurvePoint& random_big = points[3];
  EXPECT_GT(l1_small.top1, l1_big.top1 + 20.0);
  EXPECT_GT(random_big.top1, l1_big.top1 + 20.0);
  EXPECT_GT(random_big.top1_sd, 0.0);  // the seeds draw different units
  EXPECT_GT(random_big.param_fraction, 0.0);
}

// ---------------------------------------------------------------- search on synthetic curves
// A falling sigmoid in log(ratio) from 90% to 10%, centred on 0.005.
Probe smooth(double ratio, double wiggle = 0.0) {
  const double x = std::log(std::max(ratio, 1e-7) / 0.005);
  double acc = 10.0 + 80.0 / (1.0 + std::exp(2.5 * x));
  acc += wiggle * std::sin(40.0 * x);  // non-monotone noise
  if (ratio == 0.0) acc = 90.0;
  return Probe{ratio, 0, 0.0, acc, std::min(100.0, acc + 5.0), acc};
}

// A curve over one group of `n` units whose top-1 (plain and effective alike) depends only on
// the unit count: what a ratio's plan takes.
Evaluator by_units(int64_t n, std::function<double(int64_t)> top1_of) {
  return [n, top1_of = std::move(top1_of)](double r) {
    const int64_t u = units_at_ratio(n, r);
    const double acc = top1_of(u);
    return Probe{r, u, 0.0, acc, acc, acc};
  };
}

TEST(SearchBand, LandsInEveryBandWithinEightEvaluations) {
  const std::vector<int64_t> groups = {20000, 50000};
  for (double wiggle : {0.0, 3.0}) {
    for (const char* text : {"70-75", "50-55", "30-35", "12-15", "85-88"}) {
      const Band band = parse_band(text);
      int calls = 0;
      Calibration c = search_band(
          groups,
          [&](double r) {
            ++calls;
            return smooth(r, wiggle);
          },
          band, CalibrationOptions{});
      EXPECT_TRUE(c.found()) << text << " wiggle " << wiggle << ": " << c.explanation;
      EXPECT_TRUE(band.contains(c.chosen.top1)) << text;
      EXPECT_LE(calls, 8) << text;
      EXPECT_EQ(static_cast<int>(c.probes.size()), calls);
      EXPECT_DOUBLE_EQ(smooth(c.chosen.ratio, wiggle).top1, c.chosen.top1);
      // A smooth curve has plans all along it: the search reaches the band's middle half.
      if (wiggle == 0.0) {
        const double quarter = (band.high - band.low) / 4.0;
        EXPECT_GE(c.chosen.top1, band.low + quarter) << text;
        EXPECT_LE(c.chosen.top1, band.high - quarter) << text;
      }
    }
  }
}

TEST(SearchBand, FindsTheBandBeyondANonMonotoneStretch) {
  // Unit counts of one group of 1000: the curve dips to 30% at 3-4 units, rises back to 70% at
  // 5-9, and only reaches 50-55 at 10-29 units. The first crossing jumps over the band.
  const Evaluator bumpy = by_units(1000, [](int64_t u) {
    return u <= 2 ? 90.0 : u <= 4 ? 30.0 : u <= 9 ? 70.0 : u <= 29 ? 52.0 : 10.0;
  });
  CalibrationOptions o;
  o.start_ratio = 0.001;
  Calibration c = search_band({1000}, bumpy, parse_band("50-55"), o);
  ASSERT_TRUE(c.found()) << c.explanation;
  EXPECT_DOUBLE_EQ(c.chosen.top1, 52.0);
  EXPECT_LE(c.probes.size(), 8u);
  // With the same curve, a band nothing lands in ends between two unit counts, not in a loop.
  o.max_evaluations = 30;
  Calibration none = search_band({1000}, bumpy, parse_band("40-45"), o);
  EXPECT_EQ(none.status, CalibrationStatus::kBetweenSteps) << none.explanation;
  EXPECT_LT(none.probes.size(), 30u);
}

TEST(SearchBand, SaysWhatIsReachableWhenTheBandIsNot) {
  CalibrationOptions o;
  o.max_evaluations = 20;
  Calibration above = search_band(
      {10000}, [](double r) { return smooth(r); }, parse_band("95-99"), o);
  EXPECT_EQ(above.status, CalibrationStatus::kAboveReach);
  EXPECT_NE(above.explanation.find("90.00%"), std::string::npos) << above.explanation;
  EXPECT_DOUBLE_EQ(above.reach_high, 90.0);
  // The floor of this curve is 10% plus a little: 0-5 lies below it.
  Calibration below = search_band(
      {10000}, [](double r) { return smooth(r); }, parse_band("0-5"), o);
  EXPECT_EQ(below.status, CalibrationStatus::kBelowReach);
  EXPECT_EQ(below.probes.back().ratio, 1.0);
  EXPECT_GE(below.reach_low, 10.0);
  EXPECT_LT(below.reach_low, 11.0);
}

TEST(SearchBand, BandBetweenTwoUnitCountsIsReportedAsSuch) {
  // Ten units; the fifth takes accuracy from 90% straight to 10%.
  auto cliff = [](double r) {
    const double acc = units_at_ratio(10, r) < 5 ? 90.0 : 10.0;
    return Probe{r, units_at_ratio(10, r), 0.0, acc, acc, acc};
  };
  CalibrationOptions o;
  o.max_evaluations = 20;
  Calibration c = search_band({10}, cliff, parse_band("50-55"), o);
  EXPECT_EQ(c.status, CalibrationStatus::kBetweenSteps) << c.explanation;
  EXPECT_NE(c.explanation.find("(4 units)"), std::string::npos) << c.explanation;
  EXPECT_NE(c.explanation.find("(5 units)"), std::string::npos) << c.explanation;
  // Two groups of the same size gain their units together: totals jump by two, 8 -> 10.
  auto twin_cliff = [](double r) {
    const int64_t u = 2 * units_at_ratio(10, r);
    return Probe{r, u, 0.0, u < 10 ? 90.0 : 10.0, 0.0, u < 10 ? 90.0 : 10.0};
  };
  Calibration twin = search_band({10, 10}, twin_cliff, parse_band("50-55"), o);
  EXPECT_EQ(twin.status, CalibrationStatus::kBetweenSteps) << twin.explanation;
  EXPECT_NE(twin.explanation.find("(8 units)"), std::string::npos) << twin.explanation;
  EXPECT_NE(twin.explanation.find("(10 units)"), std::string::npos) << twin.explanation;
}

TEST(SearchBand, StepsOverAUnitThatJumpsOverTheBand) {
  // 200 units in ranking order; extracting one costs 2 points, except the fifth, which alone
  // takes 80. The evaluator reads the current order, which the reordering changes.
  std::vector<int> order(200);
  for (int i = 0; i < 200; ++i) order[i] = i;
  auto acc_of = [&](int64_t units) {
    double acc = 90.0;
    for (int64_t i = 0; i < units; ++i) acc -= order[i] == 4 ? 80.0 : 2.0;
    return std::max(acc, 10.0);
  };
  const Evaluator curve = by_units(200, acc_of);
  Reorder reorder = [&](size_t group, int64_t position, int64_t count) {
    EXPECT_EQ(group, 0u);
    std::rotate(order.begin() + position, order.begin() + position + count, order.end());
  };
  CalibrationOptions o;
  o.start_ratio = 0.01;
  // Without reordering the band lies between 4 units (82%) and 5 (2% -> floor 10%).
  Calibration stuck = search_band({200}, curve, parse_band("50-55"), o);
  EXPECT_EQ(stuck.status, CalibrationStatus::kBetweenSteps) << stuck.explanation;
  EXPECT_TRUE(stuck.reordered.empty());
  o.max_evaluations = 12;
  Calibration c = search_band({200}, curve, parse_band("50-55"), o, {}, reorder);
  ASSERT_TRUE(c.found()) << c.explanation;
  ASSERT_EQ(c.reordered.size(), 1u);
  EXPECT_EQ(c.reordered[0].position, 4);
  EXPECT_EQ(c.reordered[0].count, 1);
  EXPECT_NE(c.explanation.find("moved to the end"), std::string::npos) << c.explanation;
  // 19 ordinary units give 52%, the middle half of the band (51.25-53.75%), and the chosen
  // probe's accuracy is what the final order gives.
  EXPECT_EQ(c.chosen.units, 19);
  EXPECT_DOUBLE_EQ(c.chosen.top1, 52.0);
  EXPECT_DOUBLE_EQ(acc_of(c.chosen.units), c.chosen.top1);
  EXPECT_LE(c.probes.size(), 12u);
}

TEST(SearchBand, AcceptsTheBandsEdgeWhenItsMiddleIsOutOfReach) {
  // 3 units give 54.6% (inside 50-55, outside its middle half), 4 units 30%: the search aims
  // for the middle, finds nothing there, and settles on the edge probe.
  const Evaluator step = by_units(100, [](int64_t u) {
    return u < 3 ? 90.0 : u == 3 ? 54.6 : 30.0;
  });
  CalibrationOptions o;
  o.start_ratio = 0.01;
  Calibration c = search_band({100}, step, parse_band("50-55"), o);
  ASSERT_TRUE(c.found()) << c.explanation;
  EXPECT_EQ(c.chosen.units, 3);
  EXPECT_NE(c.explanation.find("middle"), std::string::npos) << c.explanation;
}

TEST(SearchBand, NeverChoosesAPlanThatTakesNothing) {
  // Every probe of a flat curve lies in 0-100: a plan that takes units is chosen, not ratio 0
  // (the unlocked model), which the walk down toward the band's middle reaches last.
  CalibrationOptions o;
  o.start_ratio = 0.01;
  Calibration flat =
      search_band({1000}, by_units(1000, [](int64_t) { return 10.0; }), parse_band("0-100"), o);
  ASSERT_TRUE(flat.found()) << flat.explanation;
  EXPECT_GT(flat.chosen.units, 0);
  // The unlocked model (91%) is in the middle of 85-95 and the first unit takes it to 50%: no
  // plan that takes something lands, and the search says so instead of choosing none.
  const Evaluator cliff = by_units(1000, [](int64_t u) { return u == 0 ? 91.0 : 50.0; });
  Calibration none = search_band({1000}, cliff, parse_band("85-95"), o);
  EXPECT_FALSE(none.found()) << none.explanation;
  EXPECT_EQ(none.status, CalibrationStatus::kBetweenSteps) << none.explanation;
}

TEST(SearchBand, ReorderingsReplayOnARanking) {
  Ranking r;
  r.groups.push_back({"conv", {{0, 0, 9.f}, {0, 1, 8.f}, {0, 2, 7.f}, {0, 3, 6.f}}});
  r.groups.push_back({"linear", {{1, 0, 5.f}, {1, 1, 4.f}}});
  Calibration c;
  c.reordered = {{0, 1, 2}, {1, 0, 1}};
  const Ranking out = calibrated_ranking(r, c);
  std::vector<int64_t> conv, linear;
  for (const auto& u : out.groups[0].ranked) conv.push_back(u.index);
  for (const auto& u : out.groups[1].ranked) linear.push_back(u.index);
  EXPECT_EQ(conv, (std::vector<int64_t>{0, 3, 1, 2}));
  EXPECT_EQ(linear, (std::vector<int64_t>{1, 0}));
  c.reordered = {{0, 3, 2}};
  EXPECT_THROW(calibrated_ranking(r, c), Error);
  c.reordered = {{2, 0, 1}};
  EXPECT_THROW(calibrated_ranking(r, c), Error);
}

TEST(SearchBand, RunsOutOfBudgetWithTheClosestProbe) {
  CalibrationOptions o;
  o.max_evaluations = 2;
  Calibration c = search_band(
      {10000}, [](double r) { return smooth(r); }, parse_band("50.3-50.31"), o);
  EXPECT_EQ(c.status, CalibrationStatus::kOutOfBudget);
  EXPECT_EQ(c.probes.size(), 2u);
}

TEST(SearchBands, SmallestRatioPerBandOnASmoothCurve) {
  BandsOptions o;
  o.width = 10.0;
  int calls = 0;
  BandsTable t = search_bands(
      {100000},
      [&](double r) {
        ++calls;
        return smooth(r);
      },
      10.0, o);
  EXPECT_TRUE(t.complete);
  EXPECT_EQ(t.evaluations, calls);
  EXPECT_DOUBLE_EQ(t.original_top1, 90.0);
  ASSERT_EQ(t.rows.size(), 8u);  // 80-90 down to 10-20
  double previous = 0.0;
  for (const auto& row : t.rows) {
    ASSERT_TRUE(row.reached) << row.band.low;
    EXPECT_LT(row.first.top1, row.band.high);
    EXPECT_GE(row.first.top1, row.band.low);
    EXPECT_GE(row.below_top1, row.band.high);  // the ratio just below stays above the band
    // Pinned down to the tolerance, or to neighbouring unit counts.
    const bool adjacent =
        units_at_ratio(100000, row.first.ratio) - units_at_ratio(100000, row.below_ratio) <= 1;
    EXPECT_TRUE(adjacent || row.first.ratio / row.below_ratio <= 1.0 + o.tolerance + 1e-9)
        << row.below_ratio << " " << row.first.ratio;
    EXPECT_GT(row.first.ratio, previous);
    previous = row.first.ratio;
  }
}

// ---------------------------------------------------------------- on a real model
TEST(Calibrate, TrainedResnetLandsInAReachableBandAndRestores) {
  LoadedModel model = trained_resnet();
  const Digest fp = model_fingerprint(model);
  Dataset data = fmnist_test(500);
  const Ranking ranking = rank(model, Criterion::kL1);
  CalibrationOptions o;
  o.max_evaluations = 10;
  Calibration c = calibrate(model, ranking, data, parse_band("40-60"), o);
  ASSERT_TRUE(c.found()) << c.explanation;
  EXPECT_GE(c.chosen.top1, 40.0);
  EXPECT_LE(c.chosen.top1, 60.0);
  EXPECT_LE(c.probes.size(), 10u);
  EXPECT_EQ(model_fingerprint(model), fp);
  // The chosen ratio reproduces its accuracy when locked for real.
  LoadedModel locked = clone(model);
  lock_model(locked, ranking, c.chosen.ratio);
  EXPECT_DOUBLE_EQ(evaluate(*locked.net, data, locked.meta.preprocess).top1, c.chosen.top1);
  // And a band above the unlocked accuracy is said to be out of reach.
  Calibration none = calibrate(model, ranking, data, parse_band("99.5-100"), o);
  EXPECT_EQ(none.status, CalibrationStatus::kAboveReach) << none.explanation;
  EXPECT_EQ(model_fingerprint(model), fp);
}

TEST(Calibrate, TierBandsGiveNestedKeysWhoseStatesLandInTheirBands) {
  LoadedModel model = trained_resnet();
  LoadedModel original = clone(model);
  Dataset data = fmnist_test(500);
  const Ranking ranking = rank(model, Criterion::kL1);
  CalibrationOptions o;
  o.max_evaluations = 10;
  const std::vector<Band> bands = {parse_band("25-45"), parse_band("55-75")};
  TierCalibration tc = calibrate_tiers(model, ranking, data, bands, o);
  ASSERT_EQ(tc.ratios.size(), 2u);
  EXPECT_GT(tc.ratios[0], tc.ratios[1]);  // less utility takes a larger ratio
  std::vector<double> seen;
  LockOptions lo;
  auto keys = lock_model_tiers(model, lo, tc.ratios, [&](double, LoadedModel& state) {
    seen.push_back(evaluate(*state.net, data, state.meta.preprocess).top1);
  });
  // States come smallest ratio first: the 55-75 tier, then the 25-45 tier (the locked model).
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_DOUBLE_EQ(seen[0], tc.calibrations[1].chosen.top1);
  EXPECT_DOUBLE_EQ(seen[1], tc.calibrations[0].chosen.top1);
  EXPECT_TRUE(bands[0].contains(seen[1]));
  EXPECT_TRUE(bands[1].contains(seen[0]));
  std::vector<KeyFile> in_order;
  for (auto& t : keys) in_order.push_back(t.key);
  unlock_model(model, in_order);
  EXPECT_TRUE(testing::same_tensors(model, original));
  EXPECT_THROW(calibrate_tiers(original, ranking, data, {parse_band("99.5-100")}, o), Error);
}

}  // namespace
}  // namespace corelocker::control_test

namespace corelocker::control_test {
namespace {

// `sweep --resume` reads the sweep.json an interrupted run left: broken or foreign files are
// refused with an error naming the file or the difference, never taken as points.
TEST(SweepResume, BrokenOrForeignRecordsAreRefused) {
  testing::TempDir dir;
  SweepOptions o;
  o.criteria = {Criterion::kL1, Criterion::kRandom};
  o.ratios = {0.01, 0.1};
  o.seeds = 2;
  SweepRun run;
  run.dataset = "fashion-mnist";
  run.test_images = 100;
  EXPECT_FALSE(read_earlier_sweep(dir.path(), run, o).found);  // nothing there: start

  // A whole record of this sweep, made by SweepReport.
  CurvePoint p;
  p.criterion = Criterion::kL1;
  p.ratio = 0.01;
  p.top1 = 42.5;
  p.top1_runs = {42.5};
  p.top3_runs = {80.0};
  p.top1_effective = 50.0;
  p.top1_effective_runs = {50.0};
  {
    SweepReport report(dir.path(), run, o);
    report.add(p);
  }
  const std::string path = dir.file("sweep.json");
  const std::vector<uint8_t> good = read_file(path);
  EarlierSweep e = read_earlier_sweep(dir.path(), run, o);
  ASSERT_TRUE(e.found);
  ASSERT_EQ(e.points.size(), 1u);
  EXPECT_EQ(e.points[0].top1, 42.5);
  EXPECT_EQ(e.points[0].top1_effective, 50.0);
  EXPECT_FALSE(e.points[0].top1_reestimated.has_value());

  const std::string text(good.begin(), good.end());
  auto refused = [&](const std::string& contents, const std::string& expected) {
    write_file_atomic(path, contents);
    try {
      read_earlier_sweep(dir.path(), run, o);
      ADD_FAILURE() << "accepted: " << contents.substr(0, 200);
    } catch (const Error& err) {
      EXPECT_NE(std::string(err.what()).find(expected), std::string::npos) << err.what();
    }
  };
  refused(text.substr(0, text.size() / 2), "is not a sweep's record");  // cut off
  refused("[]", "is not a sweep's record");
  refused("", "is not a sweep's record");
  auto j = nlohmann::json::parse(text);
  auto without_top1 = j;
  without_top1["points"][0].erase("top1");
  refused(without_top1.dump(), "sweep point");
  auto wrong_type = j;
  wrong_type["points"][0]["top1_runs"] = "many";
  refused(wrong_type.dump(), "sweep point");
  auto wrong_point = j;
  wrong_point["points"][0]["ratio"] = 0.1;  // the second ratio where the first belongs
  refused(wrong_point.dump(), "point 1 is not the one the sweep measures there");
  auto too_many = j;
  for (int i = 0; i < 4; ++i) too_many["points"].push_back(j["points"][0]);
  refused(too_many.dump(), "is not the one the sweep measures there");
  auto other_seeds = j;
  other_seeds["seeds"] = 5;
  refused(other_seeds.dump(), "its seeds 5 differ(s) from this run's 2");
  auto other_model = j;
  other_model["fingerprint"] = std::string(64, 'f');  // the run's is all zeros
  refused(other_model.dump(), "its fingerprint");
}

}  // namespace
}  // namespace corelocker::control_test
