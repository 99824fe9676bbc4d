#include "train/training_run.h"

#include <chrono>
#include <cstdio>

#include "data/dataset.h"
#include "distributed/agreement.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {

std::string optimizer_state_path(const std::string& checkpoint) { return checkpoint + ".optim"; }

namespace {

// Optimizer state (momentum buffers) and the random generator's state, beside the checkpoint.
void save_optimizer(const std::string& path, torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  archive.write("rng_state", rng_state(), /*is_buffer=*/true);
  PendingFile pending(path);
  try {
    archive.save_to(pending.temp_path());
  } catch (const c10::Error& e) {
    throw IoError("cannot write optimizer state '" + path + "': " + e.what_without_backtrace());
  }
  pending.commit();
}

void load_optimizer(const std::string& path, torch::optim::Optimizer& optimizer) {
  if (!file_exists(path)) {
    throw IoError("cannot resume: optimizer state '" + path +
                  "' not found (written beside the checkpoint after every epoch)");
  }
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    optimizer.load(archive);
    torch::Tensor rng;
    archive.read("rng_state", rng, /*is_buffer=*/true);
    set_rng_state(rng);
  } catch (const c10::Error& e) {
    throw FormatError("optimizer state '" + path + "': unreadable (" + e.what_without_backtrace() +
                      ")");
  }
}

// The training options a checkpoint was written with, so that a resumed run goes on with them.
TrainOptions recorded_options(const nlohmann::json& j, const std::string& path) {
  try {
    TrainOptions o;
    o.epochs = j.at("epochs").get<int>();
    o.batch_size = j.at("batch_size").get<int64_t>();
    o.lr = j.at("lr").get<double>();
    o.momentum = j.at("momentum").get<double>();
    o.optimizer = j.value("optimizer", "sgd");  // records before Adam existed are SGD
    o.weight_decay = j.at("weight_decay").get<double>();
    o.schedule = j.at("schedule").get<std::string>();
    o.seed = j.at("seed").get<uint64_t>();
    o.augment = j.at("augment").get<bool>();
    o.flip = j.value("flip", false);
    o.start_epoch = j.at("epochs_done").get<int>();
    return o;
  } catch (const nlohmann::json::exception& e) {
    throw FormatError("cannot resume from '" + path + "': its training record lacks " + e.what());
  }
}

// Checks that every rank of a group trains the same model on the same data the same way.
void agree_on_run(Collective& group, const LoadedModel& model, const nlohmann::json& summary,
                  const Dataset& data) {
  nlohmann::json run = summary;
  run.erase("seconds");
  run["arch"] = model.meta.arch;
  run["arch_options"] = model.meta.options;
  group.agree("training options", run.dump());
  agree_on_data(group, "training data", data);
  agree_on_model(group, "initial weights (fingerprint)", model);
}

}  // namespace

LoadedModel run_training(const TrainingRun& a, const TrainingRunHooks& run_hooks,
                         nlohmann::json& summary_out) {
  const bool writer = a.collective == nullptr || a.collective->rank() == 0;
  LoadedModel model;
  TrainOptions opts = a.opts;
  int64_t train_subset = a.train_subset;
  nlohmann::json summary;
  if (a.resume) {
    if (a.checkpoint.empty())
      throw UsageError("--resume needs the checkpoint to go on from (--out)");
    model = load_model(a.checkpoint);
    summary = nlohmann::json::parse(model.meta.training_json, nullptr, /*allow_exceptions=*/false);
    if (summary.is_object() && !summary.contains("epochs_done") &&
        summary.contains("final_train_loss")) {
      throw UsageError("'" + a.checkpoint + "' has finished all " +
                       std::to_string(summary.value("epochs", 0)) + " epochs; nothing to resume");
    }
    if (!summary.is_object() || !summary.contains("epochs_done")) {
      throw UsageError("cannot resume from '" + a.checkpoint +
                       "': it is not a checkpoint of an unfinished training run");
    }
    opts = recorded_options(summary, a.checkpoint);
    train_subset = summary.value("train_subset", int64_t{0});
    if (opts.start_epoch >= opts.epochs) {
      throw UsageError("'" + a.checkpoint + "' has finished all " + std::to_string(opts.epochs) +
                       " epochs; nothing to resume");
    }
  } else {
    ModelMeta meta = new_model_meta(a.arch, a.dataset, a.arch_options);
    opts.flip = opts.augment && (a.flip || dataset_info(a.dataset).flip);
    torch::manual_seed(opts.seed);
    model = create_model(meta);
    summary = {{"epochs", opts.epochs},
               {"batch_size", opts.batch_size},
               {"lr", opts.lr},
               {"schedule", opts.schedule},
               {"seed", opts.seed},
               {"augment", opts.augment},
               {"flip", opts.flip},
               {"weight_decay", opts.weight_decay},
               {"momentum", opts.momentum},
               {"optimizer", opts.optimizer},
               {"train_subset", train_subset}};
  }
  if (opts.epochs > opts.start_epoch) {
    Dataset train_data = load_dataset(model.meta.dataset, a.data_dir, Split::kTrain);
    train_data = subset(train_data, train_subset, opts.seed);
    summary["train_images"] = train_data.size();
    if (a.collective != nullptr && a.collective->size() > 1)
      agree_on_run(*a.collective, model, summary, train_data);
    const double seconds_before = summary.value("seconds", 0.0);
    if (opts.start_epoch > 0 && run_hooks.on_resume)
      run_hooks.on_resume(opts.start_epoch + 1, opts.epochs);
    TrainHooks hooks;
    hooks.on_progress = run_hooks.on_progress;
    hooks.keep_going = run_hooks.keep_going;
    hooks.collective = a.collective;
    const auto start = std::chrono::steady_clock::now();
    if (!a.checkpoint.empty()) {
      if (opts.start_epoch > 0)
        hooks.restore = [&](torch::optim::Optimizer& o) {
          load_optimizer(optimizer_state_path(a.checkpoint), o);
        };
      if (writer)
        hooks.on_epoch_end = [&](int epoch, torch::optim::Optimizer& o) {
          summary["epochs_done"] = epoch;
          summary["seconds"] =
              seconds_before +
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          model.meta.training_json = summary.dump();
          // Optimizer state first: a checkpoint on disk always has the state that goes with it.
          save_optimizer(optimizer_state_path(a.checkpoint), o);
          save_model(a.checkpoint, model);
        };
    }
    const TrainSummary s = train(*model.net, train_data, model.meta.preprocess, opts, hooks);
    if (s.epochs < opts.epochs) {
      summary["interrupted"] = true;
      summary_out = summary;
      if (writer && !a.checkpoint.empty() && s.epochs > opts.start_epoch)
        return load_model(a.checkpoint);
      return model;
    }
    summary.erase("epochs_done");
    summary["seconds"] = seconds_before + s.seconds;
    summary["final_train_loss"] = s.final_loss;
    summary["final_train_accuracy"] = s.final_train_accuracy;
    if (a.collective != nullptr && a.collective->size() > 1) {
      // This call's, for a resumed run: how the last stretch ran.
      summary["ranks"] = a.collective->size();
      summary["sync_seconds"] = s.sync_seconds;
    }
    if (writer && !a.checkpoint.empty()) std::remove(optimizer_state_path(a.checkpoint).c_str());
  }
  model.meta.training_json = summary.dump();
  summary_out = summary;
  return model;
}

}  // namespace corelocker
