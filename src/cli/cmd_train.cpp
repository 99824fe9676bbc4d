// `train`, `eval`, `models`.
#include <csignal>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/progress.h"
#include "data/dataset.h"
#include "distributed/group.h"
#include "eval/evaluate.h"
#include "formats/evaluation.h"
#include "keyfile/key_file.h"
#include "locking/fingerprint.h"
#include "locking/lock.h"
#include "models/checkpoint.h"
#include "train/trainer.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::cli {

namespace {

// ---------------------------------------------------------------- train
struct Train : Command {
  TrainArgs a;
  Common common;
  std::string out;
  bool eval_after = true;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand(
        "train",
        "Train a built-in architecture and write a checkpoint (data-parallel when launched by "
        "torchrun, or with WORLD_SIZE > 1: docs/distributed.md)");
    add_train_args(c, a);
    add_threads(c, common);
    add_data(c, common);
    c->add_option("--out", out, "Checkpoint to write (also after every epoch, with OUT.optim)")
        ->required();
    c->add_flag("--resume", a.resume,
                "Go on training from the unfinished checkpoint --out (its options win)");
    c->add_flag("!--no-eval", eval_after, "Skip the test-set evaluation at the end");
    return c;
  }

  int run() override {
    // A group of processes when the environment describes one (torchrun sets it).
    const std::unique_ptr<Group> group = join_group_from_environment();
    const bool rank0 = group == nullptr || group->rank() == 0;
    apply_threads(common, group ? group->config().local_size : 1);
    Json summary;
    a.checkpoint = out;
    LoadedModel model = train_model(a, common, summary, group.get());
    // Rank 0 reports, evaluates and writes; the others have nothing to add.
    if (!rank0) return summary.value("interrupted", false) ? 130 : 0;
    if (summary.value("interrupted", false)) {
      const int done = summary.value("epochs_done", 0);
      if (done > 0) {
        std::printf("interrupted: %s holds epoch %d of %d; `train --out %s --resume` goes on\n",
                    out.c_str(), done, summary.value("epochs", 0), out.c_str());
      } else {
        std::printf("interrupted before the first epoch ended; nothing written\n");
      }
      return 130;
    }
    if (eval_after && summary.contains("train_images")) {
      EvalResult r = evaluate(*model.net, test_set(model.meta, common), model.meta.preprocess);
      summary["test_top1"] = r.top1;
      summary["test_top3"] = r.top3;
      model.meta.training_json = summary.dump();
      std::printf("test accuracy: top-1 %s%%, top-3 %s%% (%lld images)\n", pct(r.top1).c_str(),
                  pct(r.top3).c_str(), static_cast<long long>(r.n));
    }
    save_model(out, model);
    std::printf("wrote %s (%s, %lld parameters", out.c_str(), model.meta.arch.c_str(),
                static_cast<long long>(parameter_count(*model.net)));
    if (summary.contains("seconds"))
      std::printf(", trained %s", format_duration(summary["seconds"].get<double>()).c_str());
    if (summary.contains("ranks")) {
      std::printf(" on %d ranks, %s of it in gradient sums", summary["ranks"].get<int>(),
                  format_duration(summary["sync_seconds"].get<double>()).c_str());
    }
    std::printf(")\n");
    return 0;
  }
};

// ---------------------------------------------------------------- eval
struct Eval : Command {
  std::string model_path;
  std::vector<std::string> key_paths;
  bool json = false;
  Common common;
  KeyAccess access;
  InputArgs input;
  EffectiveArgs effective;

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand("eval", "Top-1 / top-3 accuracy of a model on the test split");
    c->add_option("--model", model_path,
                  "Model checkpoint, TorchScript or ONNX file (original or locked; a locked one "
                  "also gets its effective "
                  "top-1: after BatchNorm re-estimation and pruning)")
        ->required();
    c->add_option("--key", key_paths,
                  "Unlock in memory with this key (repeat for tier keys) before evaluating; "
                  "nothing is written");
    add_key_access(c, access, /*writing=*/false);
    c->add_flag("--json", json, "Print one JSON object");
    add_threads(c, common);
    add_data(c, common);
    add_input_args(c, input);
    add_effective_args(c, effective);
    return c;
  }

  int run() override {
    const ModelFormat& format = model_formats().of(model_path);
    EvaluationJob job;
    job.threads = static_cast<unsigned>(apply_threads(common));
    require_runnable(model_path, Feature::kEvaluate, "eval");
    if (!key_paths.empty()) job.keys = read_keys(key_paths, access);
    job.input_given = input.given();
    job.describe_input = [this](ModelMeta& meta, bool stored, const std::string& path) {
      apply_input_override(input, meta, stored, path);
    };
    job.test = [this](const ModelMeta& meta) { return test_set(meta, common); };
    job.unlabelled = [this](const ModelMeta& meta) {
      return effective_images(meta, common, effective);
    };
    job.effective = effective.options();
    auto extra = [](const std::string& runtime) {
      return runtime.empty() ? Json::object() : Json{{"runtime", runtime}};
    };
    job.on_unlocked = [&](const EvalResult& r, const std::string& runtime) {
      print_eval(model_path, r, json, extra(runtime));
    };
    job.on_locked = [&](const EffectiveEval& e, const std::string& runtime) {
      print_eval(model_path, e, json, extra(runtime));
    };
    format.evaluate(model_path, job);
    return 0;
  }
};

// ---------------------------------------------------------------- models
struct Models : Command {
  std::string dataset = "fashion-mnist";

  CLI::App* add(CLI::App& app) override {
    auto* c = app.add_subcommand("models", "List the built-in architectures with parameter counts");
    c->add_option("--dataset", dataset, "Data set that sets input shape and classes")
        ->capture_default_str();
    return c;
  }

  int run() override {
    const DatasetInfo info = dataset_info(dataset);
    std::printf("on %s (%lldx%lldx%lld, %lld classes), default options:\n", info.name.c_str(),
                static_cast<long long>(info.input.channels),
                static_cast<long long>(info.input.height), static_cast<long long>(info.input.width),
                static_cast<long long>(info.classes));
    for (const auto& a : list_architectures()) {
      LoadedModel m = create_model(new_model_meta(a.name, dataset));
      std::printf("%-10s %10lld parameters  %s\n", a.name.c_str(),
                  static_cast<long long>(parameter_count(*m.net)), a.description.c_str());
      std::string opts;
      for (const auto& o : a.options) {
        opts += "  " + o.name + "=" + std::to_string(o.fallback) + " (" + o.help + ")";
      }
      if (a.pad_to > 0)
        opts +=
            "  [input padded to " + std::to_string(a.pad_to) + "x" + std::to_string(a.pad_to) + "]";
      std::printf("%-10s %10s %s\n", "", "", opts.c_str());
    }
    return 0;
  }
};

}  // namespace

std::unique_ptr<Command> make_train() { return std::make_unique<Train>(); }
std::unique_ptr<Command> make_eval() { return std::make_unique<Eval>(); }
std::unique_ptr<Command> make_models() { return std::make_unique<Models>(); }

}  // namespace corelocker::cli
