#include "control/utility_curve.h"

#include <chrono>
#include <cmath>
#include <sstream>
#include <tuple>

#include "control/curve_model.h"
#include "util/error.h"
#include "util/stats.h"

namespace corelocker {

LockedEval evaluate_locked(LoadedModel& model, const Ranking& ranking, double ratio,
                           const Dataset& data, int64_t batch_size,
                           const EffectiveTarget* effective, Collective* group) {
  if (!(ratio >= 0.0 && ratio <= 1.0)) {
    throw UsageError("ratio " + std::to_string(ratio) + ": must be within [0, 1]");
  }
  if (model.meta.lock) {
    throw UsageError("model is already locked (key id " + model.meta.lock->key_id +
                     "); curves start from an unlocked model");
  }
  auto tensors = named_tensors(*model.net);
  LockOptions options = ranking.options;
  options.ratio = ratio;
  ExtractionPlan plan = plan_at(ranking, tensors, model.net->structure(), ratio);
  KeyFile key = extract_units(tensors, plan, options);
  LockedEval out;
  out.ratio = ratio;
  const bool shared = group != nullptr && group->size() > 1;
  try {
    if (effective != nullptr) {
      static const Dataset kNone;
      EffectiveOptions o = effective->options;
      o.batch_size = batch_size;
      const Dataset& unlabelled = effective->unlabelled ? *effective->unlabelled : kNone;
      out.effective = shared ? evaluate_effective(model, data, unlabelled, o, *group)
                             : evaluate_effective(model, data, unlabelled, o);
      out.eval = out.effective->plain;
    } else {
      out.eval = shared ? evaluate_shared(model, data, batch_size, *group)
                        : evaluate(*model.net, data, model.meta.preprocess, batch_size);
    }
  } catch (...) {
    restore_units(tensors, key);
    throw;
  }
  // Checks the original fingerprint: a sweep can never leave a half-restored model behind.
  restore_units(tensors, key);
  out.stats.units = plan.units;
  out.stats.candidates = ranking.total_units();
  out.stats.values = static_cast<int64_t>(key.value_count());
  out.stats.parameters = parameter_count(*model.net);
  return out;
}

int64_t units_at(const Ranking& ranking, double ratio) {
  int64_t n = 0;
  for (const auto& g : ranking.groups)
    n += units_at_ratio(static_cast<int64_t>(g.ranked.size()), ratio);
  return n;
}

std::vector<Criterion> parse_criteria(const std::string& list) {
  std::vector<Criterion> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) throw UsageError("criteria '" + list + "': empty entry");
    const Criterion c = parse_criterion(item);
    for (Criterion seen : out) {
      if (seen == c) throw UsageError("criteria '" + list + "': '" + item + "' given twice");
    }
    out.push_back(c);
  }
  if (out.empty())
    throw UsageError("criteria '" + list + "': expected a list such as l1,bn,random");
  return out;
}

std::vector<double> parse_ratios(const std::string& list) {
  std::vector<double> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    double r = 0.0;
    try {
      r = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size()) {
      throw UsageError("ratios '" + list + "': '" + item + "' is not a number");
    }
    if (!(r >= 0.0 && r <= 1.0)) {
      throw UsageError("ratios '" + list + "': " + item + " is outside [0, 1]");
    }
    out.push_back(r);
  }
  if (out.empty()) throw UsageError("ratios '" + list + "': expected a list such as 0.001,0.01");
  return out;
}

std::vector<double> ratio_steps(double from, double to, int steps, bool log) {
  if (steps < 1) throw UsageError("steps " + std::to_string(steps) + ": must be at least 1");
  auto check = [&](double r, const char* what) {
    if (!(r >= 0.0 && r <= 1.0) || (log && !(r > 0.0))) {
      throw UsageError(std::string(what) + " " + std::to_string(r) + ": must be within " +
                       (log ? "(0, 1] for a log-spaced sweep" : "[0, 1]"));
    }
  };
  check(from, "--from");
  check(to, "--to");
  if (steps == 1) return {from};
  std::vector<double> out;
  for (int i = 0; i < steps; ++i) {
    const double t = double(i) / double(steps - 1);
    out.push_back(log ? std::exp(std::log(from) + t * (std::log(to) - std::log(from)))
                      : from + t * (to - from));
  }
  out.back() = to;  // exactly the end the user asked for, not exp(log(to))
  return out;
}

