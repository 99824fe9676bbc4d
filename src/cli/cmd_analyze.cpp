// `analyze`: the paper's disparity bounds (section 4) measured layer by layer on a model.
#include <cmath>
#include <cstdio>

#include "analysis/disparity.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "locking/lock.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::cli {
namespace {

std::string num(double v) {
  if (std::isnan(v)) return "-";
  char b[32];
  std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

void print_report(const DisparityReport& r) {
  std::printf("mode %s (%s), %lld inputs, mean ||x||_2 %s, L %s, lambda = max ||W*||_2 = %s\n",
              to_string(r.mode),
              r.mode == DisparityMode::kChain
                  ? "y^(m) = ReLU(W y^(m-1) + b), BatchNorm folded"
                  : "y^(m) = output of the m-th conv/linear layer, phi = identity",
              static_cast<long long>(r.samples), num(r.input_norm).c_str(),
              num(r.lipschitz).c_str(), num(r.lambda).c_str());
  std::printf("%3s %-22s %8s %9s %9s %9s %9s %9s %9s %7s %9s %9s %7s\n", "m", "layer", "changed",
              "|dW|_2", "|W*|_2", "rand.est", "|y*m-1|", "G", "|y-y*|", "T2 viol", "G+L|dW||y|",
              "G+eta", "T3 viol");
  for (const auto& d : r.layers) {
    std::printf("%3d %-22s %8lld %9s %9s %9s %9s %9s %9s %7lld %9s %9s %7lld\n", d.m,
                d.name.substr(0, 22).c_str(), static_cast<long long>(d.changed),
                num(d.delta_norm).c_str(), num(d.weight_norm).c_str(),
                num(d.random_estimate).c_str(), num(d.in_norm).c_str(), num(d.g).c_str(),
                num(d.observed).c_str(), static_cast<long long>(d.thm2_violations),
                num(d.step_bound).c_str(), num(d.g + d.eta).c_str(),
                static_cast<long long>(d.thm3_violations));
  }
  int64_t t2_layers = 0, t3_layers = 0, step_layers = 0;
  for (const auto& d : r.layers) {
    t2_layers += d.thm2_violations > 0;
    t3_layers += d.thm3_violations > 0;
    step_layers += d.step_violations > 0;
  }
  std::printf("Theorem 2 (|y-y*| >= G): violated in %lld of %zu layers\n",
              static_cast<long long>(t2_layers), r.layers.size());
  for (const auto& d : r.layers) {
    if (d.thm2_violations == 0) continue;
    std::printf("  m %d %s: %lld of %lld inputs, worst |y-y*| = G x %s\n", d.m, d.name.c_str(),
                static_cast<long long>(d.thm2_violations), static_cast<long long>(d.samples),
                num(1.0 + d.thm2_worst).c_str());
  }
  std::printf(
      "Theorem 3/4 (|y-y*| <= G + eta, eta = |dW|_2 L^m lambda^(m-1) |x|): violated in %lld of %zu "
      "layers\n",
      static_cast<long long>(t3_layers), r.layers.size());
  for (const auto& d : r.layers) {
    if (d.thm3_violations == 0) continue;
    std::printf("  m %d %s: %lld of %lld inputs\n", d.m, d.name.c_str(),
                static_cast<long long>(d.thm3_violations), static_cast<long long>(d.samples));
  }
  if (step_layers > 0) {
    std::printf(
        "the proof's step |y-y*| <= G + L(|dW|_2 |y*m-1| + |db|) failed in %lld layers "
        "(rounding, or a layer the mode does not model)\n",
        static_cast<long long>(step_layers));
  }
  if (r.variance.applicable) {
    std::printf(
        "Theorem 1 (output variance across the inputs <= bound): original %s <= %s %s, "
        "locked %s <= %s %s\n",
        num(r.variance.measured_original).c_str(), num(r.variance.bound_original).c_str(),
        r.variance.measured_original <= r.variance.bound_original ? "holds" : "VIOLATED",
        num(r.variance.measured_locked).c_str(), num(r.variance.bound_locked).c_str(),
        r.variance.measured_locked <= r.variance.bound_locked ? "holds" : "VIOLATED");
  } else {
    std::printf("Theorem 1: not computed: %s\n", r.variance.reason.c_str());
  }
  for (const auto& s : r.skipped) std::printf("not measured: %s\n", s.c_str());
}

struct Analyze : Command {
  std::string model_path, json_out;
  std::vector<std::string> key_paths;
  UnitArgs units;
  double ratio = -1.0;
  uint64_t sample_seed = 0;
  bool unscaled = false;
  DisparityOptions opts;
  Common common;
  KeyAccess access;
  InputArgs input;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand(
        "analyze", "Measure the paper's disparity bounds (Theorems 1-4) layer by layer");
    c->add_option("--model", model_path,
                  "Locked model (with --key) or unlocked model (with --criterion and --ratio)")
        ->required();
    auto* k = c->add_option("--key", key_paths, "Key(s) that unlock --model, tier 1 first");
    c->add_option("--ratio", ratio, "Extraction ratio of the in-memory lock (instead of --key)")
        ->check(CLI::Range(0.0, 1.0));
    k->excludes(add_unit_args(c, units, /*random_allowed=*/true));
    c->add_option("--samples", opts.samples, "Test images to measure on")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    c->add_option("--sample-seed", sample_seed, "Seed that draws the test images")
        ->capture_default_str();
    c->add_option("--power-iterations", opts.power_iterations, "Power iterations per operator norm")
        ->capture_default_str()
        ->check(CLI::Range(1, 100000));
    c->add_flag(
        "--unscaled", unscaled,
        "Use the inputs as preprocessed (default: scaled to ||x||_2 <= 1 as the paper assumes)");
    c->add_option("--json", json_out, "Also write the report as JSON to this file");
    add_key_access(c, access, /*writing=*/false);
    add_threads(c, common);
    add_data(c, common);
    add_input_args(c, input);
    return c;
  }

  int run() override {
    apply_threads(common);
    require_runnable(model_path, Feature::kAttack, "analyze");
    opts.scale_inputs = !unscaled;
    LoadedModel original, locked;
    if (!key_paths.empty()) {
      if (ratio >= 0.0) throw UsageError("--ratio goes with --criterion, not with --key");
      locked = load_model(model_path);
      if (!locked.meta.lock)
        throw UsageError("model '" + model_path +
                         "' is not locked; give --ratio [--criterion] instead");
      original = load_unlocked(model_path, read_keys(key_paths, access));
      apply_input_override(input, locked.meta, locked.meta_stored, model_path);
      apply_input_override(input, original.meta, original.meta_stored, model_path);
    } else {
      if (ratio < 0.0)
        throw UsageError("give --key (a locked model) or --ratio [--criterion] (an unlocked one)");
      original = load_model(model_path);
      if (original.meta.lock)
        throw UsageError("model '" + model_path + "' is locked; give its --key instead");
      locked = load_model(model_path);
      apply_input_override(input, original.meta, original.meta_stored, model_path);
      apply_input_override(input, locked.meta, locked.meta_stored, model_path);
      LockOptions lo = lock_options(units);
      lo.ratio = ratio;
      const LockOutcome out = lock_model(locked, lo);
      std::printf("locked in memory: %s, %s scope, ratio %s: %lld units, %lld values\n",
                  to_string(lo.criterion), to_string(lo.scope), fixed(ratio, 6).c_str(),
                  static_cast<long long>(out.stats.units),
                  static_cast<long long>(out.stats.values));
    }
    Dataset data = subset(test_set(original.meta, common), opts.samples, sample_seed);
    const DisparityReport report = analyze_disparity(original, locked, data, opts);
    print_report(report);
    if (!json_out.empty()) {
      Json j = disparity_to_json(report);
      j["model"] = model_path;
      j["keys"] = key_paths;
      if (key_paths.empty()) {
        const LockOptions lo = lock_options(units);
        j["criterion"] = to_string(lo.criterion);
        j["scope"] = to_string(lo.scope);
        j["ratio"] = ratio;
      }
      j["scaled_inputs"] = !unscaled;
      write_file_atomic(json_out, j.dump(2) + "\n");
      std::printf("wrote %s\n", json_out.c_str());
    }
    return 0;
  }
};

}  // namespace

std::unique_ptr<Command> make_analyze() { return std::make_unique<Analyze>(); }

}  // namespace corelocker::cli
