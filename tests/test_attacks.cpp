#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "attacks/attacks.h"
#include "attacks/harness.h"
#include "locking/fingerprint.h"
#include "locking/lock.h"
#include "test_support.h"
#include "util/error.h"

namespace corelocker::attacks_test {
namespace {

using testing::clone;
using testing::fresh_tiny;

using testing::tensor_of;

Dataset small_train(int64_t n, uint64_t seed = 3) {
  return subset(testing::fashion_train(), n, seed);
}

TrainOptions quick(int epochs = 1) {
  TrainOptions o;
  o.epochs = epochs;
  o.batch_size = 64;
  o.lr = 0.05;
  o.seed = 5;
  return o;
}

// conv / linear weight names of a model's structure.
std::vector<std::string> prunable(LoadedModel& m) {
  std::vector<std::string> out;
  for (const auto& l : m.net->structure()) {
    if (l.kind == LayerKind::kConv2d || l.kind == LayerKind::kLinear) out.push_back(l.weight);
  }
  return out;
}

// Every tensor bitwise equal outside `changed` (name -> bool mask of positions allowed to differ).
void expect_equal_outside(LoadedModel& before, LoadedModel& after,
                          const std::map<std::string, torch::Tensor>& changed) {
  auto a = named_tensors(*before.net), b = named_tensors(*after.net);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    auto keep = torch::ones(a[i].tensor.sizes(), torch::kBool);
    auto it = changed.find(a[i].name);
    if (it != changed.end()) keep = it->second.logical_not();
    // Bitwise: compare the raw integer representation of floats.
    auto x = a[i].tensor.is_floating_point() ? a[i].tensor.view(torch::kInt32) : a[i].tensor;
    auto y = b[i].tensor.is_floating_point() ? b[i].tensor.view(torch::kInt32) : b[i].tensor;
    EXPECT_TRUE(x.masked_select(keep).equal(y.masked_select(keep)))
        << a[i].name << " changed outside the allowed positions";
  }
}

// ---------------------------------------------------------------- trainer hooks
TEST(TrainerHooks, ParametersOutsideTheFilterAndMaskedPositionsStayBitForBit) {
  LoadedModel m = fresh_tiny(20);
  LoadedModel before = clone(m);
  TrainOptions o = quick();
  o.trainable = [](const std::string& n) { return n == "fc1.weight" || n == "fc2.bias"; };
  auto mask = torch::zeros({64, 784}, torch::kBool);
  mask.narrow(0, 0, 8).fill_(true);  // only the first 8 rows of fc1 may move
  o.update_masks["fc1.weight"] = mask;
  train(*m.net, small_train(128), m.meta.preprocess, o);
  expect_equal_outside(before, m,
                       {{"fc1.weight", mask},
                        {"fc2.bias", torch::ones({10}, torch::kBool)},
                        // BatchNorm statistics update in ordinary training mode
                        {"bn1.running_mean", torch::ones({8}, torch::kBool)},
                        {"bn1.running_var", torch::ones({8}, torch::kBool)},
                        {"bn1.num_batches_tracked", torch::ones({}, torch::kBool)},
                        {"bn2.running_mean", torch::ones({16}, torch::kBool)},
                        {"bn2.running_var", torch::ones({16}, torch::kBool)},
                        {"bn2.num_batches_tracked", torch::ones({}, torch::kBool)}});
  EXPECT_FALSE(tensor_of(m, "fc1.weight").equal(tensor_of(before, "fc1.weight")));
  EXPECT_FALSE(tensor_of(m, "fc2.bias").equal(tensor_of(before, "fc2.bias")));
  // Every parameter trains again afterwards.
  for (auto& p : m.net->parameters()) EXPECT_TRUE(p.requires_grad());
}

TEST(TrainerHooks, FrozenBatchNormStatisticsDoNotMove) {
  LoadedModel m = fresh_tiny(21);
  LoadedModel before = clone(m);
  TrainOptions o = quick();
  o.freeze_bn_stats = true;
  train(*m.net, small_train(128), m.meta.preprocess, o);
  for (auto& t : named_tensors(*m.net)) {
    if (t.is_buffer) {
      EXPECT_TRUE(t.tensor.equal(tensor_of(before, t.name))) << t.name;
    }
  }
  EXPECT_FALSE(tensor_of(m, "conv2.weight").equal(tensor_of(before, "conv2.weight")));
}

TEST(TrainerHooks, BadMasksAndNothingTrainableAreUsageErrors) {
  LoadedModel m = fresh_tiny(22);
  Dataset data = small_train(32);
  TrainOptions o = quick();
  o.update_masks["fc9.weight"] = torch::ones({1}, torch::kBool);
  EXPECT_THROW(train(*m.net, data, m.meta.preprocess, o), UsageError);
  o.update_masks.clear();
  o.update_masks["fc2.weight"] = torch::ones({10, 63}, torch::kBool);
  EXPECT_THROW(train(*m.net, data, m.meta.preprocess, o), UsageError);
  o.update_masks.clear();
  o.trainable = [](const std::string&) { return false; };
  EXPECT_THROW(train(*m.net, data, m.meta.preprocess, o), UsageError);
}

// ---------------------------------------------------------------- prune
TEST(Prune, RemovesExactlyTheRequestedFractionOfTheSmallestWeights) {
  for (double ratio : {0.2, 0.4}) {
    LoadedModel m = fresh_tiny(1);
    LoadedModel before = clone(m);
    PruneResult r = prune_smallest(m, ratio);
    int64_t n = 0, zeros = 0;
    std::vector<torch::Tensor> pruned_abs, kept_abs;
    for (const auto& name : prunable(m)) {
      auto w = tensor_of(m, name), w0 = tensor_of(before, name).abs();
      n += w.numel();
      zeros += w.eq(0).sum().item<int64_t>();
      pruned_abs.push_back(w0.masked_select(w.eq(0)));
      kept_abs.push_back(w0.masked_select(w.ne(0)));
    }
    EXPECT_EQ(r.candidates, n);
    EXPECT_EQ(r.pruned, std::llround(ratio * double(n)));
    EXPECT_EQ(zeros, r.pruned) << "ratio " << ratio;
    EXPECT_LE(torch::cat(pruned_abs).max().item<float>(), torch::cat(kept_abs).min().item<float>());
    // Biases and BatchNorm are not pruned.
    std::map<std::string, torch::Tensor> allowed;
    for (const auto& name : prunable(m)) allowed[name] = tensor_of(m, name).eq(0);
    expect_equal_outside(before, m, allowed);
  }
}

TEST(Prune, CountIsExactEvenWithTiesAndZerosFromALock) {
  LoadedModel m = testing::locked_tiny(2, 0.1);
  {
    torch::NoGradGuard no_grad;
    tensor_of(m, "conv1.weight").fill_(0.25);  // 72 equal values
  }
  int64_t n = 0;
  for (const auto& name : prunable(m)) n += tensor_of(m, name).numel();
  PruneResult r = prune_smallest(m, 0.3);
  int64_t zeros = 0;
  for (const auto& name : prunable(m)) zeros += tensor_of(m, name).eq(0).sum().item<int64_t>();
  EXPECT_EQ(r.pruned, std::llround(0.3 * double(n)));
  EXPECT_EQ(zeros, r.pruned);  // the lock's zeros are among the smallest
  EXPECT_GT(r.already_zero, 0);
}

TEST(Prune, RejectsRatiosOutsideZeroToOne) {
  LoadedModel m = fresh_tiny();
  EXPECT_THROW(prune_smallest(m, -0.1), UsageError);
  EXPECT_THROW(prune_smallest(m, 1.5), UsageError);
  EXPECT_EQ(prune_smallest(m, 0.0).pruned, 0);
}

TEST(Prune, FineTuningKeepsPrunedWeightsAtZero) {
  LoadedModel m = fresh_tiny(3);
  PruneResult r = prune_smallest(m, 0.3);
  LoadedModel before = clone(m);
  finetune_pruned(m, r, small_train(256), quick());
  for (const auto& [name, kept] : r.kept) {
    auto w = tensor_of(m, name);
    EXPECT_EQ(w.masked_select(kept.logical_not()).abs().max().item<float>(), 0.0f) << name;
    EXPECT_FALSE(w.equal(tensor_of(before, name))) << name << " did not train";
  }
}

// ---------------------------------------------------------------- zero-retrain
TEST(ZeroRetrain, FindsExactlyTheKernelsAndWeightsAnL1LockExtracted) {
  LoadedModel m = fresh_tiny(4);
  LockOptions lo;
  lo.ratio = 0.1;
  LockOutcome out = lock_model(m, lo);
  auto suspects = find_extracted(m);
  ASSERT_EQ(suspects.size(), out.key.entries.size());
  for (const auto& e : out.key.entries) {
    const Suspect* s = nullptr;
    for (const auto& x : suspects) {
      if (x.tensor == e.tensor) s = &x;
    }
    ASSERT_NE(s, nullptr) << e.tensor;
    EXPECT_EQ(s->units, static_cast<int64_t>(e.units.size())) << e.tensor;
    auto expected =
        torch::zeros({s->mask.numel() / static_cast<int64_t>(e.unit_size)}, torch::kBool);
    for (auto u : e.units) expected[static_cast<int64_t>(u)] = true;
    auto got = s->mask.reshape({-1, static_cast<int64_t>(e.unit_size)});
    EXPECT_TRUE(got.all(1).equal(expected)) << e.tensor;
    EXPECT_TRUE(got.any(1).equal(expected)) << e.tensor << ": a unit is partly marked";
  }
}

TEST(ZeroRetrain, FindsBnLockChannelsAndTheirFilters) {
  LoadedModel m = fresh_tiny(5);
  LockOptions lo;
  lo.criterion = Criterion::kBn;
  lo.scope = Scope::kGlobal;
  lo.ratio = 0.25;
  lock_model(m, lo);
  auto suspects = find_extracted(m);
  std::map<std::string, int64_t> units;
  for (const auto& s : suspects) units[s.tensor] = s.units;
  const int64_t gamma_zero = tensor_of(m, "bn2.weight").eq(0).sum().item<int64_t>();
  ASSERT_GT(gamma_zero, 0);
  EXPECT_EQ(units["bn2.weight"], gamma_zero);
  EXPECT_EQ(units["conv2.weight"], gamma_zero * 8);  // whole filters: 8 input kernels each
  EXPECT_EQ(units["conv2.bias"], gamma_zero);        // the filter's bias went into the key too
}

TEST(ZeroRetrain, TrainsOnlyThePositionsItFound) {
  LoadedModel m = testing::locked_tiny(6, 0.1);
  LoadedModel before = clone(m);
  ZeroRetrainResult r = zero_retrain(m, small_train(256), quick());
  ASSERT_FALSE(r.suspects.empty());
  std::map<std::string, torch::Tensor> allowed;
  int64_t positions = 0;
  for (const auto& s : r.suspects) {
    allowed[s.tensor] = s.mask;
    positions += s.mask.sum().item<int64_t>();
    // Re-initialised and trained: (almost) nothing there is zero any more.
    auto w = tensor_of(m, s.tensor).masked_select(s.mask);
    EXPECT_LT(w.eq(0).sum().item<int64_t>(), w.numel() / 100 + 1) << s.tensor;
  }
  EXPECT_EQ(r.positions, positions);
  expect_equal_outside(before, m, allowed);  // includes every BatchNorm running statistic
}

TEST(ZeroRetrain, NothingToFindChangesNothing) {
  LoadedModel m = fresh_tiny(7);
  LoadedModel before = clone(m);
  ZeroRetrainResult r = zero_retrain(m, small_train(64), quick());
  EXPECT_TRUE(r.suspects.empty());
  EXPECT_TRUE(testing::same_tensors(before, m));
}

// ---------------------------------------------------------------- reinit
TEST(Reinit, RedrawsTheSuspectsFromTheTensorsOwnDistributionAndNothingElse) {
  LoadedModel m = testing::locked_tiny(30, 0.1);
  LoadedModel before = clone(m);
  auto suspects = find_extracted(m);
  ASSERT_FALSE(suspects.empty());
  const int64_t positions = redraw_extracted(m, suspects, /*seed=*/9);
  std::map<std::string, torch::Tensor> allowed;
  int64_t expected = 0;
  int compared_moments = 0;
  for (const auto& s : suspects) {
    allowed[s.tensor] = s.mask;
    expected += s.mask.sum().item<int64_t>();
    auto fresh = tensor_of(m, s.tensor).masked_select(s.mask);
    EXPECT_EQ(fresh.eq(0).sum().item<int64_t>(), 0) << s.tensor << ": a position kept its zero";
    if (fresh.numel() < 1000) continue;
    // Large enough to compare moments with the values the lock left in the same tensor.
    ++compared_moments;
    auto others = tensor_of(before, s.tensor).masked_select(s.mask.logical_not());
    const double sd = others.std().item<double>();
    EXPECT_NEAR(fresh.mean().item<double>(), others.mean().item<double>(), 0.1 * sd) << s.tensor;
    EXPECT_NEAR(fresh.std().item<double>(), sd, 0.1 * sd) << s.tensor;
  }
  EXPECT_GT(compared_moments, 0) << "no tensor with enough re-drawn positions to compare";
  EXPECT_EQ(positions, expected);
  expect_equal_outside(before, m, allowed);
}

TEST(Reinit, RedrawsLikeZeroRetrainThenTrainsEveryParameter) {
  LoadedModel locked = testing::locked_tiny(31, 0.1);
  auto suspects = find_extracted(locked);
  ASSERT_FALSE(suspects.empty());
  Dataset data = small_train(256);

  // Without training, both attacks leave the same re-drawn model: the draw is shared.
  LoadedModel a = clone(locked), b = clone(locked);
  TrainOptions none = quick(/*epochs=*/0);
  ReinitResult ra = reinit_finetune(a, data, none);
  ZeroRetrainResult rb = zero_retrain(b, data, none);
  EXPECT_EQ(ra.positions, rb.positions);
  EXPECT_GT(ra.positions, 0);
  EXPECT_TRUE(testing::same_tensors(a, b));
  EXPECT_FALSE(testing::same_tensors(a, locked));

  LoadedModel m = clone(locked);
  ReinitResult r = reinit_finetune(m, data, quick());
  ASSERT_EQ(r.suspects.size(), suspects.size());
  int64_t positions = 0;
  for (size_t i = 0; i < suspects.size(); ++i) {
    EXPECT_EQ(r.suspects[i].tensor, suspects[i].tensor);
    EXPECT_TRUE(r.suspects[i].mask.equal(suspects[i].mask)) << suspects[i].tensor;
    positions += suspects[i].mask.sum().item<int64_t>();
  }
  EXPECT_EQ(r.positions, positions);
  EXPECT_EQ(r.train.epochs, 1);
  // Every parameter trained, not only the suspects, and BatchNorm statistics moved as in
  // ordinary training.
  for (auto& t : named_tensors(*m.net)) {
    EXPECT_FALSE(t.tensor.equal(tensor_of(locked, t.name))) << t.name << " did not change";
    if (t.is_buffer) continue;
    for (const auto& s : suspects) {
      if (s.tensor != t.name || s.mask.all().item<bool>()) continue;
      EXPECT_FALSE(t.tensor.masked_select(s.mask.logical_not())
                       .equal(tensor_of(locked, t.name).masked_select(s.mask.logical_not())))
          << t.name << ": only the suspect positions trained";
    }
  }
}

TEST(Reinit, WithNothingToFindItIsFinetuningBitForBit) {
  LoadedModel start = fresh_tiny(32);
  LoadedModel a = clone(start), b = clone(start);
  Dataset data = small_train(192);
  ReinitResult r = reinit_finetune(a, data, quick());
  finetune(b, data, quick());
  EXPECT_TRUE(r.suspects.empty());
  EXPECT_EQ(r.positions, 0);
  EXPECT_EQ(r.train.epochs, 1);
  EXPECT_TRUE(testing::same_tensors(a, b));
  EXPECT_FALSE(testing::same_tensors(a, start)) << "fine-tuning changed nothing";
}

TEST(Reinit, KindParsesPrintsAndRunsRightAfterFinetune) {
  for (AttackKind k : all_attack_kinds()) EXPECT_EQ(parse_attack_kind(to_string(k)), k);
  EXPECT_STREQ(to_string(AttackKind::kReinit), "reinit");
  EXPECT_EQ(parse_attack_kind("reinit"), AttackKind::kReinit);
  const auto kinds = all_attack_kinds();
  ASSERT_EQ(kinds.size(), 6u);
  EXPECT_EQ(kinds[0], AttackKind::kFinetune);
  EXPECT_EQ(kinds[1], AttackKind::kReinit);
  try {
    parse_attack_kind("re-init");
    ADD_FAILURE() << "no UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("reinit"), std::string::npos) << e.what();
  }
  AttackConfig cfg;
  cfg.kind = AttackKind::kReinit;
  EXPECT_EQ(cfg.label(), "reinit + finetune");
  EXPECT_TRUE(cfg.uses_data());
}

TEST(Reinit, HarnessRunsItAndSaysWhatWasReinitialised) {
  LoadedModel locked = testing::locked_tiny(33, 0.1);
  LoadedModel before = clone(locked);
  int64_t kernels = 0, positions = 0;
  for (const auto& s : find_extracted(locked)) {
    positions += s.mask.sum().item<int64_t>();
    if (s.unit == "kernel") kernels += s.units;
  }
  ASSERT_GT(kernels, 0);
  Dataset test = testing::fmnist_test(200);
  AttackConfig cfg;
  cfg.kind = AttackKind::kReinit;
  cfg.train = quick();
  HarnessOptions h;
  h.data_fraction = 0.005;
  h.trials = 1;
  h.seed = 4;
  // The harness trains with the trial's seed on the trial's data: the same as calling it here.
  LoadedModel direct = clone(locked);
  TrainOptions o = quick();
  o.seed = 4;
  reinit_finetune(direct, attacker_data(testing::fashion_train(), 0.005, 4), o);
  std::vector<Digest> prints;
  AttackHooks hooks;
  hooks.on_trial = [&](int, const Dataset&, LoadedModel& m) {
    prints.push_back(model_fingerprint(m));
  };
  AttackReport r =
      run_attack(locked, testing::fashion_train(), test, 10.0, std::nullopt, cfg, h, hooks);
  EXPECT_EQ(r.label, "reinit + finetune");
  ASSERT_EQ(r.trials.size(), 1u);
  ASSERT_EQ(prints.size(), 1u);
  EXPECT_EQ(prints[0], model_fingerprint(direct));
  EXPECT_EQ(r.trials[0].train_images, 300);
  const std::string& d = r.trials[0].detail;
  EXPECT_NE(d.find(std::to_string(positions) + " values re-initialised"), std::string::npos) << d;
  EXPECT_NE(d.find(std::to_string(kernels) + " zero kernels"), std::string::npos) << d;
  EXPECT_NE(d.find("every parameter fine-tuned"), std::string::npos) << d;
  EXPECT_TRUE(testing::same_tensors(before, locked));
  cfg.train.epochs = 0;
  EXPECT_THROW(run_attack(locked, testing::fashion_train(), test, 10.0, std::nullopt, cfg, h),
               UsageError);
}

// ---------------------------------------------------------------- bn-recalibrate
TEST(BnRecalibrate, ChangesOnlyRunningStatisticsToTheDataMean) {
  LoadedModel m = fresh_tiny(8);
  LoadedModel before = clone(m);
  Dataset data = small_train(200);
  TrainOptions o = quick();
  o.batch_size = 500;  // one batch: the running mean is exactly the batch mean
  BnRecalibrateResult r = bn_recalibrate(m, data, o, /*train_affine=*/false);
  EXPECT_EQ(r.layers, 2);
  EXPECT_EQ(r.images, 200);
  auto params = m.net->named_parameters();
  for (auto& t : named_tensors(*m.net)) {
    const bool stat = t.is_buffer;
    if (!stat)
      EXPECT_TRUE(t.tensor.equal(tensor_of(before, t.name))) << t.name << " changed";
    else
      EXPECT_FALSE(t.tensor.equal(tensor_of(before, t.name))) << t.name << " did not change";
  }
  torch::NoGradGuard no_grad;
  auto x = preprocess_batch(data.images, m.meta.preprocess, /*augment=*/false);
  auto conv1 = torch::conv2d(x, tensor_of(m, "conv1.weight"), tensor_of(m, "conv1.bias"), 1, 1);
  EXPECT_TRUE(torch::allclose(tensor_of(m, "bn1.running_mean"), conv1.mean({0, 2, 3}), 1e-4, 1e-5));
  EXPECT_EQ(tensor_of(m, "bn1.num_batches_tracked").item<int64_t>(), 1);
}

TEST(BnRecalibrate, AffineTrainsOnlyBatchNormParameters) {
  LoadedModel m = fresh_tiny(9);
  LoadedModel before = clone(m);
  bn_recalibrate(m, small_train(256), quick(), /*train_affine=*/true);
  for (auto& t : named_tensors(*m.net)) {
    const bool bn = t.name.rfind("bn", 0) == 0;
    if (bn)
      EXPECT_FALSE(t.tensor.equal(tensor_of(before, t.name))) << t.name << " did not change";
    else
      EXPECT_TRUE(t.tensor.equal(tensor_of(before, t.name))) << t.name << " changed";
  }
}

// ---------------------------------------------------------------- harness
// Synthetic images that carry their split (pixel 0) and their index (pixels 1, 2).
Dataset tagged(int64_t n, uint8_t split_tag) {
  Dataset d;
  d.name = "tagged";
  d.classes = 10;
  d.images = torch::randint(0, 256, {n, 1, 28, 28}, torch::kUInt8);
  auto flat = d.images.view({n, -1});
  for (int64_t i = 0; i < n; ++i) {
    flat[i][0] = split_tag;
    flat[i][1] = static_cast<uint8_t>(i % 256);
    flat[i][2] = static_cast<uint8_t>(i / 256);
  }
  d.labels = torch::randint(0, 10, {n}, torch::kInt64);
  return d;
}

std::set<int64_t> ids(const Dataset& d) {
  std::set<int64_t> s;
  auto flat = d.images.view({d.size(), -1});
  for (int64_t i = 0; i < d.size(); ++i)
    s.insert(flat[i][1].item<int64_t>() + 256 * flat[i][2].item<int64_t>());
  return s;
}

TEST(Harness, EachTrialDrawsItsOwnTrainingSubsetAndNeverTheTestSplit) {
  torch::manual_seed(0);
  Dataset train = tagged(1000, 1), test = tagged(100, 2);
  LoadedModel locked = fresh_tiny(10);
  AttackConfig cfg;
  cfg.kind = AttackKind::kFinetune;
  cfg.train = quick();
  HarnessOptions h;
  h.data_fraction = 0.1;
  h.trials = 3;
  h.seed = 40;
  std::vector<std::set<int64_t>> seen;
  AttackHooks hooks;
  hooks.on_trial = [&](int trial, const Dataset& data, LoadedModel&) {
    EXPECT_EQ(trial, static_cast<int>(seen.size()));
    EXPECT_EQ(data.size(), 100);
    EXPECT_TRUE(data.images.view({data.size(), -1}).select(1, 0).eq(1).all().item<bool>())
        << "non-training image";
    seen.push_back(ids(data));
  };
  AttackReport r = run_attack(locked, train, test, 10.0, std::nullopt, cfg, h, hooks);
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_NE(seen[0], seen[1]);
  EXPECT_NE(seen[1], seen[2]);
  EXPECT_NE(seen[0], seen[2]);
  ASSERT_EQ(r.trials.size(), 3u);
  for (int t = 0; t < 3; ++t) {
    EXPECT_EQ(r.trials[static_cast<size_t>(t)].seed, 40u + static_cast<uint64_t>(t));
    EXPECT_EQ(r.trials[static_cast<size_t>(t)].train_images, 100);
    EXPECT_DOUBLE_EQ(r.trials[static_cast<size_t>(t)].recovered,
                     r.trials[static_cast<size_t>(t)].top1 - 10.0);
  }
  // The same seed gives the same data: attacks of one run are paired by trial.
  EXPECT_EQ(ids(attacker_data(train, 0.1, 41)), seen[1]);
}

TEST(Harness, LeavesTheLockedModelAlone) {
  LoadedModel locked = fresh_tiny(11);
  LoadedModel before = clone(locked);
  AttackConfig cfg;
  cfg.kind = AttackKind::kPrune;
  cfg.train.epochs = 0;
  HarnessOptions h;
  h.trials = 3;
  h.data_fraction = 0.01;
  AttackReport r =
      run_attack(locked, testing::fashion_train(), testing::fmnist_test(200), 10.0, 80.0, cfg, h);
  EXPECT_EQ(r.trials.size(), 1u) << "pruning without fine-tuning uses no data: one trial";
  EXPECT_EQ(r.trials[0].train_images, 0);
  EXPECT_TRUE(testing::same_tensors(before, locked));
}

TEST(Harness, RejectsBadOptions) {
  LoadedModel locked = fresh_tiny(12);
  Dataset test = testing::fmnist_test(50);
  AttackConfig cfg;
  cfg.kind = AttackKind::kFinetune;
  cfg.train = quick();
  HarnessOptions h;
  h.data_fraction = 0.0;
  EXPECT_THROW(run_attack(locked, testing::fashion_train(), test, 10.0, std::nullopt, cfg, h),
               UsageError);
  h.data_fraction = 1.5;
  EXPECT_THROW(run_attack(locked, testing::fashion_train(), test, 10.0, std::nullopt, cfg, h),
               UsageError);
  h.data_fraction = 0.01;
  h.trials = 0;
  EXPECT_THROW(run_attack(locked, testing::fashion_train(), test, 10.0, std::nullopt, cfg, h),
               UsageError);
  h.trials = 1;
  cfg.train.epochs = 0;
  EXPECT_THROW(run_attack(locked, testing::fashion_train(), test, 10.0, std::nullopt, cfg, h),
               UsageError);
  EXPECT_THROW(parse_attack_kind("brute-force"), UsageError);
}

TEST(Scratch, DoesNotReadTheLockedWeights) {
  Dataset test = testing::fmnist_test(200);
  AttackConfig cfg;
  cfg.kind = AttackKind::kScratch;
  cfg.train = quick();
  HarnessOptions h;
  h.data_fraction = 0.005;
  h.trials = 2;
  std::vector<Digest> prints;
  AttackHooks hooks;
  hooks.on_trial = [&](int, const Dataset&, LoadedModel& m) {
    prints.push_back(model_fingerprint(m));
  };
  LoadedModel a = fresh_tiny(13);
  AttackReport ra =
      run_attack(a, testing::fashion_train(), test, 10.0, std::nullopt, cfg, h, hooks);
  // A "locked model" whose every value is NaN: reading any of it would poison the result.
  LoadedModel poisoned = fresh_tiny(14);
  {
    torch::NoGradGuard no_grad;
    for (auto& t : named_tensors(*poisoned.net)) {
      if (t.tensor.is_floating_point()) t.tensor.fill_(std::nan(""));
    }
  }
  AttackReport rb =
      run_attack(poisoned, testing::fashion_train(), test, 10.0, std::nullopt, cfg, h, hooks);
  ASSERT_EQ(prints.size(), 4u);
  EXPECT_EQ(prints[0], prints[2]);
  EXPECT_EQ(prints[1], prints[3]);
  EXPECT_NE(prints[0], prints[1]) << "trials should start from different initialisations";
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(ra.trials[i].top1, rb.trials[i].top1);
    EXPECT_TRUE(std::isfinite(rb.trials[i].top1));
  }
}

