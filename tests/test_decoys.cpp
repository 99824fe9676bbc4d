// Decoys that look like real kernels (locking/decoys.h) and the detectors that try to find them
// (locking/detect.h): restore stays exact, decoys copy nothing, each detector finds what it is
// built to find (zero fill, noise decoys, copied kernels) and stays at chance on the decoys.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "keyfile/key_file.h"
#include "locking/decoys.h"
#include "locking/defaults.h"
#include "locking/detect.h"
#include "locking/fingerprint.h"
#include "locking/lock.h"
#include "test_support.h"
#include "util/error.h"

namespace corelocker::decoys_test {
namespace {

using testing::clone;
using testing::fresh_tiny;
using testing::same_tensors;

LockOptions l1_at(double ratio, Fill fill) {
  LockOptions o;
  o.ratio = ratio;
  o.fill = fill;
  return o;
}

// Locks a copy of `original` with reproducible decoys.
LockOutcome seeded_lock(LoadedModel& m, const LockOptions& o, uint64_t seed) {
  auto tensors = named_tensors(*m.net);
  DecoySearch search;
  search.seed = seed;
  return lock_model(m, rank_units(tensors, m.net->structure(), o), o.ratio, search);
}

// A synthetic conv weight [rows, cols, 3, 3] of smooth kernels (a plane a*x + b*y + c with a
// little noise) and a key that extracts a seeded random 5% of its kernels.
struct Synthetic {
  std::vector<NamedTensor> tensors;
  KeyFile key;
  ExtractionPlan plan;
};

Synthetic smooth_tensor(int64_t rows, int64_t cols, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto opts = torch::TensorOptions(torch::kFloat32);
  auto coef = torch::randn({rows * cols, 3}, gen, opts);
  auto x = torch::tensor({-1.0f, 0.0f, 1.0f}).view({1, 1, 3});
  auto coef_at = [&](int64_t j) { return coef.select(1, j).view({-1, 1, 1}); };
  auto planes = coef_at(0) * x + coef_at(1) * x.transpose(1, 2) + coef_at(2);
  auto w = (planes + 0.05 * torch::randn({rows * cols, 3, 3}, gen, opts))
               .view({rows, cols, 3, 3})
               .contiguous();
  Synthetic s;
  s.tensors.push_back({"conv.weight", w, false});
  const int64_t n = rows * cols, k = n / 20;
  auto picked = std::get<0>(torch::randperm(n, gen, torch::kInt64).narrow(0, 0, k).sort());
  std::vector<int64_t> units(picked.data_ptr<int64_t>(), picked.data_ptr<int64_t>() + k);
  s.plan.entries.push_back({"conv.weight", 9, UnitList(units.begin(), units.end())});
  s.plan.units = k;
  KeyEntry e;
  e.tensor = "conv.weight";
  e.unit_size = 9;
  e.units = UnitList(units.begin(), units.end());
  s.key.entries.push_back(e);
  return s;
}

const DetectorResult& detector(const DetectionReport& r, const std::string& name) {
  const DetectorResult* d = r.detector(name);
  if (d == nullptr) throw std::runtime_error("no detector " + name);
  return *d;
}

// The 8 flips and turns of a 3x3 kernel [3, 3], as rows [8, 9].
torch::Tensor dihedral(const torch::Tensor& k) {
  auto t = k.t();
  return torch::stack({k, k.flip({1}), k.flip({0}), k.flip({0, 1}), t, t.flip({1}), t.flip({0}),
                       t.flip({0, 1})})
      .reshape({8, 9});
}

TEST(Decoys, NewDecoysAndDecoyV1RestoreBitForBitAndLeaveNoZeros) {
  LoadedModel original = fresh_tiny(21);
  for (Fill fill : {Fill::kDecoy, Fill::kDecoyV1}) {
    LoadedModel m = clone(original);
    LockOutcome out = lock_model(m, l1_at(0.1, fill));
    EXPECT_EQ(out.key.header.fill, fill);
    EXPECT_EQ(m.meta.lock->fill, to_string(fill));
    for (const auto& e : out.key.entries) {
      auto units = testing::tensor_of(m, e.tensor).reshape({-1, static_cast<int64_t>(e.unit_size)});
      std::vector<int64_t> idx(e.units.begin(), e.units.end());
      auto picked = units.index_select(0, torch::tensor(idx, torch::kInt64));
      EXPECT_EQ(picked.eq(0).all(1).sum().item<int64_t>(), 0) << e.tensor;
      EXPECT_TRUE(picked.isfinite().all().item<bool>()) << e.tensor;
    }
    // The key's fill code survives a round trip; code 1 reads as decoy-v1 (every older key).
    auto bytes = serialize_key(out.key);
    EXPECT_EQ(parse_key(bytes.data(), bytes.size(), "key").header.fill, fill);
    unlock_model(m, out.key);
    EXPECT_TRUE(same_tensors(m, original));
  }
  EXPECT_EQ(static_cast<int>(Fill::kDecoyV1), 1);
  EXPECT_EQ(parse_fill("decoy-v1"), Fill::kDecoyV1);
  EXPECT_EQ(parse_fill("decoy"), Fill::kDecoy);
  EXPECT_THROW(parse_fill("decoys"), UsageError);
}

TEST(Decoys, SeededFillReplaysAndOtherSeedsDiffer) {
  LoadedModel original = fresh_tiny(22);
  auto run = [&](uint64_t seed) {
    LoadedModel m = clone(original);
    seeded_lock(m, l1_at(0.1, Fill::kDecoy), seed);
    return model_fingerprint(m);
  };
  EXPECT_EQ(run(5), run(5));
  EXPECT_NE(run(5), run(6));
}

TEST(Decoys, CopyNoKernelAndKeepTheTensorsSmoothness) {
  LoadedModel original = testing::trained_resnet();
  LoadedModel m = clone(original);
  LockOutcome out = seeded_lock(m, l1_at(0.05, Fill::kDecoy), 3);
  int64_t checked = 0;
  double decoy_rough = 0.0, real_rough = 0.0;
  for (const auto& e : out.key.entries) {
    auto w = testing::tensor_of(m, e.tensor);
    if (w.dim() != 4 || w.size(2) != 3 || w.size(3) != 3) continue;
    auto k = w.detach().to(torch::kFloat64).reshape({-1, 9});
    auto is_decoy = torch::zeros({k.size(0)}, torch::kBool);
    std::vector<int64_t> idx(e.units.begin(), e.units.end());
    is_decoy.index_fill_(0, torch::tensor(idx, torch::kInt64), true);
    auto decoys = k.index_select(0, torch::tensor(idx, torch::kInt64));
    auto real = k.masked_select(is_decoy.logical_not().unsqueeze(1)).view({-1, 9});
    auto real_unit = real / real.pow(2).sum(1, true).sqrt().clamp_min(1e-30);
    for (int64_t i = 0; i < decoys.size(0); ++i) {
      auto forms = dihedral(decoys[i].view({3, 3}));
      forms = forms / forms.pow(2).sum(1, true).sqrt();
      const double best = forms.mm(real_unit.t()).abs().max().item<double>();
      EXPECT_LT(best, 0.9999) << e.tensor << " decoy " << idx[static_cast<size_t>(i)]
                              << " is a copy of a kernel";
      ++checked;
    }
    decoy_rough += kernel_shape_stats(decoys, 3, 3).roughness.sum().item<double>();
    real_rough +=
        kernel_shape_stats(real, 3, 3).roughness.mean().item<double>() * double(decoys.size(0));
  }
  EXPECT_GT(checked, 100);
  // The decoys are about as smooth as the kernels they sit among (v1 decoys are not).
  EXPECT_NEAR(decoy_rough / real_rough, 1.0, 0.1);
  unlock_model(m, out.key);
  EXPECT_TRUE(same_tensors(m, original));
}

TEST(Decoys, CarryTheFiltersAndChannelsEffects) {
  // Every kernel of filter o is pattern P_o plus noise: a decoy at (o, i) must look like P_o, as
  // a real kernel there would, not like the tensor's average kernel.
  auto gen = at::detail::createCPUGenerator(31);
  auto patterns = torch::randn({48, 1, 9}, gen, torch::kFloat32);
  auto w = (patterns + 0.3 * torch::randn({48, 48, 9}, gen, torch::kFloat32))
               .view({48, 48, 3, 3})
               .contiguous();
  std::vector<NamedTensor> tensors = {{"conv.weight", w, false}};
  ExtractionPlan plan;
  std::vector<int64_t> units;
  for (int64_t o = 0; o < 48; ++o) units.push_back(o * 48 + (o * 7) % 48);
  plan.entries.push_back({"conv.weight", 9, UnitList(units.begin(), units.end())});
  plan.units = static_cast<int64_t>(units.size());
  fill_decoys(tensors, plan, nullptr, Fill::kDecoy, 1);
  auto k = w.reshape({-1, 9}).to(torch::kFloat64);
  double cos_sum = 0.0;
  for (int64_t o = 0; o < 48; ++o) {
    auto d = k[units[static_cast<size_t>(o)]];
    auto p = patterns[o][0].to(torch::kFloat64);
    cos_sum += (d.dot(p) / (d.norm() * p.norm())).item<double>();
  }
  // Real kernels here have cosine about 0.95 with their pattern; a decoy ignoring the filter ~0.
  EXPECT_GT(cos_sum / 48.0, 0.8);
}

TEST(Decoys, ATensorWithTooFewKernelsBorrowsFromItsKernelShapeOrStaysZero) {
  auto gen = at::detail::createCPUGenerator(41);
  auto stem = torch::randn({8, 1, 3, 3}, gen, torch::kFloat32);
  auto body = torch::randn({32, 32, 3, 3}, gen, torch::kFloat32);
  auto odd = torch::randn({4, 2, 5, 5}, gen, torch::kFloat32);
  std::vector<NamedTensor> tensors = {
      {"stem", stem, false}, {"body", body, false}, {"odd", odd, false}};
  ExtractionPlan plan;
  plan.entries.push_back({"stem", 9, {0, 1, 2, 3, 4, 5, 6, 7}});  // the whole stem
  plan.entries.push_back({"odd", 25, {0, 1, 2, 3, 4, 5, 6, 7}});  // the only 5x5 tensor, whole
  auto body_before = body.clone();
  fill_decoys(tensors, plan, nullptr, Fill::kDecoy, 2);
  auto l1 = stem.abs().reshape({8, 9}).sum(1);
  EXPECT_TRUE(l1.gt(0).all().item<bool>()) << "stem decoys modelled on the 3x3 kernels of 'body'";
  EXPECT_TRUE(stem.isfinite().all().item<bool>());
  EXPECT_TRUE(odd.eq(0).all().item<bool>()) << "no 5x5 kernel anywhere: zeros";
  EXPECT_TRUE(body.equal(body_before)) << "donor tensors are not touched";
  EXPECT_THROW(fill_decoys(tensors, plan, nullptr, Fill::kZero, 1), Error);
}

TEST(Decoys, DecoysOfOneFilterAreAsAlikeAsItsKernelsWhereMostAreTaken) {
  // Weak filter patterns under strong noise, and 28 of each filter's 32 kernels extracted: the
  // 4 that stay predict the filter's pattern only in part. Decoys of one filter must still be
  // as alike as the kernels they replace (one draw of the filter's effect, shared), not less
  // (an unshared draw per decoy), or a detector of filter coherence finds them.
  auto gen = at::detail::createCPUGenerator(71);
  const int64_t rows = 128, cols = 32;
  auto patterns = torch::randn({rows, 1, 9}, gen, torch::kFloat32);
  auto w = (patterns + 2.0 * torch::randn({rows, cols, 9}, gen, torch::kFloat32))
               .view({rows, cols, 3, 3})
               .contiguous();
  auto original = w.clone();
  std::vector<int64_t> units;
  for (int64_t o = 0; o < rows; ++o) {
    auto perm = torch::randperm(cols, gen, torch::kInt64);
    for (int64_t j = 0; j < 28; ++j) units.push_back(o * cols + perm[j].item<int64_t>());
  }
  std::sort(units.begin(), units.end());
  std::vector<NamedTensor> tensors = {{"conv.weight", w, false}};
  ExtractionPlan plan;
  plan.entries.push_back({"conv.weight", 9, UnitList(units.begin(), units.end())});
  plan.units = static_cast<int64_t>(units.size());
  fill_decoys(tensors, plan, nullptr, Fill::kDecoy, 2);
  // Mean cosine between two extracted positions of the same filter.
  auto within_filter = [&](const torch::Tensor& weight) {
    auto k = weight.reshape({rows, cols, 9}).to(torch::kFloat64);
    auto u = k / k.norm(2, 2, true);
    double sum = 0.0;
    for (int64_t o = 0; o < rows; ++o) {
      std::vector<int64_t> idx;
      for (int64_t unit : units)
        if (unit / cols == o) idx.push_back(unit % cols);
      auto v = u[o].index_select(0, torch::tensor(idx, torch::kInt64));
      const double n = double(v.size(0));
      sum += (v.sum(0).pow(2).sum().item<double>() - n) / (n * (n - 1));
    }
    return sum / double(rows);
  };
  const double decoys = within_filter(w), replaced = within_filter(original);
  EXPECT_GT(replaced, 0.1) << "the filters' patterns show in their kernels";
  // This build: 0.77 of it (the effects estimated from 4 kernels a filter come out a little
  // weak); the generator before, which drew the unexplained part per decoy: 0.56.
  EXPECT_GT(decoys / replaced, 0.7) << decoys << " against " << replaced;
  EXPECT_LT(decoys / replaced, 1.3) << decoys << " against " << replaced;
}

TEST(Detectors, FindZeroFillEveryOneOfThemLearnedIncluded) {
  LoadedModel original = testing::trained_resnet();
  LoadedModel m = clone(original);
  LockOutcome out = lock_model(m, l1_at(0.05, Fill::kZero));
  DetectOptions o;
  o.learned_locks = 1;
  DetectionReport r = detect_extracted(m, out.key, o);
  ASSERT_NE(r.detector("learned"), nullptr);
  for (const auto& d : r.detectors) {
    EXPECT_GT(d.z(), 10.0) << d.name << ": " << d.hits << " hits of " << d.flagged;
    EXPECT_GE(d.precision(), 0.95) << d.name;
  }
}

TEST(Detectors, RoughnessFindsNoiseDecoysAndTwinFindsCopiedKernels) {
  auto gen = at::detail::createCPUGenerator(51);
  for (const char* kind : {"noise", "copy", "decoy"}) {
    Synthetic s = smooth_tensor(64, 64, 52);
    auto k = s.tensors[0].tensor.view({-1, 9});
    auto l1 = k.abs().sum(1);
    const std::vector<int64_t> units = unit_vector(s.plan.entries[0].units);
    auto remaining = torch::ones({k.size(0)}, torch::kBool);
    remaining.index_fill_(0, torch::tensor(units, torch::kInt64), false);
    auto donors = remaining.nonzero().squeeze(1);
    if (std::string(kind) == "decoy") {
      fill_decoys(s.tensors, s.plan, nullptr, Fill::kDecoy, 3);
    } else {
      for (int64_t u : units) {
        const int64_t donor =
            donors[torch::randint(donors.numel(), {1}, gen, torch::kInt64).item<int64_t>()]
                .item<int64_t>();
        torch::Tensor v;
        if (std::string(kind) == "noise") {
          v = torch::randn({9}, gen, torch::kFloat32);
        } else {  // a flipped, turned, sign-flipped copy of a remaining kernel
          v = -dihedral(
              k[donor].view({3, 3}))[torch::randint(8, {1}, gen, torch::kInt64).item<int64_t>()];
        }
        k[u].copy_(v * (l1[donor] * 1.37 / v.abs().sum()));
      }
    }
    DetectionReport r = detect_extracted(s.tensors, s.key);
    const double rough = detector(r, "roughness").z(), twin = detector(r, "twin").z();
    if (std::string(kind) == "noise") {
      EXPECT_GT(rough, 10.0) << "noise decoys are rough";
    }
    if (std::string(kind) == "copy") {
      EXPECT_GT(twin, 10.0) << "copied decoys have twins";
    }
    if (std::string(kind) == "decoy") {
      EXPECT_LT(rough, 3.0) << "kernel-model decoys are as smooth as the kernels";
      EXPECT_LT(twin, 3.0);
    }
  }
}

TEST(Detectors, NewDecoysStayAtChanceOnATrainedResnet) {
  LoadedModel original = testing::trained_resnet();
  LoadedModel m = clone(original);
  LockOutcome out = seeded_lock(m, l1_at(0.05, Fill::kDecoy), 7);
  DetectOptions o;
  o.learned_locks = 2;
  DetectionReport r = detect_extracted(m, out.key, o);
  ASSERT_NE(r.detector("learned"), nullptr);
  for (const auto& d : r.detectors) {
    if (d.name == "position")
      continue;  // looks only at the neighbours: the criterion, not the fill
    // One seeded lock of this undertrained model (2 epochs on 12,000 images); zero fill and noise
    // or copied decoys give z > 10. A single lock's z varies with the decoy draw (the previous
    // generator's learned detector ranged over 1.0-4.1 across 5 locks of an earlier fixture and
    // reached 4.4 on this one), so 3.5 is a regression bound for this seed, looser than the bar
    // the three-lock measurements in docs/keys.md are held to (3).
    EXPECT_LE(d.z(), 3.5) << d.name << ": " << d.hits << " hits, chance " << d.chance_hits << " +- "
                          << d.chance_sd;
  }
}

TEST(Decoys, ShareTheKernelsCovarianceWhereTheDefaultLockTakesMost) {
  // The default lock takes 55-65% of the first stage's kernels: there the decoys outnumber the
  // kernels they are modelled on, and must match their covariance, not only their mean
  // Mahalanobis distance, or the kernels stand out under the mixture's covariance (the learned
  // detector found the decoys of the generator before at z 4.5-5.6).
  LoadedModel original = testing::trained_resnet();
  LoadedModel m = clone(original);
  LockOptions o = lock_options_for(default_units(), 0.05);
  o.fill = Fill::kDecoy;
  LockOutcome out = seeded_lock(m, o, 7);
  int64_t heavy = 0;
  for (const auto& e : out.key.entries) {
    auto w = testing::tensor_of(m, e.tensor);
    if (w.dim() != 4 || w.size(2) * w.size(3) != 9) continue;
    const int64_t n = w.size(0) * w.size(1), k = static_cast<int64_t>(e.units.size());
    if (k * 10 < n * 3 || k == n) continue;  // 30% or more extracted, some left
    ++heavy;
    auto x = w.detach().to(torch::kFloat64).reshape({n, 9});
    x = x / x.norm(2, 1, true);
    auto c = x - x.mean(0);
    auto maha = (c.mm(torch::linalg_pinv(c.t().mm(c) / double(n))) * c).sum(1);
    auto is_decoy = torch::zeros({n}, torch::kBool);
    std::vector<int64_t> idx(e.units.begin(), e.units.end());
    is_decoy.index_fill_(0, torch::tensor(idx, torch::kInt64), true);
    const double decoy = maha.masked_select(is_decoy).mean().item<double>();
    const double real = maha.masked_select(is_decoy.logical_not()).mean().item<double>();
    // Both average 9 (the rank) when the covariances agree, as here; with the generator before,
    // the kernels averaged 9.4-9.7 and the decoys 8.7.
    EXPECT_NEAR(real - decoy, 0.0, 0.3) << e.tensor << ": kernels " << real << ", decoys " << decoy;
  }
  EXPECT_GE(heavy, 3);
  // The detectors themselves (the learned one takes minutes here) are run on default locks of
  // the quick resnet20 and a PyTorch-trained ResNet-20 in docs/keys.md.
}

TEST(Detectors, TheLearnedDetectorIsSeededAndReplays) {
  LoadedModel original = fresh_tiny(61, 16);
  LoadedModel m = clone(original);
  LockOutcome out = seeded_lock(m, l1_at(0.1, Fill::kDecoy), 1);
  DetectOptions o;
  o.learned_locks = 1;
  o.learned_seed = 4;
  DetectionReport a = detect_extracted(m, out.key, o), b = detect_extracted(m, out.key, o);
  ASSERT_FALSE(a.learned_weights.empty());
  EXPECT_EQ(a.learned_weights.size(), a.learned_features.size() + 1);
  EXPECT_EQ(a.learned_weights, b.learned_weights);
  EXPECT_EQ(detector(a, "learned").hits, detector(b, "learned").hits);
  o.learned_seed = 5;
  EXPECT_NE(detect_extracted(m, out.key, o).learned_weights, a.learned_weights);
  EXPECT_TRUE(model_fingerprint(m) == out.key.header.locked_fingerprint)
      << "detect does not modify the model";
  o.learned_locks = -1;
  EXPECT_THROW(detect_extracted(m, out.key, o), UsageError);
}

}  // namespace
}  // namespace corelocker::decoys_test
