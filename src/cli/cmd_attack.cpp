// `attack`: try to win back a locked model's utility without the key, and measure it against
// training from scratch on the same data and budget.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "attacks/harness.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/progress.h"
#include "data/dataset.h"
#include "distributed/group.h"
#include "eval/evaluate.h"
#include "models/checkpoint.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::cli {

namespace {

struct Attack : Command {
  std::string kind, model_path, original_path, report_path;
  std::vector<double> fractions, ratios;
  int trials = 3, epochs = -1, prune_epochs = 0;
  uint64_t seed = 0;
  bool affine = false, json = false;
  TrainOptions topts;
  Common common;
  EffectiveArgs effective;
  InputArgs input;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand("attack",
                                 "Attack a locked model without its key: finetune | reinit | "
                                 "prune | zero-retrain | bn-recalibrate | scratch | all");
    topts.lr = 0.05;
    c->add_option("kind", kind,
                  "finetune | reinit | prune | zero-retrain | bn-recalibrate | scratch, or a "
                  "comma-separated list of them (finetune,reinit,scratch), or all")
        ->required();
    c->add_option("--model", model_path,
                  "Locked model to attack (checkpoint or TorchScript file; never written to)")
        ->required();
    c->add_option("--original", original_path,
                  "Original model: report its accuracy beside the attack's");
    c->add_option("--data-fraction", fractions,
                  "Attacker's share of the training split, fresh random subset per trial; several "
                  "(0.05,0.1) run one "
                  "set each (default 0.05)")
        ->delimiter(',');
    c->add_option("--trials", trials, "Trials per attack (each on its own data subset)")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    c->add_option("--seed", seed, "Trial t draws its data and trains with seed + t")
        ->capture_default_str();
    c->add_option("--epochs", epochs,
                  "Training epochs of the attack (default 2; prune: 0, no fine-tuning)")
        ->check(CLI::NonNegativeNumber);
    c->add_option("--lr", topts.lr, "Peak learning rate")->capture_default_str();
    c->add_option("--batch-size", topts.batch_size, "Batch size")->capture_default_str();
    c->add_option("--schedule", topts.schedule, "onecycle | cosine | constant")
        ->capture_default_str();
    c->add_option("--weight-decay", topts.weight_decay, "Weight decay")->capture_default_str();
    c->add_option("--ratio", ratios,
                  "prune: fraction of conv/linear weights to prune (default 0.2; all: 0.2,0.4)")
        ->delimiter(',')
        ->check(CLI::Range(0.0, 1.0));
    c->add_option("--prune-epochs", prune_epochs, "all: fine-tuning epochs after pruning")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    c->add_flag("--affine", affine,
                "bn-recalibrate: then train the BatchNorm affine parameters (all runs both)");
    c->add_flag("--json", json, "Print one JSON object instead of the table");
    c->add_option("--report", report_path, "Also write the JSON report to this file");
    add_threads(c, common);
    add_data(c, common);
    add_effective_args(c, effective);
    add_input_args(c, input);
    return c;
  }