TEST(Report, AdvantageIsPairedByTrialAndTheTableHasEveryRow) {
  auto make = [](AttackKind k, std::vector<double> top1) {
    AttackReport r;
    r.config.kind = k;
    r.config.train.epochs = 1;
    r.label = r.config.label();
    r.options.data_fraction = 0.05;
    for (size_t i = 0; i < top1.size(); ++i)
      r.trials.push_back({static_cast<int>(i), i, 3000, top1[i], top1[i] - 10, 1.0, ""});
    r.mean_top1 = (top1[0] + top1[1] + top1[2]) / 3;
    return r;
  };
  AttackReport scratch = make(AttackKind::kScratch, {50, 60, 70});
  AttackReport ft = make(AttackKind::kFinetune, {55, 62, 79});  // +5, +2, +9
  compare_to_scratch(ft, scratch);
  ASSERT_TRUE(ft.advantage.has_value());
  EXPECT_DOUBLE_EQ(*ft.advantage, 16.0 / 3.0);
  EXPECT_NEAR(*ft.sd_advantage,
              std::sqrt(((5 - 16.0 / 3) * (5 - 16.0 / 3) + (2 - 16.0 / 3) * (2 - 16.0 / 3) +
                         (9 - 16.0 / 3) * (9 - 16.0 / 3)) /
                        2.0),
              1e-12);
  AttackReport other = ft;
  other.options.data_fraction = 0.1;
  EXPECT_THROW(compare_to_scratch(other, scratch), UsageError);
  const std::string table = report_table({ft, scratch});
  EXPECT_NE(table.find("finetune"), std::string::npos) << table;
  EXPECT_NE(table.find("+5.33 ± 3.51"), std::string::npos) << table;
  // One trial has no spread to show.
  AttackReport single = make(AttackKind::kFinetune, {55, 62, 79});
  single.trials.resize(1);
  AttackReport scratch1 = scratch;
  scratch1.trials.resize(1);
  compare_to_scratch(single, scratch1);
  EXPECT_EQ(single.advantage_pairs, 1);
  EXPECT_EQ(report_table({single}).find("±"), std::string::npos) << report_table({single});
  EXPECT_NE(table.find("(baseline)"), std::string::npos) << table;
  auto j = report_json({ft, scratch});
  EXPECT_EQ(j["attacks"].size(), 2u);
  EXPECT_DOUBLE_EQ(j["attacks"][0]["advantage_over_scratch"].get<double>(), 16.0 / 3.0);
  EXPECT_EQ(j["attacks"][0]["trials"].size(), 3u);
}

