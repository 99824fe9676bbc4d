#include "attacks/harness.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <tuple>

#include "attacks/effective.h"
#include "locking/fingerprint.h"
#include "models/torchscript.h"
#include "util/error.h"
#include "util/hash.h"
#include "util/stats.h"

namespace corelocker {
namespace {

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::string mean_pm(double m, double sd, size_t n) {
  return n > 1 ? fmt("%.2f", m) + " ± " + fmt("%.2f", sd) : fmt("%.2f", m);
}

std::string signed_pm(double m, double sd, size_t n) {
  return n > 1 ? fmt("%+.2f", m) + " ± " + fmt("%.2f", sd) : fmt("%+.2f", m);
}

// Pads by code points, so that "±" counts as one column.
std::string pad(const std::string& s, size_t width, bool left = true) {
  size_t cols = 0;
  for (unsigned char c : s) cols += (c & 0xC0) != 0x80;
  if (cols >= width) return s;
  return left ? s + std::string(width - cols, ' ') : std::string(width - cols, ' ') + s;
}

// "K zero kernels, W zero linear weights, C zero-gamma channels".
std::string suspect_counts(const std::vector<Suspect>& suspects) {
  int64_t kernels = 0, weights = 0, channels = 0;
  for (const auto& s : suspects) {
    if (s.unit == "kernel") kernels += s.units;
    if (s.unit == "weight") weights += s.units;
    if (s.unit == "channel") channels += s.units;
  }
  return std::to_string(kernels) + " zero kernels, " + std::to_string(weights) +
         " zero linear weights, " + std::to_string(channels) + " zero-gamma channels";
}

// "5% data"; an attack that uses no data names the scratch run it was compared with instead.
std::string data_text(const AttackReport& r) {
  const std::string pct = fmt("%.3g%%", 100.0 * r.options.data_fraction);
  return r.config.uses_data() ? pct + " data" : "no data, vs scratch on " + pct;
}

}  // namespace

std::string AttackConfig::label() const {
  std::string s = to_string(kind);
  if (kind == AttackKind::kReinit) s += " + finetune";
  if (kind == AttackKind::kPrune) {
    s += " " + fmt("%.2f", prune_ratio);
    if (train.epochs > 0) s += " + finetune";
  }
  if (kind == AttackKind::kBnRecalibrate && bn_train_affine) s += " + affine";
  return s;
}

bool AttackConfig::uses_data() const { return !(kind == AttackKind::kPrune && train.epochs == 0); }

Dataset attacker_data(const Dataset& train_split, double fraction, uint64_t seed) {
  if (!(fraction > 0.0 && fraction <= 1.0)) {
    throw UsageError("data fraction " + std::to_string(fraction) + ": must be within (0, 1]");
  }
  const auto n = static_cast<int64_t>(std::llround(fraction * double(train_split.size())));
  if (n < 1) {
    throw UsageError("data fraction " + std::to_string(fraction) + " of " +
                     std::to_string(train_split.size()) + " training images selects no image");
  }
  // subset() returns everything for n >= size, in the original order; that is what 1.0 means.
  return subset(train_split, n, seed);
}

LoadedModel copy_model(LoadedModel& model) {
  if (auto* script = dynamic_cast<TorchScriptNetwork*>(model.net.get())) {
    LoadedModel c{model.meta, script->deep_copy(), model.meta_stored};
    c.net->eval();
    return c;
  }
  LoadedModel c = create_model(model.meta);
  c.meta = model.meta;
  c.meta_stored = model.meta_stored;
  torch::NoGradGuard no_grad;
  auto src = named_tensors(*model.net);
  auto dst = named_tensors(*c.net);
  if (src.size() != dst.size())
    throw Error("copy of model '" + model.meta.arch + "' has a different tensor list");
  for (size_t i = 0; i < src.size(); ++i) dst[i].tensor.copy_(src[i].tensor);
  c.net->eval();
  return c;
}

std::string attack_unavailable(LoadedModel& model, const AttackConfig& config) {
  if (config.kind == AttackKind::kBnRecalibrate) return reestimation_unavailable(model);
  return "";
}

namespace {

// A report with its checks done and nothing run; skipped says why when the attack cannot run.
AttackReport report_skeleton(LoadedModel& locked, const Dataset& train_split, double locked_top1,
                             std::optional<double> original_top1, const AttackConfig& config,
                             const HarnessOptions& options) {
  if (options.trials < 1)
    throw UsageError("trials " + std::to_string(options.trials) + ": must be >= 1");
  if (config.train.epochs < 0)
    throw UsageError("epochs " + std::to_string(config.train.epochs) + ": must be >= 0");
  if ((config.kind == AttackKind::kFinetune || config.kind == AttackKind::kReinit ||
       config.kind == AttackKind::kZeroRetrain || config.kind == AttackKind::kScratch) &&
      config.train.epochs == 0) {
    throw UsageError(std::string(to_string(config.kind)) + " needs --epochs >= 1");
  }
  AttackReport report;
  report.config = config;
  report.options = options;
  report.label = config.label();
  report.train_split_size = train_split.size();
  report.locked_top1 = locked_top1;
  report.original_top1 = original_top1;
  report.skipped = attack_unavailable(locked, config);
  return report;
}

// The trials a report runs: one when the attack uses no data, none when it cannot run.
int trial_count(const AttackReport& report) {
  if (!report.skipped.empty()) return 0;
  return report.config.uses_data() ? report.options.trials : 1;
}

// Trial t of the report's attack: everything it draws comes from seed options.seed + t, so a
// trial gives the same result whichever process runs it, and in whatever order.
TrialResult run_trial(LoadedModel& locked, const Dataset& train_split, const Dataset& test,
                      const AttackReport& report, int t, const AttackHooks& hooks) {
  const AttackConfig& config = report.config;
  const HarnessOptions& options = report.options;
  const double locked_top1 = report.locked_top1;
  TrialResult r;
  r.trial = t;
  r.seed = options.seed + static_cast<uint64_t>(t);
  // Drawn even when unused, so that a bad fraction fails the same way for every attack.
  Dataset data = attacker_data(train_split, options.data_fraction, r.seed);
  r.train_images = config.uses_data() ? data.size() : 0;
  TrainOptions o = config.train;
  o.seed = r.seed;
  auto progress = [&](const TrainProgress& p) {
    if (hooks.on_train) hooks.on_train(report.label, t, p);
  };
  const auto start = std::chrono::steady_clock::now();
  PytorchInit init;
  LoadedModel m = config.kind == AttackKind::kScratch ? scratch_model(locked, r.seed, &init)
                                                      : copy_model(locked);
  switch (config.kind) {
    case AttackKind::kFinetune:
      finetune(m, data, o, progress);
      break;
    case AttackKind::kScratch:
      if (init.layers > 0) {
        r.detail = "the TorchScript module re-initialised as PyTorch's layers do: " +
                   std::to_string(init.layers) + " layers" +
                   (init.other_parameters > 0 ? ", " + std::to_string(init.other_parameters) +
                                                    " parameters outside them as weights"
                                              : "");
      }
      train(*m.net, data, m.meta.preprocess, o, progress);
      break;
    case AttackKind::kPrune: {
      PruneResult p = prune_smallest(m, config.prune_ratio);
      r.detail = std::to_string(p.pruned) + " of " + std::to_string(p.candidates) +
                 " weights pruned (" + std::to_string(p.already_zero) + " of them already zero)";
      if (o.epochs > 0) finetune_pruned(m, p, data, o, progress);
      break;
    }
    case AttackKind::kReinit: {
      ReinitResult z = reinit_finetune(m, data, o, progress);
      r.detail = z.suspects.empty()
                     ? "nothing looked extracted: plain fine-tuning"
                     : std::to_string(z.positions) + " values re-initialised (" +
                           suspect_counts(z.suspects) + "), then every parameter fine-tuned";
      break;
    }
    case AttackKind::kZeroRetrain: {
      ZeroRetrainResult z = zero_retrain(m, data, o, progress);
      r.detail = std::to_string(z.positions) + " values retrained: " + suspect_counts(z.suspects);
      break;
    }
    case AttackKind::kBnRecalibrate: {
      BnRecalibrateResult b = bn_recalibrate(m, data, o, config.bn_train_affine, progress);
      r.detail = std::to_string(b.layers) + " BatchNorm layers recalibrated on " +
                 std::to_string(b.images) + " images";
      break;
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (hooks.on_trial) hooks.on_trial(t, data, m);
  r.top1 = evaluate(*m.net, test, m.meta.preprocess, options.eval_batch).top1;
  r.recovered = r.top1 - locked_top1;
  return r;
}

void summarise(AttackReport& report) {
  std::vector<double> top1, recovered;
  for (const auto& r : report.trials) {
    top1.push_back(r.top1);
    recovered.push_back(r.recovered);
  }
  std::tie(report.mean_top1, report.sd_top1) = mean_sd(top1);
  std::tie(report.mean_recovered, report.sd_recovered) = mean_sd(recovered);
}

nlohmann::json trial_json(const TrialResult& r) {
  return {{"trial", r.trial},  {"seed", r.seed},           {"train_images", r.train_images},
          {"top1", r.top1},    {"recovered", r.recovered}, {"seconds", r.seconds},
          {"detail", r.detail}};
}

TrialResult trial_from_json(const nlohmann::json& j) {
  TrialResult r;
  r.trial = j.at("trial").get<int>();
  r.seed = j.at("seed").get<uint64_t>();
  r.train_images = j.at("train_images").get<int64_t>();
  r.top1 = j.at("top1").get<double>();
  r.recovered = j.at("recovered").get<double>();
  r.seconds = j.at("seconds").get<double>();
  r.detail = j.at("detail").get<std::string>();
  return r;
}

}  // namespace

AttackReport run_attack(LoadedModel& locked, const Dataset& train_split, const Dataset& test,
                        double locked_top1, std::optional<double> original_top1,
                        const AttackConfig& config, const HarnessOptions& options,
                        const AttackHooks& hooks) {
  AttackReport report =
      report_skeleton(locked, train_split, locked_top1, original_top1, config, options);
  for (int t = 0; t < trial_count(report); ++t)
    report.trials.push_back(run_trial(locked, train_split, test, report, t, hooks));
  summarise(report);
  return report;
}

void compare_to_scratch(AttackReport& report, const AttackReport& scratch) {
  if (scratch.config.kind != AttackKind::kScratch)
    throw UsageError("compare_to_scratch: '" + scratch.label + "' is not scratch");
  if (report.options.data_fraction != scratch.options.data_fraction ||
      report.options.seed != scratch.options.seed ||
      report.train_split_size != scratch.train_split_size) {
    throw UsageError("'" + report.label + "' and scratch used different data (fraction " +
                     std::to_string(report.options.data_fraction) + " vs " +
                     std::to_string(scratch.options.data_fraction) + ", seed " +
                     std::to_string(report.options.seed) + " vs " +
                     std::to_string(scratch.options.seed) + ")");
  }
  std::vector<double> diff;
  if (report.trials.size() == 1 && !report.config.uses_data()) {
    for (const auto& s : scratch.trials) diff.push_back(report.trials[0].top1 - s.top1);
  } else {
    const size_t n = std::min(report.trials.size(), scratch.trials.size());
    for (size_t i = 0; i < n; ++i) diff.push_back(report.trials[i].top1 - scratch.trials[i].top1);
  }
  if (diff.empty()) return;
  auto [m, sd] = mean_sd(diff);
  report.advantage = m;
  report.sd_advantage = sd;
  report.advantage_pairs = static_cast<int>(diff.size());
}

std::string report_table(const std::vector<AttackReport>& reports) {
  std::string out;
  const size_t w[] = {26, 7, 7, 8, 16, 16, 16, 10};
  const char* head[] = {"attack",         "data",      "trials",     "locked",
                        "after attack %", "recovered", "vs scratch", "s/trial"};
  for (size_t i = 0; i < 8; ++i) out += pad(head[i], w[i], i == 0) + (i < 7 ? " " : "\n");
  std::string skipped;
  for (const auto& r : reports) {
    if (!r.skipped.empty()) {
      skipped += r.label + ": not run: " + r.skipped + "\n";
      continue;
    }
    const size_t n = r.trials.size();
    double secs = 0;
    for (const auto& t : r.trials) secs += t.seconds;
    const std::string data =
        r.config.uses_data() ? fmt("%.3g%%", 100.0 * r.options.data_fraction) : "-";
    std::string adv = "-";
    if (r.config.kind == AttackKind::kScratch)
      adv = "(baseline)";
    else if (r.advantage)
      adv = signed_pm(*r.advantage, r.sd_advantage.value_or(0.0),
                      static_cast<size_t>(r.advantage_pairs));
    const std::string cells[] = {r.label,
                                 data,
                                 std::to_string(n),
                                 fmt("%.2f", r.locked_top1),
                                 mean_pm(r.mean_top1, r.sd_top1, n),
                                 signed_pm(r.mean_recovered, r.sd_recovered, n),
                                 adv,
                                 fmt("%.1f", n ? secs / double(n) : 0.0)};
    for (size_t i = 0; i < 8; ++i) out += pad(cells[i], w[i], i == 0) + (i < 7 ? " " : "\n");
  }
  return out + skipped;
}

const AttackReport* best_advantage(const std::vector<AttackReport>& reports) {
  const AttackReport* best = nullptr;
  for (const auto& r : reports) {
    if (r.config.kind == AttackKind::kScratch || !r.advantage) continue;
    if (!best || *r.advantage > *best->advantage) best = &r;
  }
  return best;
}

std::string advantage_summary(const std::vector<AttackReport>& reports) {
  std::string out;
  for (const auto& r : reports) {
    if (r.config.kind == AttackKind::kScratch || !r.advantage) continue;
    out += "advantage over scratch: " + r.label + " (" + data_text(r) + ") " +
           signed_pm(*r.advantage, r.sd_advantage.value_or(0.0),
                     static_cast<size_t>(r.advantage_pairs)) +
           " points\n";
  }
  const AttackReport* best = best_advantage(reports);
  if (!best) return out;
  const std::string points = fmt("%+.2f", *best->advantage) + " points";
  const std::string which = best->label + ", " + data_text(*best);
  if (*best->advantage > 0.0)
    out += "verdict: the largest advantage over scratch is " + points + " (" + which + ")\n";
  else
    out += "verdict: no attack beats training from scratch (best: " + points + ", " + which + ")\n";
  return out;
}

nlohmann::json report_json(const std::vector<AttackReport>& reports) {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& r : reports) {
    if (!r.skipped.empty()) {
      arr.push_back({{"attack", to_string(r.config.kind)},
                     {"label", r.label},
                     {"skipped", r.skipped},
                     {"trials", nlohmann::json::array()}});
      continue;
    }
    nlohmann::json trials = nlohmann::json::array();
    for (const auto& t : r.trials) trials.push_back(trial_json(t));
    nlohmann::json j = {
        {"attack", to_string(r.config.kind)},
        {"label", r.label},
        {"data_fraction",
         r.config.uses_data() ? nlohmann::json(r.options.data_fraction) : nlohmann::json()},
        {"train_split_size", r.train_split_size},
        {"epochs", r.config.train.epochs},
        {"lr", r.config.train.lr},
        {"batch_size", r.config.train.batch_size},
        {"schedule", r.config.train.schedule},
        {"seed", r.options.seed},
        {"locked_top1", r.locked_top1},
        {"mean_top1", r.mean_top1},
        {"sd_top1", r.sd_top1},
        {"mean_recovered", r.mean_recovered},
        {"sd_recovered", r.sd_recovered},
        {"trials", trials}};
    if (r.config.kind == AttackKind::kPrune) j["prune_ratio"] = r.config.prune_ratio;
    if (r.config.kind == AttackKind::kBnRecalibrate) j["train_affine"] = r.config.bn_train_affine;
    j["original_top1"] = r.original_top1 ? nlohmann::json(*r.original_top1) : nlohmann::json();
    j["advantage_over_scratch"] = r.advantage ? nlohmann::json(*r.advantage) : nlohmann::json();
    j["sd_advantage_over_scratch"] =
        r.sd_advantage ? nlohmann::json(*r.sd_advantage) : nlohmann::json();
    arr.push_back(j);
  }
  nlohmann::json verdict;  // null when no attack was compared with scratch
  if (const AttackReport* best = best_advantage(reports)) {
    verdict = {
        {"attack", best->label},
        {"kind", to_string(best->config.kind)},
        {"data_fraction",
         best->config.uses_data() ? nlohmann::json(best->options.data_fraction) : nlohmann::json()},
        {"advantage", *best->advantage},
        {"sd_advantage",
         best->sd_advantage ? nlohmann::json(*best->sd_advantage) : nlohmann::json()}};
  }
  return {{"attacks", arr}, {"verdict", verdict}};
}

std::vector<AttackConfig> attack_plan(const AttackPlanOptions& o) {
  std::vector<AttackConfig> configs;
  for (AttackKind k : o.kinds) {
    AttackConfig cfg;
    cfg.kind = k;
    cfg.train = o.train;
    cfg.train.epochs = o.epochs >= 0 ? o.epochs : (k == AttackKind::kPrune ? 0 : 2);
    if (k == AttackKind::kPrune) {
      if (o.all) cfg.train.epochs = o.prune_epochs;
      for (double r : o.prune_ratios) {
        cfg.prune_ratio = r;
        configs.push_back(cfg);
      }
    } else if (k == AttackKind::kBnRecalibrate && o.all) {
      configs.push_back(cfg);
      cfg.bn_train_affine = true;
      configs.push_back(cfg);
    } else {
      cfg.bn_train_affine = o.bn_train_affine;
      configs.push_back(cfg);
    }
  }
  return configs;
}

std::vector<AttackReport> run_attack_grid(LoadedModel& locked, const Dataset& train_split,
                                          const Dataset& test, double locked_top1,
                                          std::optional<double> original_top1,
                                          const std::vector<AttackConfig>& plan,
                                          const std::vector<double>& fractions,
                                          const HarnessOptions& base, const AttackGridHooks& hooks,
                                          Collective* group) {
  // The rows in report order (fraction, then plan) and the fraction set each belongs to.
  std::vector<AttackReport> reports;
  std::vector<size_t> set_of;
  for (size_t f = 0; f < fractions.size(); ++f) {
    HarnessOptions h = base;
    h.data_fraction = fractions[f];
    for (const auto& cfg : plan) {
      // Pruning without fine-tuning does not depend on the data: one row for all fractions.
      if (!cfg.uses_data() && f > 0) continue;
      reports.push_back(report_skeleton(locked, train_split, locked_top1, original_top1, cfg, h));
      set_of.push_back(f);
    }
  }
  if (group == nullptr || group->size() <= 1) {
    for (auto& report : reports) {
      if (hooks.on_start) hooks.on_start(report.config, report.options.data_fraction);
      for (int t = 0; t < trial_count(report); ++t)
        report.trials.push_back(run_trial(locked, train_split, test, report, t, hooks));
      summarise(report);
      if (hooks.on_done) hooks.on_done(report);
    }
  } else {
    // Every trial is a job of the group's queue; rank 0 gathers them into the same reports.
    std::vector<std::pair<size_t, int>> jobs;
    nlohmann::json grid = nlohmann::json::array();
    for (size_t i = 0; i < reports.size(); ++i) {
      for (int t = 0; t < trial_count(reports[i]); ++t) jobs.emplace_back(i, t);
      grid.push_back({reports[i].label, reports[i].options.data_fraction, trial_count(reports[i])});
    }
    group->agree("attack grid", nlohmann::json{{"rows", grid},
                                               {"seed", base.seed},
                                               {"train_images", train_split.size()},
                                               {"test_images", test.size()},
                                               {"locked_top1", locked_top1}}
                                    .dump());
    group->agree("locked model (fingerprint)", to_hex(fingerprint(named_tensors(*locked.net))));
    const Collective::JobQueue queue = group->open_queue("attack-grid", int64_t(jobs.size()));
    for (int64_t j; (j = group->next_job(queue)) >= 0;) {
      const auto& [row, t] = jobs[j];
      const AttackReport& report = reports[row];
      if (hooks.on_start) hooks.on_start(report.config, report.options.data_fraction);
      try {
        group->post_result(
            queue, j, trial_json(run_trial(locked, train_split, test, report, t, hooks)).dump());
      } catch (const std::exception& e) {
        group->post_result(queue, j, nlohmann::json{{"error", e.what()}}.dump());
        throw;
      }
    }
    if (group->rank() != 0) return {};
    for (size_t j = 0; j < jobs.size(); ++j) {
      const auto answer = nlohmann::json::parse(group->result(queue, int64_t(j)));
      AttackReport& report = reports[jobs[j].first];
      if (answer.contains("error")) {
        throw Error(report.label + ", trial " + std::to_string(jobs[j].second + 1) +
                    " failed on another rank: " + answer["error"].get<std::string>());
      }
      report.trials.push_back(trial_from_json(answer));
    }
    for (auto& report : reports) {
      summarise(report);
      if (hooks.on_done) hooks.on_done(report);
    }
  }
  for (size_t f = 0; f < fractions.size(); ++f) {
    const AttackReport* scratch = nullptr;
    for (size_t i = 0; i < reports.size(); ++i) {
      if (set_of[i] == f && reports[i].config.kind == AttackKind::kScratch) scratch = &reports[i];
    }
    if (scratch == nullptr) continue;
    for (size_t i = 0; i < reports.size(); ++i) {
      if (set_of[i] == f && &reports[i] != scratch) compare_to_scratch(reports[i], *scratch);
    }
  }
  return reports;
}

std::string attack_caveat(LoadedModel& locked) {
  auto* script = dynamic_cast<TorchScriptNetwork*>(locked.net.get());
  if (script == nullptr || script->batchnorms_fixed_in_eval().empty()) return "";
  return "the traced graph fixes evaluation mode in its BatchNorm layers: attacks that train keep "
         "their running statistics fixed, and scratch trains without batch statistics (a weak "
         "yardstick); a scripted file of the same model gives the fair comparison";
}

std::vector<std::string> report_details(const std::vector<AttackReport>& reports) {
  std::vector<std::string> details;
  for (const auto& r : reports) {
    if (r.trials.empty() || r.trials.front().detail.empty()) continue;
    char fraction[32] = "";
    if (r.config.uses_data())
      std::snprintf(fraction, sizeof fraction, " (%.1f%% data)", 100.0 * r.options.data_fraction);
    const std::string d = "  " + r.label + fraction + ": " + r.trials.front().detail;
    if (std::find(details.begin(), details.end(), d) == details.end()) details.push_back(d);
  }
  return details;
}

}  // namespace corelocker
