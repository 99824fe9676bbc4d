// Real behaviour on real data: a network trained on Fashion-MNIST loses its accuracy when
// locked, keeps it under random extraction of the same amount, and gets it back bit for bit.
#include <gtest/gtest.h>

#include "eval/evaluate.h"
#include "locking/lock.h"
#include "test_support.h"

namespace corelocker::end_to_end_test {
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
  LockOptions l1;  // the paper's l1 lock: per layer, first and last layers left alone
  l1.ratio = 0.05;
  const double locked = locked_accuracy(l1).top1;
  EXPECT_LE(locked, 20.0) << "original " << original_.top1;
  LockOptions r = l1;
  r.criterion = Criterion::kRandom;
  double sum = 0;
  for (uint64_t seed = 0; seed < 3; ++seed) {
    r.seed = seed;
    const double top1 = locked_accuracy(r).top1;
    EXPECT_GE(top1, 45.0) << "seed " << seed;
    sum += top1;
  }
  // The paper's well-trained networks lose a few points to random extraction; this fixture
  // (2 epochs on 12,000 images, 79.9%) loses about 24 of them at 5% (mean 56.0 over these
  // seeds), where l1 takes it to chance. Held here: random extraction of the same amount costs
  // less than half of what l1 extraction costs.
  EXPECT_GE(sum / 3, locked + 0.5 * (original_.top1 - locked))
      << "original " << original_.top1 << ", l1 " << locked;
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
}  // namespace corelocker::end_to_end_test