// A report as compare_to_scratch leaves it, built by hand.
AttackReport compared(AttackKind k, double fraction, std::optional<double> advantage, double sd,
                      int pairs, double prune_ratio = 0.2) {
  AttackReport r;
  r.config.kind = k;
  r.config.train.epochs = k == AttackKind::kPrune ? 0 : 1;
  r.config.prune_ratio = prune_ratio;
  r.label = r.config.label();
  r.options.data_fraction = fraction;
  r.advantage = advantage;
  if (advantage) r.sd_advantage = sd;
  r.advantage_pairs = pairs;
  return r;
}

TEST(Verdict, OneLinePerAttackThenTheLargestAdvantage) {
  std::vector<AttackReport> reports = {
      compared(AttackKind::kFinetune, 0.05, 27.81, 1.2, 3),
      compared(AttackKind::kReinit, 0.05, 12.5, 0.4, 3),
      compared(AttackKind::kScratch, 0.05, std::nullopt, 0, 0),
      compared(AttackKind::kFinetune, 0.1, 17.5, 0.25, 3),
      compared(AttackKind::kReinit, 0.1, 31.0, 2.0, 3),
      compared(AttackKind::kScratch, 0.1, std::nullopt, 0, 0),
      compared(AttackKind::kPrune, 0.05, -46.4, 6.2, 3),
  };
  const std::string expected =
      "advantage over scratch: finetune (5% data) +27.81 ± 1.20 points\n"
      "advantage over scratch: reinit + finetune (5% data) +12.50 ± 0.40 points\n"
      "advantage over scratch: finetune (10% data) +17.50 ± 0.25 points\n"
      "advantage over scratch: reinit + finetune (10% data) +31.00 ± 2.00 points\n"
      "advantage over scratch: prune 0.20 (no data, vs scratch on 5%) -46.40 ± 6.20 points\n"
      "verdict: the largest advantage over scratch is +31.00 points (reinit + finetune, 10% "
      "data)\n";
  EXPECT_EQ(advantage_summary(reports), expected);
  ASSERT_EQ(best_advantage(reports), &reports[4]);
  auto j = report_json(reports);
  EXPECT_EQ(j["verdict"]["attack"], "reinit + finetune");
  EXPECT_EQ(j["verdict"]["kind"], "reinit");
  EXPECT_DOUBLE_EQ(j["verdict"]["data_fraction"].get<double>(), 0.1);
  EXPECT_DOUBLE_EQ(j["verdict"]["advantage"].get<double>(), 31.0);
  EXPECT_DOUBLE_EQ(j["verdict"]["sd_advantage"].get<double>(), 2.0);
}

