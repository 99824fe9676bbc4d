// Training that stops and resumes: the per-epoch hook, the optimizer state, and the promise that
// a resumed run equals an uninterrupted one.
#include <gtest/gtest.h>

#include <sstream>

#include "eval/evaluate.h"
#include "test_support.h"
#include "train/trainer.h"
#include "util/error.h"

namespace corelocker::training_test {
namespace {

TrainOptions small_options(const std::string& optimizer = "sgd") {
  TrainOptions o;
  o.epochs = 3;
  o.batch_size = 64;
  o.lr = optimizer == "adam" ? 0.002 : 0.05;
  o.seed = 4;
  o.optimizer = optimizer;
  return o;
}

void expect_resumed_run_equals_uninterrupted(const std::string& optimizer) {
  torch::set_num_threads(1);  // bitwise reproducible reductions
  Dataset data = testing::fmnist_test(256);
  LoadedModel full = testing::fresh_tiny(1);
  LoadedModel part = testing::clone(full);
  train(*full.net, data, full.meta.preprocess, small_options(optimizer));

  // Stop after epoch 1, keeping the model and optimizer state as a checkpoint would.
  std::ostringstream optim_state;
  torch::Tensor rng;
  LoadedModel saved;
  TrainHooks hooks;
  int epochs_seen = 0;
  hooks.on_epoch_end = [&](int epoch, torch::optim::Optimizer& opt) {
    epochs_seen = epoch;
    torch::serialize::OutputArchive a;
    opt.save(a);
    a.save_to(optim_state);
    rng = rng_state();
    saved = testing::clone(part);
  };
  hooks.keep_going = [&] { return epochs_seen < 1; };
  TrainSummary s = train(*part.net, data, part.meta.preprocess, small_options(optimizer), hooks);
  EXPECT_EQ(s.epochs, 1);
  ASSERT_TRUE(saved.net);

  TrainOptions resume = small_options(optimizer);
  resume.start_epoch = 1;
  TrainHooks restore;
  restore.restore = [&](torch::optim::Optimizer& opt) {
    std::istringstream in(optim_state.str());
    torch::serialize::InputArchive a;
    a.load_from(in);
    opt.load(a);
    set_rng_state(rng);
  };
  std::vector<int> epochs;
  restore.on_epoch_end = [&](int epoch, torch::optim::Optimizer&) { epochs.push_back(epoch); };
  s = train(*saved.net, data, saved.meta.preprocess, resume, restore);
  EXPECT_EQ(s.epochs, 3);
  EXPECT_EQ(epochs, (std::vector<int>{2, 3}));
  EXPECT_TRUE(testing::same_tensors(saved, full));
}

TEST(Training, ResumedRunEqualsAnUninterruptedOne) {
  expect_resumed_run_equals_uninterrupted("sgd");
}

// Adam keeps two moments per parameter: they must travel with the optimizer state too.
TEST(Training, ResumedAdamRunEqualsAnUninterruptedOne) {
  expect_resumed_run_equals_uninterrupted("adam");
}

TEST(Training, AdamLearnsAndAnUnknownOptimizerIsAUsageError) {
  Dataset data = testing::fmnist_test(512);
  LoadedModel m = testing::fresh_tiny(3);
  TrainOptions o = small_options("adam");
  o.epochs = 4;
  o.lr = 0.01;
  TrainSummary s = train(*m.net, data, m.meta.preprocess, o);
  const EvalResult e = evaluate(*m.net, data, m.meta.preprocess);
  std::printf("adam: final loss %.3f, top-1 on its training images %.2f%%\n", s.final_loss, e.top1);
  EXPECT_LT(s.final_loss, 1.5);  // ln 10 = 2.30 at the start
  EXPECT_GT(e.top1, 50.0);       // 10 classes: chance is 10%
  o.optimizer = "rmsprop";
  EXPECT_THROW(train(*m.net, data, m.meta.preprocess, o), UsageError);
}

TEST(Training, GarbageGeneratorStateIsRefused) {
  EXPECT_THROW(set_rng_state(torch::zeros({3}, torch::kUInt8)), Error);
}

TEST(Training, StopInsideAnEpochReportsTheEpochsCompleted) {
  Dataset data = testing::fmnist_test(256);
  LoadedModel m = testing::fresh_tiny(2);
  int steps = 0;
  TrainHooks hooks;
  hooks.on_progress = [&](const TrainProgress&) { ++steps; };
  hooks.keep_going = [&] { return steps < 6; };  // 4 steps per epoch
  bool epoch_end_called = false;
  hooks.on_epoch_end = [&](int, torch::optim::Optimizer&) { epoch_end_called = true; };
  TrainSummary s = train(*m.net, data, m.meta.preprocess, small_options(), hooks);
  EXPECT_EQ(s.epochs, 1);
  EXPECT_EQ(steps, 6);
  EXPECT_TRUE(epoch_end_called);
}

TEST(Training, StartEpochOutOfRangeIsAUsageError) {
  Dataset data = testing::fmnist_test(64);
  LoadedModel m = testing::fresh_tiny();
  TrainOptions o = small_options();
  o.start_epoch = 4;
  EXPECT_THROW(train(*m.net, data, m.meta.preprocess, o), UsageError);
}

}  // namespace
}  // namespace corelocker::training_test
