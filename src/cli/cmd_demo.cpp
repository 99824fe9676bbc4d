// `demo`: the README's main job.
#include <csignal>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/progress.h"
#include "data/dataset.h"
#include "eval/evaluate.h"
#include "keyfile/key_file.h"
#include "locking/fingerprint.h"
#include "locking/lock.h"
#include "models/checkpoint.h"
#include "train/trainer.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::cli {

// ---------------------------------------------------------------- demo (the README's main job)
namespace {

struct Demo : Command {
  TrainArgs a;
  Common common;
  std::string workdir = "runs/demo";
  double ratio = 0.05;
  int seeds = 5;
  bool retrain = false;
  EffectiveArgs effective;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand("demo",
                                 "Train (or reuse) resnet20 on Fashion-MNIST, lock with the "
                                 "default lock and the paper's l1 / bn / random, "
                                 "unlock, print one table");
    add_train_args(c, a);
    add_effective_args(c, effective);
    add_threads(c, common);
    add_data(c, common);
    c->add_option("--workdir", workdir, "Folder for the checkpoint, locked models and keys")
        ->capture_default_str();
    c->add_option("--ratio", ratio, "Extraction ratio")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 1.0));
    c->add_option("--seeds", seeds, "Seeds for the random baseline")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    c->add_flag("--retrain", retrain, "Train even when a cached checkpoint exists");
    return c;
  }

  int run() override {
    apply_threads(common);
    if (std::system(("mkdir -p '" + workdir + "'").c_str()) != 0)
      throw IoError("cannot create '" + workdir + "'");
    const std::string ckpt = workdir + "/" + a.arch + ".ckpt";
    if (retrain || !file_exists(ckpt)) {
      std::printf("training %s on %s for %d epochs -> %s\n", a.arch.c_str(), a.dataset.c_str(),
                  a.opts.epochs, ckpt.c_str());
      std::fflush(stdout);
      Json summary;
      LoadedModel m = train_model(a, common, summary);
      if (summary.value("interrupted", false))
        throw Error("training interrupted (Ctrl-C); nothing written");
      save_model(ckpt, m);
      if (summary.contains("seconds"))
        std::printf("trained in %s\n", format_duration(summary["seconds"].get<double>()).c_str());
    } else {
      std::printf("reusing cached checkpoint %s (--retrain to train again)\n", ckpt.c_str());
    }
    LoadedModel original = load_model(ckpt);
    const Digest original_fp = model_fingerprint(original);
    Dataset test = test_set(original.meta, common);
    const Dataset unlabelled = effective_images(original.meta, common, effective);
    struct Row {
      Row(std::string n, EvalResult e) : name(std::move(n)), r(e) {}
      std::string name;
      EvalResult r;
      std::string reestimated = "-", effective = "-", key_bytes = "-", extracted = "-", spread;
    };
    std::vector<Row> rows;
    rows.emplace_back("original", evaluate(*original.net, test, original.meta.preprocess));

    // The default lock first, then the paper's criteria with the paper's scopes, so that the
    // table shows why the default is not the paper's l1.
    struct Variant {
      std::string name, file;
      UnitChoice units;
    };
    const std::vector<Variant> variants = {
        {"default (l1 global, io)", "default", default_units()},
        {"paper l1 (layer)", "l1", resolve_units("l1", "", false, false)},
        {"paper bn (global)", "bn", resolve_units("bn", "", false, false)},
    };
    std::vector<std::pair<std::string, std::string>> locked_files;
    for (const auto& v : variants) {
      LockOptions o = lock_options_for(v.units, ratio);
      LoadedModel m = load_model(ckpt);
      LockOutcome out = lock_model(m, o);
      const std::string locked_path = workdir + "/locked-" + v.file + ".ckpt",
                        key_path = workdir + "/key-" + v.file + ".clk";
      const uint64_t bytes = write_key_file(key_path, out.key);
      save_model(locked_path, m);
      locked_files.push_back({locked_path, key_path});
      Progress line;
      line.update("locked " + v.file + ": plain, BatchNorm re-estimation, pruning ...");
      const EffectiveEval e = evaluate_effective(m, test, unlabelled, effective.options());
      line.finish("");
      Row row("locked " + v.name, e.plain);
      row.reestimated = e.reestimated ? pct(e.reestimated->top1) : "n/a";
      row.effective = pct(e.top1_effective);
      row.key_bytes = std::to_string(bytes);
      row.extracted = fixed(100.0 * out.stats.param_fraction(), 3) + "%";
      row.spread = "effective from " + e.worst;
      rows.push_back(row);
    }
    {
      Progress line;
      std::vector<double> top1, top3;
      LockStats stats;
      for (int s = 0; s < seeds; ++s) {
        line.update("random baseline: seed " + std::to_string(s + 1) + "/" + std::to_string(seeds));
        // The default lock's units and counts, drawn uniformly.
        UnitChoice units = default_units();
        units.criterion = Criterion::kRandom;
        LockOptions o = lock_options_for(units, ratio);
        o.seed = static_cast<uint64_t>(s);
        LoadedModel m = load_model(ckpt);
        stats = lock_model(m, o).stats;
        EvalResult r = evaluate(*m.net, test, m.meta.preprocess);
        top1.push_back(r.top1);
        top3.push_back(r.top3);
      }
      line.finish("random baseline: " + std::to_string(seeds) + " seeds done");
      auto [m1, sd1] = mean_sd(top1);
      auto [m3, sd3] = mean_sd(top3);
      double lo = *std::min_element(top1.begin(), top1.end()),
             hi = *std::max_element(top1.begin(), top1.end());
      EvalResult mean_result;
      mean_result.top1 = m1;
      mean_result.top3 = m3;
      mean_result.n = test.size();
      Row row("random, default's units (" + std::to_string(seeds) + ")", mean_result);
      row.extracted = fixed(100.0 * stats.param_fraction(), 3) + "%";
      row.spread = "top-1 sd " + fixed(sd1, 2) + ", min " + pct(lo) + ", max " + pct(hi) +
                   "; top-3 sd " + fixed(sd3, 2);
      rows.push_back(row);
    }
    bool all_exact = true;
    for (const auto& [locked_path, key_path] : locked_files) {
      LoadedModel m = load_model(locked_path);
      unlock_model(m, read_key_file(key_path));
      const std::string restored_path =
          locked_path.substr(0, locked_path.size() - 5) + "-restored.ckpt";
      save_model(restored_path, m);
      LoadedModel back = load_model(restored_path);
      const bool exact = model_fingerprint(back) == original_fp;
      all_exact = all_exact && exact;
      Row row("restored from " + key_path.substr(key_path.find_last_of('/') + 1),
              evaluate(*back.net, test, back.meta.preprocess));
      row.spread = exact ? "fingerprint equals original" : "FINGERPRINT DIFFERS";
      rows.push_back(row);
    }
    std::printf("\n%s, %s, %lld test images, extraction ratio %s\n\n", a.arch.c_str(),
                original.meta.dataset.c_str(), static_cast<long long>(test.size()),
                fixed(ratio, 4).c_str());
    std::printf("%-34s %8s %10s %10s %8s %10s %8s  %s\n", "model", "top-1 %", "BN re-est.",
                "effective", "top-3 %", "key bytes", "params", "notes");
    for (const auto& r : rows) {
      std::printf("%-34s %8s %10s %10s %8s %10s %8s  %s\n", r.name.c_str(), pct(r.r.top1).c_str(),
                  r.reestimated.c_str(), r.effective.c_str(), pct(r.r.top3).c_str(),
                  r.key_bytes.c_str(), r.extracted.c_str(), r.spread.c_str());
    }
    std::printf(
        "\nBN re-est.: after re-estimating BatchNorm statistics on %lld unlabelled training "
        "images; effective: "
        "the highest top-1 of plain, re-estimated and pruned (%s)\n",
        static_cast<long long>(unlabelled.size()), "global magnitude pruning at 20% and 40%");
    std::printf("\noriginal fingerprint %s\nrestore bit-exact: %s\n", to_hex(original_fp).c_str(),
                all_exact ? "yes" : "NO");
    return all_exact ? 0 : 1;
  }
};

}  // namespace

std::unique_ptr<Command> make_demo() { return std::make_unique<Demo>(); }

}  // namespace corelocker::cli