TEST(Verdict, SaysSoWhenNoAttackBeatsScratch) {
  std::vector<AttackReport> reports = {
      compared(AttackKind::kFinetune, 0.05, -7.25, 0, 1),
      compared(AttackKind::kReinit, 0.05, -3.1, 0, 1),
      compared(AttackKind::kZeroRetrain, 0.05, 0.0, 0, 1),
      compared(AttackKind::kScratch, 0.05, std::nullopt, 0, 0),
  };
  const std::string expected =
      "advantage over scratch: finetune (5% data) -7.25 points\n"
      "advantage over scratch: reinit + finetune (5% data) -3.10 points\n"
      "advantage over scratch: zero-retrain (5% data) +0.00 points\n"
      "verdict: no attack beats training from scratch (best: +0.00 points, zero-retrain, 5% "
      "data)\n";
  EXPECT_EQ(advantage_summary(reports), expected);
  reports.erase(reports.begin() + 2);
  const std::string summary = advantage_summary(reports);
  EXPECT_NE(summary.find("verdict: no attack beats training from scratch (best: -3.10 points, "
                         "reinit + finetune, 5% data)\n"),
            std::string::npos)
      << summary;
  // Equal advantages: the first one counts.
  reports[0].advantage = -3.1;
  EXPECT_EQ(best_advantage(reports), &reports[0]);
}

