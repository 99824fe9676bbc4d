// Real behaviour on real data: a network trained on Fashion-MNIST loses its accuracy when
// locked, keeps it under random extraction of the same amount, and gets it back bit for bit.
#include <gtest/gtest.h>

#include "eval/evaluate.h"
#include "locking/lock.h"
#include "test_support.h"

namespace corelocker {
namespace {

class EndToEnd : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = testing::trained_resnet();
    test_ = testing::fmnist_test(2000);
    original_ = evaluate(*model_.net, test_, model_.meta.preprocess);
  }
  EvalResult locked_accuracy(LockOptions o) {
    LoadedModel m = testing::clone(model_);
    lock_model(m, o);
    return evaluate(*m.net, test_, m.meta.preprocess);
  }
  LoadedModel model_;
  Dataset test_;
  EvalResult original_;
};

TEST_F(EndToEnd, TrainedModelIsUseful) {
  EXPECT_GE(original_.top1, 75.0);
  EXPECT_GE(original_.top3, 95.0);
}

TEST_F(EndToEnd, L1LockFallsToGuessingWhileRandomKeepsUtility) {
  LockOptions l1;
  l1.ratio = 0.05;
  EXPECT_LE(locked_accuracy(l1).top1, 20.0) << "original " << original_.top1;
  LockOptions r = l1;
  r.criterion = Criterion::kRandom;
  double sum = 0;
  for (uint64_t seed = 0; seed < 3; ++seed) {
    r.seed = seed;
    const double top1 = locked_accuracy(r).top1;
    EXPECT_GE(top1, 45.0) << "seed " << seed;
    sum += top1;
  }
  EXPECT_GE(sum / 3, original_.top1 - 20.0);
}

TEST_F(EndToEnd, BnLockFallsToGuessing) {
  LockOptions bn;
  bn.criterion = Criterion::kBn;
  bn.scope = Scope::kGlobal;
  bn.ratio = 0.05;
  EXPECT_LE(locked_accuracy(bn).top1, 20.0) << "original " << original_.top1;
}

TEST_F(EndToEnd, UnlockRestoresAccuracyAndFingerprint) {
  const Digest before = model_fingerprint(model_);
  LockOptions o;
  o.ratio = 0.05;
  LockOutcome out = lock_model(model_, o);
  unlock_model(model_, out.key);
  EXPECT_EQ(model_fingerprint(model_), before);
  const EvalResult back = evaluate(*model_.net, test_, model_.meta.preprocess);
  EXPECT_EQ(back.top1, original_.top1);
  EXPECT_EQ(back.top3, original_.top3);
}

TEST_F(EndToEnd, IdealUnusableNetworkGuesses) {
  LoadedModel zero = testing::clone(model_);
  zero_weights(zero);
  // f^0 predicts one class for every input: 1/N on a balanced test set (this subset is close).
  EXPECT_LE(evaluate(*zero.net, test_, zero.meta.preprocess).top1, 15.0);
}

}  // namespace
}  // namespace corelocker