void sample_mean_sd(const std::vector<double>& v, double* mean, double* sd) {
  std::tie(*mean, *sd) = mean_sd(v);
}

std::vector<CurvePoint> sweep(LoadedModel& model, const Dataset& data, const SweepOptions& options,
                              const SweepCallback& on_point) {
  return sweep(*torch_curve_model(model), data, options, on_point);
}

std::vector<CurvePoint> sweep(CurveModel& model, const Dataset& data, const SweepOptions& options,
                              const SweepCallback& on_point) {
  if (options.criteria.empty()) throw UsageError("sweep: no criteria given");
  if (options.ratios.empty()) throw UsageError("sweep: no ratios given");
  if (options.seeds < 1)
    throw UsageError("seeds " + std::to_string(options.seeds) + ": must be at least 1");
  for (double r : options.ratios) {
    if (!(r >= 0.0 && r <= 1.0))
      throw UsageError("ratio " + std::to_string(r) + ": must be within [0, 1]");
  }
  // Rank once per criterion (per seed for random); every ratio below reuses these.
  std::vector<std::vector<Ranking>> rankings;
  for (Criterion c : options.criteria) {
    std::vector<Ranking> per_seed;
    const int runs = c == Criterion::kRandom ? options.seeds : 1;
    for (int s = 0; s < runs; ++s) {
      LockOptions o;
      o.criterion = c;
      o.scope = options.scope ? *options.scope : default_scope(c);
      o.include_io = options.include_io;
      o.random_bn_units = options.random_bn_units;
      o.seed = c == Criterion::kRandom ? options.first_seed + static_cast<uint64_t>(s) : 0;
      per_seed.push_back(model.rank(o));
    }
    rankings.push_back(std::move(per_seed));
  }
  std::vector<CurvePoint> points;
  size_t index = 0;
  for (double ratio : options.ratios) {
    for (size_t ci = 0; ci < options.criteria.size(); ++ci) {
      if (index++ < options.skip_points) continue;
      const auto start = std::chrono::steady_clock::now();
      CurvePoint p;
      p.criterion = options.criteria[ci];
      p.scope = rankings[ci].front().options.scope;
      p.ratio = ratio;
      std::vector<double> reestimated;
      for (const Ranking& ranking : rankings[ci]) {
        LockedEval e =
            model.evaluate_locked(ranking, ratio, data, options.batch_size,
                                  options.effective ? &*options.effective : nullptr, options.group);
        p.top1_runs.push_back(e.eval.top1);
        p.top3_runs.push_back(e.eval.top3);
        if (e.effective) {
          p.top1_effective_runs.push_back(e.effective->top1_effective);
          if (e.effective->reestimated) reestimated.push_back(e.effective->reestimated->top1);
        }
        // Every seed draws the same number of units; the parameter count differs only for
        // random bn units (filters of different layers have different sizes): report the mean.
        p.units = e.stats.units;
        p.candidates = e.stats.candidates;
        p.param_fraction += e.stats.param_fraction() / double(rankings[ci].size());
        p.images = e.eval.n;
      }
      sample_mean_sd(p.top1_runs, &p.top1, &p.top1_sd);
      if (!p.top1_effective_runs.empty()) p.top1_effective = mean_sd(p.top1_effective_runs).first;
      if (!reestimated.empty() && reestimated.size() == p.top1_runs.size()) {
        p.top1_reestimated = mean_sd(reestimated).first;
      }
      sample_mean_sd(p.top3_runs, &p.top3, &p.top3_sd);
      p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      points.push_back(p);
      bool go_on = !on_point || on_point(points.back());
      if (options.group != nullptr && options.group->size() > 1) {
        // Every rank must stop after the same point: stop when any rank asks to.
        std::vector<torch::Tensor> stops = {torch::full({1}, go_on ? 0.0f : 1.0f)};
        options.group->sum(stops);
        go_on = stops[0].item<float>() == 0.0f;
      }
      if (!go_on) return points;
    }
  }
  return points;
}

}  // namespace corelocker