TEST(Verdict, NothingWithoutScratch) {
  std::vector<AttackReport> reports = {compared(AttackKind::kFinetune, 0.05, std::nullopt, 0, 0)};
  EXPECT_EQ(advantage_summary(reports), "");
  EXPECT_EQ(best_advantage(reports), nullptr);
  EXPECT_TRUE(report_json(reports)["verdict"].is_null());
}

}  // namespace
}  // namespace corelocker::attacks_test

namespace corelocker::attacks_test {
namespace {

// `attack all`'s plan: every attack in table order, prune once a ratio (with fine-tuning when
// all asks for it), bn-recalibrate with and without the affine parameters; a single prune
// ignores the data.
TEST(AttackPlan, AllAndSingleAttacksGiveTheTableRows) {
  AttackPlanOptions all;
  all.kinds = parse_attack_kinds("all");
  all.all = true;
  all.prune_epochs = 1;
  all.prune_ratios = {0.2, 0.4};
  std::vector<std::string> labels;
  for (const auto& c : attack_plan(all)) {
    labels.push_back(c.label());
    EXPECT_TRUE(c.uses_data()) << c.label();
    EXPECT_EQ(c.train.epochs, c.kind == AttackKind::kPrune ? 1 : 2) << c.label();
  }
  for (const char* want : {"prune 0.20 + finetune", "prune 0.40 + finetune", "bn-recalibrate",
                           "bn-recalibrate + affine", "scratch"}) {
    EXPECT_NE(std::find(labels.begin(), labels.end(), want), labels.end()) << want;
  }
  EXPECT_EQ(labels.size(), std::set<std::string>(labels.begin(), labels.end()).size());

  AttackPlanOptions prune;
  prune.kinds = {AttackKind::kPrune};
  const auto one = attack_plan(prune);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].label(), "prune 0.20");
  EXPECT_FALSE(one[0].uses_data());
  prune.kinds = {AttackKind::kBnRecalibrate};
  prune.bn_train_affine = true;
  ASSERT_EQ(attack_plan(prune).size(), 1u);
  EXPECT_EQ(attack_plan(prune)[0].label(), "bn-recalibrate + affine");
}

}  // namespace
}  // namespace corelocker::attacks_test