  int run() override {
    // A group of processes when the environment describes one: the trials are shared out.
    const std::unique_ptr<Group> group = join_group_from_environment();
    const bool rank0 = group == nullptr || group->rank() == 0;
    apply_threads(common, group ? group->config().local_size : 1);
    require_runnable(model_path, Feature::kAttack, "attack");
    if (!original_path.empty()) require_runnable(original_path, Feature::kAttack, "attack");
    const bool all = kind == "all";
    const std::vector<AttackKind> kinds = parse_attack_kinds(kind);
    if (fractions.empty()) fractions = {0.05};
    if (ratios.empty()) ratios = all ? std::vector<double>{0.2, 0.4} : std::vector<double>{0.2};

    LoadedModel locked = load_model(model_path);
    apply_input_override(input, locked.meta, locked.meta_stored, model_path);
    // Refused before any data is read when no attack asked for can run on this model; otherwise
    // those that cannot are skipped with their reason.
    std::string cannot_run;
    for (AttackKind k : kinds) {
      AttackConfig probe;
      probe.kind = k;
      cannot_run = attack_unavailable(locked, probe);
      if (cannot_run.empty()) break;
    }
    if (!cannot_run.empty()) {
      throw UsageError("no attack of '" + kind + "' can run on '" + model_path +
                       "': " + cannot_run);
    }
    const std::string dataset = locked.meta.dataset.empty() ? "fashion-mnist" : locked.meta.dataset;
    Dataset train_split = load_dataset(dataset, common.data_dir, Split::kTrain);
    Dataset test = test_set(locked.meta, common);
    // What the locked model is worth before any training: plain, after BatchNorm re-estimation
    // and pruning (attacks/effective.h).
    const EffectiveEval locked_eval = evaluate_effective(
        locked, test, reestimation_images(train_split, effective.options()), effective.options());
    const double locked_top1 = locked_eval.plain.top1;
    std::optional<double> original_top1;
    if (!original_path.empty()) {
      LoadedModel original = load_model(original_path);
      if (original.meta.arch != locked.meta.arch || original.meta.options != locked.meta.options) {
        throw UsageError("--original '" + original_path + "' is a " + original.meta.arch +
                         ", the locked model is a " + locked.meta.arch);
      }
      if (original.meta_stored) {
        apply_input_override(input, original.meta, original.meta_stored, original_path);
      } else {
        // A TorchScript file straight from PyTorch: the same network as the locked one, fed the
        // same way.
        original.meta.dataset = locked.meta.dataset;
        original.meta.input = locked.meta.input;
        original.meta.preprocess = locked.meta.preprocess;
        original.meta.classes = locked.meta.classes;
      }
      original_top1 = evaluate(*original.net, test, original.meta.preprocess).top1;
    }

    AttackPlanOptions plan_options;
    plan_options.kinds = kinds;
    plan_options.all = all;
    plan_options.train = topts;
    plan_options.epochs = epochs;
    plan_options.prune_epochs = prune_epochs;
    plan_options.prune_ratios = ratios;
    plan_options.bn_train_affine = affine;
    const std::vector<AttackConfig> configs = attack_plan(plan_options);

    Progress line;
    AttackGridHooks hooks;
    std::string current;
    hooks.on_train = [&](const std::string&, int trial, const TrainProgress& p) {
      if (p.step % 5 != 0 && !p.epoch_done) return;
      line.update(current + " trial " + std::to_string(trial + 1) + " epoch " +
                  std::to_string(p.epoch) + "/" + std::to_string(p.epochs) + " " +
                  bar(double(p.step) / double(p.steps)) + " loss " + fixed(p.loss, 3) + " ETA " +
                  format_duration(p.eta_seconds));
    };
    hooks.on_start = [&](const AttackConfig& cfg, double fraction) {
      current = cfg.label() + " (" + fixed(100.0 * fraction, 0) + "% data)";
      line.update(current + " ...");
    };
    hooks.on_done = [&](const AttackReport& r) {
      line.finish(r.label + " (" + fixed(100.0 * r.options.data_fraction, 0) + "% data): " +
                  (r.skipped.empty() ? pct(r.mean_top1) + "%" : "not run (" + r.skipped + ")"));
    };
    if (!rank0) hooks = AttackGridHooks{};  // rank 0 alone shows progress
    HarnessOptions base;
    base.trials = trials;
    base.seed = seed;
    const std::vector<AttackReport> reports =
        run_attack_grid(locked, train_split, test, locked_top1, original_top1, configs, fractions,
                        base, hooks, group.get());
    if (!rank0) return 0;  // rank 0 reports the whole grid
    const std::string traced_note = attack_caveat(locked);

    Json j = report_json(reports);
    j["model"] = model_path;
    j["arch"] = locked.meta.arch;
    j["dataset"] = dataset;
    j["test_images"] = test.size();
    j["locked_top1"] = locked_top1;
    j["locked"] = effective_to_json(locked_eval);
    j["original_top1"] = original_top1 ? Json(*original_top1) : Json();
    if (!traced_note.empty()) j["note"] = traced_note;
    j["lock"] = locked.meta.lock ? Json{{"criterion", locked.meta.lock->criterion},
                                        {"scope", locked.meta.lock->scope},
                                        {"ratio", locked.meta.lock->ratio}}
                                 : Json();
    if (!report_path.empty()) write_file_atomic(report_path, j.dump(2) + "\n");
    if (json) {
      std::printf("%s\n", j.dump().c_str());
      return 0;
    }
    std::printf("\n%s (%s), %s, %lld test images\n", model_path.c_str(), locked.meta.arch.c_str(),
                dataset.c_str(), static_cast<long long>(test.size()));
    if (locked.meta.lock) {
      std::printf("lock: %s, scope %s, ratio %s\n", locked.meta.lock->criterion.c_str(),
                  locked.meta.lock->scope.c_str(), fixed(locked.meta.lock->ratio, 4).c_str());
    } else {
      std::printf("lock: none recorded in the model's metadata\n");
    }
    std::printf("locked: %s", effective_text(locked_eval).c_str());
    if (original_top1) std::printf(", original top-1 %s%%", pct(*original_top1).c_str());
    bool any_training = false;
    for (const auto& cfg : configs) any_training = any_training || cfg.uses_data();
    if (!any_training) {
      std::printf("\nbudget: no attacker data, no training (pruning only)\n\n");
    } else {
      std::string epochs_text = std::to_string(epochs >= 0 ? epochs : 2) + " epoch(s)";
      if (all) epochs_text += " (prune: " + std::to_string(prune_epochs) + ")";
      std::printf("\nbudget: %s, lr %s %s, batch %lld, weight decay %s; %d trial(s), seed %llu\n\n",
                  epochs_text.c_str(), fixed(topts.lr, 4).c_str(), topts.schedule.c_str(),
                  static_cast<long long>(topts.batch_size), fixed(topts.weight_decay, 5).c_str(),
                  trials, static_cast<unsigned long long>(seed));
    }
    std::printf("%s", report_table(reports).c_str());
    if (!traced_note.empty()) std::printf("note: %s\n", traced_note.c_str());
    std::printf(
        "\nrecovered = after attack - locked; vs scratch = after attack - scratch, paired by trial "
        "(same data);\n"
        "mean ± sample sd over trials, accuracies in %% top-1\n");
    for (const auto& d : report_details(reports)) std::printf("%s\n", d.c_str());
    const std::string summary = advantage_summary(reports);  // empty unless scratch ran
    if (!summary.empty()) std::printf("\n%s", summary.c_str());
    return 0;
  }
};

}  // namespace

std::unique_ptr<Command> make_attack() { return std::make_unique<Attack>(); }

}  // namespace corelocker::cli
