#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "locking/fingerprint.h"
#include "locking/lock.h"
#include "test_support.h"
#include "util/error.h"

namespace corelocker::locking_test {
namespace {

using testing::clone;
using testing::fresh_tiny;
using testing::same_tensors;

torch::Tensor tensor_of(LoadedModel& m, const std::string& name) {
  for (auto& t : named_tensors(*m.net)) {
    if (t.name == name) return t.tensor;
  }
  throw std::runtime_error("no tensor " + name);
}

const PlanEntry* entry_of(const ExtractionPlan& plan, const std::string& name) {
  for (const auto& e : plan.entries) {
    if (e.tensor == name) return &e;
  }
  return nullptr;
}

ExtractionPlan plan_for(LoadedModel& m, LockOptions o) {
  auto tensors = named_tensors(*m.net);
  return plan_at(rank_units(tensors, m.net->structure(), o), tensors, m.net->structure(), o.ratio);
}

// tinycnn width 8 on 28x28: conv1 1->8 (8 kernels), bn1 (8), conv2 8->16 (128 kernels), bn2 (16),
// fc1 784->64 (50176 weights), fc2 64->10.
TEST(Selection, L1LayerScopeTakesTheSameFractionOfEachEligibleLayer) {
  LoadedModel m = fresh_tiny();
  LockOptions o;
  o.ratio = 0.1;
  ExtractionPlan plan = plan_for(m, o);
  ASSERT_EQ(plan.entries.size(), 2u);
  const PlanEntry* conv2 = entry_of(plan, "conv2.weight");
  const PlanEntry* fc1 = entry_of(plan, "fc1.weight");
  ASSERT_TRUE(conv2 && fc1);
  EXPECT_EQ(conv2->unit_size, 9);
  EXPECT_EQ(conv2->units.size(), 13u);  // round(0.1 * 128)
  EXPECT_EQ(fc1->unit_size, 1);
  EXPECT_EQ(fc1->units.size(), 5018u);  // round(0.1 * 50176)
  EXPECT_EQ(plan.units, 13 + 5018);
}

TEST(Selection, L1PicksTheKernelsWithTheLargestL1Norm) {
  LoadedModel m = fresh_tiny();
  LockOptions o;
  o.ratio = 0.1;
  ExtractionPlan plan = plan_for(m, o);
  auto norms = tensor_of(m, "conv2.weight").abs().reshape({128, 9}).sum(1);
  auto selected = torch::zeros({128}, torch::kBool);
  for (auto u : entry_of(plan, "conv2.weight")->units) selected[u] = true;
  EXPECT_GE(norms.masked_select(selected).min().item<float>(),
            norms.masked_select(~selected).max().item<float>());
}

TEST(Selection, GlobalScopeUsesOneThresholdAcrossLayers) {
  LoadedModel m = fresh_tiny();
  LockOptions o;
  o.scope = Scope::kGlobal;
  o.include_io = true;
  o.ratio = 0.2;
  ExtractionPlan plan = plan_for(m, o);
  // conv kernels of conv1 (8) and conv2 (128) compete together: round(0.2 * 136) = 27.
  auto score = [&](const std::string& name, int64_t n) {
    return tensor_of(m, name).abs().reshape({n, 9}).sum(1);
  };
  auto s1 = score("conv1.weight", 8), s2 = score("conv2.weight", 128);
  auto all = torch::cat({s1, s2});
  auto sel = torch::zeros({136}, torch::kBool);
  size_t taken = 0;
  for (const char* name : {"conv1.weight", "conv2.weight"}) {
    if (const PlanEntry* e = entry_of(plan, name)) {
      for (auto u : e->units) sel[(std::string(name) == "conv1.weight" ? 0 : 8) + u] = true;
      taken += e->units.size();
    }
  }
  EXPECT_EQ(taken, 27u);
  EXPECT_GE(all.masked_select(sel).min().item<float>(),
            all.masked_select(~sel).max().item<float>());
}

TEST(Selection, BnTakesGammaBetaAndOnlyEligibleProducingFilters) {
  LoadedModel m = fresh_tiny();
  LockOptions o;
  o.criterion = Criterion::kBn;
  o.scope = Scope::kGlobal;
  o.ratio = 0.25;  // 6 of the 24 channels of bn1 + bn2
  ExtractionPlan plan = plan_for(m, o);
  EXPECT_EQ(plan.units, 6);
  EXPECT_EQ(entry_of(plan, "conv1.weight"), nullptr)
      << "conv1 is the first layer: its filters stay";
  auto gammas = torch::cat({tensor_of(m, "bn1.weight"), tensor_of(m, "bn2.weight")}).abs();
  const float sixth = std::get<0>(gammas.sort(0, /*descending=*/true))[5].item<float>();
  size_t bn2_units = 0;
  for (const char* bn : {"bn1", "bn2"}) {
    const PlanEntry* w = entry_of(plan, std::string(bn) + ".weight");
    const PlanEntry* b = entry_of(plan, std::string(bn) + ".bias");
    if (!w) continue;
    ASSERT_TRUE(b);
    EXPECT_EQ(w->units, b->units);
    for (auto u : w->units)
      EXPECT_GE(std::abs(tensor_of(m, std::string(bn) + ".weight")[u].item<float>()), sixth);
    if (std::string(bn) == "bn2") bn2_units = w->units.size();
  }
  const PlanEntry* f = entry_of(plan, "conv2.weight");
  if (bn2_units > 0) {
    ASSERT_TRUE(f);
    EXPECT_EQ(f->unit_size, 8 * 9);  // the whole filter F[c,:,:,:]
    EXPECT_EQ(f->units, entry_of(plan, "bn2.weight")->units);
    EXPECT_EQ(entry_of(plan, "conv2.bias")->units, f->units);
  }
  // Running statistics stay.
  EXPECT_EQ(entry_of(plan, "bn2.running_mean"), nullptr);
}

TEST(Selection, RandomMatchesL1CountsAndDependsOnTheSeed) {
  LoadedModel m = fresh_tiny();
  LockOptions l1;
  l1.ratio = 0.05;
  LockOptions r = l1;
  r.criterion = Criterion::kRandom;
  r.seed = 1;
  ExtractionPlan pl = plan_for(m, l1), p1 = plan_for(m, r), p1b = plan_for(m, r);
  r.seed = 2;
  ExtractionPlan p2 = plan_for(m, r);
  ASSERT_EQ(pl.entries.size(), p1.entries.size());
  for (size_t i = 0; i < pl.entries.size(); ++i) {
    EXPECT_EQ(pl.entries[i].units.size(), entry_of(p1, pl.entries[i].tensor)->units.size());
  }
  EXPECT_EQ(entry_of(p1, "fc1.weight")->units, entry_of(p1b, "fc1.weight")->units);
  EXPECT_NE(entry_of(p1, "fc1.weight")->units, entry_of(p2, "fc1.weight")->units);
  EXPECT_NE(entry_of(p1, "fc1.weight")->units, entry_of(pl, "fc1.weight")->units);
}

TEST(Selection, NoEligibleNormLayersIsAUsageError) {
  LoadedModel m = fresh_tiny();
  auto tensors = named_tensors(*m.net);
  Structure only_linear = {m.net->structure()[4], m.net->structure()[5]};
  LockOptions o;
  o.criterion = Criterion::kBn;
  EXPECT_THROW(rank_units(tensors, only_linear, o), UsageError);
}

// A network given as tensors and structure: kernels of several sizes, dtypes and many ties, a
// conv large enough to be scored in several runs, and norms fed by a conv or a linear layer.
struct SyntheticNet {
  std::vector<NamedTensor> tensors;
  Structure structure;
};
SyntheticNet synthetic_net(bool constant_fc) {
  torch::manual_seed(7);
  SyntheticNet n;
  auto add = [&](const std::string& name, torch::Tensor t) {
    n.tensors.push_back({name, t, false});
  };
  add("c1.weight", torch::randn({16, 3, 3, 3}));
  add("n1.weight", torch::rand({16}));
  add("n1.bias", torch::randn({16}));
  add("c2.weight", torch::randn({300, 256, 3, 3}));
  add("n2.weight", (torch::rand({300}) * 4).round() / 4);
  add("c3.weight", (torch::randn({40, 300, 1, 1}) * 4).round() / 4);
  add("c3.bias", torch::randn({40}));
  add("c4.weight", torch::randn({8, 40, 5, 5}).to(torch::kFloat64));
  add("c5.weight", ((torch::randn({8, 8, 3, 3}) * 2).round() / 2).to(torch::kFloat16));
  add("fc1.weight",  // 150,000 weights: constant, more ties than a group keeps aside
      constant_fc ? torch::full({1000, 150}, 0.5) : (torch::randn({1000, 150}) * 3).round() / 3);
  add("n6.weight", torch::ones({1000}));
  add("fc2.weight", torch::randn({10, 1000}).to(torch::kBFloat16));
  add("fc2.bias", torch::randn({10}));
  n.structure = {{"c1", LayerKind::kConv2d, "c1.weight", "", -1},
                 {"n1", LayerKind::kBatchNorm, "n1.weight", "n1.bias", 0},
                 {"c2", LayerKind::kConv2d, "c2.weight", "", -1},
                 {"n2", LayerKind::kBatchNorm, "n2.weight", "", 2},
                 {"c3", LayerKind::kConv2d, "c3.weight", "c3.bias", -1},
                 {"c4", LayerKind::kConv2d, "c4.weight", "", -1},
                 {"c5", LayerKind::kConv2d, "c5.weight", "", -1},
                 {"fc1", LayerKind::kLinear, "fc1.weight", "", -1},
                 {"n6", LayerKind::kLayerNorm, "n6.weight", "", -1},
                 {"fc2", LayerKind::kLinear, "fc2.weight", "fc2.bias", -1}};
  return n;
}

void expect_same_plan(const ExtractionPlan& a, const ExtractionPlan& b, const std::string& what) {
  EXPECT_EQ(a.units, b.units) << what;
  ASSERT_EQ(a.entries.size(), b.entries.size()) << what;
  for (size_t i = 0; i < a.entries.size(); ++i) {
    EXPECT_EQ(a.entries[i].tensor, b.entries[i].tensor) << what;
    EXPECT_EQ(a.entries[i].unit_size, b.entries[i].unit_size) << what;
    EXPECT_EQ(a.entries[i].units, b.entries[i].units) << what << " entry " << a.entries[i].tensor;
  }
}

// select_units must be plan_at(rank_units(...)) exactly: the same units (ties to the earlier
// unit), the same order of entries, for every criterion, scope and ratio.
TEST(Selection, SelectUnitsIsTheFullRankingsPlan) {
  for (bool constant_fc : {false, true}) {
    SyntheticNet n = synthetic_net(constant_fc);
    for (Criterion c : {Criterion::kL1, Criterion::kBn, Criterion::kRandom}) {
      for (Scope scope : {Scope::kLayer, Scope::kGlobal}) {
        for (bool io : {false, true}) {
          LockOptions o;
          o.criterion = c;
          o.scope = scope;
          o.include_io = io;
          o.seed = 5;
          const Ranking r = rank_units(n.tensors, n.structure, o);  // the same at every ratio
          for (double ratio : {0.0, 0.001, 0.05, 0.3, 0.5, 1.0}) {
            o.ratio = ratio;
            const std::string what = std::string(to_string(c)) + " " + to_string(scope) +
                                     (io ? " io " : " ") + std::to_string(ratio) +
                                     (constant_fc ? " constant" : "");
            const UnitSelection s = select_units(n.tensors, n.structure, o);
            expect_same_plan(plan_at(r, n.tensors, n.structure, ratio), s.plan, what);
            EXPECT_EQ(r.total_units(), s.candidates) << what;
          }
        }
      }
    }
  }
}

TEST(Selection, SelectUnitsWithANanScoreFollowsTheRanking) {
  SyntheticNet n = synthetic_net(false);
  n.tensors[3].tensor[5][7][1][1] = std::nanf("");
  LockOptions o;
  o.scope = Scope::kGlobal;
  o.ratio = 0.2;
  expect_same_plan(plan_at(rank_units(n.tensors, n.structure, o), n.tensors, n.structure, o.ratio),
                   select_units(n.tensors, n.structure, o).plan, "nan");
}

// The lock's single pass that moves units into the key and hashes the locked state gives what
// the separate steps give: the key's values, a zeroed model, both fingerprints.
// --keep: a kept layer gives up nothing, also not the filters a BatchNorm channel would take
// along; both selections agree; a pattern that matches nothing is refused.
TEST(Selection, KeepLeavesTheNamedLayersAlone) {
  LoadedModel m = fresh_tiny();
  auto tensors = named_tensors(*m.net);
  const Structure& s = m.net->structure();
  LockOptions o;
  o.ratio = 0.1;
  o.include_io = true;
  o.keep = {"fc1*"};  // the weight's name
  const ExtractionPlan plan = plan_for(m, o);
  EXPECT_EQ(entry_of(plan, "fc1.weight"), nullptr);
  for (const char* t : {"conv1.weight", "conv2.weight", "fc2.weight"})
    EXPECT_NE(entry_of(plan, t), nullptr) << t;
  expect_same_plan(plan, select_units(tensors, s, o).plan, "keep fc1*");
  EXPECT_EQ(kept_layers(s, o.keep), std::vector<std::string>{"fc1"});

  o.criterion = Criterion::kBn;
  o.include_io = false;
  o.ratio = 1.0;
  o.keep = {"conv2"};  // the layer's name
  const ExtractionPlan bn = plan_for(m, o);
  ASSERT_NE(entry_of(bn, "bn2.weight"), nullptr);
  EXPECT_EQ(entry_of(bn, "bn2.weight")->units.size(), 16u);
  EXPECT_EQ(entry_of(bn, "conv2.weight"), nullptr) << "a kept conv keeps its filters";
  expect_same_plan(bn, select_units(tensors, s, o).plan, "bn keep conv2");

  o.keep = {"bn*"};
  try {
    plan_for(m, o);
    ADD_FAILURE() << "every norm layer kept: nothing to lock";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--keep"), std::string::npos) << e.what();
  }
  o.keep = {"conv2", "nosuch*"};
  try {
    select_units(tensors, s, o);
    ADD_FAILURE() << "a pattern that matches nothing";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("'nosuch*': matches no layer"), std::string::npos)
        << e.what();
  }
}

TEST(Lock, ExtractionHashesWhatItLeaves) {
  SyntheticNet n = synthetic_net(false);
  std::vector<NamedTensor> copy;
  for (const auto& t : n.tensors) copy.push_back({t.name, t.tensor.clone(), false});
  LockOptions o;
  o.scope = Scope::kGlobal;
  o.include_io = true;
  o.ratio = 0.1;
  const ExtractionPlan plan = select_units(n.tensors, n.structure, o).plan;
  const Digest original = fingerprint(n.tensors);
  const KeyFile key = extract_units(n.tensors, plan, o);
  EXPECT_EQ(key.header.original_fingerprint, original);
  EXPECT_EQ(key.header.locked_fingerprint, fingerprint(n.tensors));
  for (size_t i = 0; i < plan.entries.size(); ++i) {
    const auto& e = key.entries[i];
    EXPECT_EQ(e.tensor, plan.entries[i].tensor);
    torch::Tensor before, after;
    for (size_t j = 0; j < copy.size(); ++j) {
      if (copy[j].name == e.tensor) before = copy[j].tensor, after = n.tensors[j].tensor;
    }
    const auto idx = unit_tensor(plan.entries[i].units);
    const auto rows =
        before.view({-1, static_cast<int64_t>(e.unit_size)}).index_select(0, idx).contiguous();
    ASSERT_EQ(e.values.size(), static_cast<size_t>(rows.numel()) * rows.element_size());
    EXPECT_EQ(std::memcmp(e.values.data(), rows.data_ptr(), e.values.size()), 0) << e.tensor;
    EXPECT_TRUE(
        torch::equal(after.view({-1, static_cast<int64_t>(e.unit_size)}).index_select(0, idx),
                     torch::zeros_like(rows)));
  }
  restore_units(n.tensors, key);
  for (size_t j = 0; j < copy.size(); ++j)
    EXPECT_TRUE(torch::equal(copy[j].tensor, n.tensors[j].tensor)) << copy[j].name;
}

// Tied weights (one tensor under two names, as TorchScript lists shared parameters): the
// original's fingerprint sees no zeros, the locked one sees them under both names, and a plan
// naming both keeps the original values in both entries.
TEST(Lock, ExtractionFollowsTiedTensors) {
  torch::manual_seed(3);
  const torch::Tensor w = torch::randn({64, 32, 3, 3});
  const torch::Tensor original = w.clone();
  for (bool both : {false, true}) {
    w.copy_(original);
    std::vector<NamedTensor> tensors = {
        {"a.weight", w, false}, {"b.bias", torch::randn({8}), false}, {"z.weight", w, false}};
    ExtractionPlan plan;
    const std::vector<int64_t> units = {0, 5, 77, 2047};
    plan.entries.push_back({"z.weight", 9, UnitList(units.begin(), units.end())});
    if (both) plan.entries.push_back({"a.weight", 9, UnitList(units.begin(), units.end())});
    plan.units = 4;
    LockOptions o;
    const Digest before = fingerprint(tensors);
    const KeyFile key = extract_units(tensors, plan, o);
    EXPECT_EQ(key.header.original_fingerprint, before);
    EXPECT_EQ(key.header.locked_fingerprint, fingerprint(tensors));
    EXPECT_NE(key.header.locked_fingerprint, before);
    const auto rows = original.view({-1, 9}).index_select(0, torch::tensor(units)).contiguous();
    for (const auto& e : key.entries) {
      ASSERT_EQ(e.values.size(), static_cast<size_t>(rows.numel()) * 4);
      EXPECT_EQ(std::memcmp(e.values.data(), rows.data_ptr(), e.values.size()), 0) << e.tensor;
    }
    restore_units(tensors, key);
    EXPECT_TRUE(torch::equal(w, original));
  }
}

TEST(Lock, FirstAndLastLayerUntouchedByDefault) {
  LoadedModel m = fresh_tiny();
  LoadedModel original = clone(m);
  LockOptions o;
  o.ratio = 0.5;
  lock_model(m, o);
  for (const char* name : {"conv1.weight", "conv1.bias", "fc2.weight", "fc2.bias"}) {
    EXPECT_TRUE(tensor_of(m, name).equal(tensor_of(original, name))) << name;
  }
  EXPECT_FALSE(tensor_of(m, "conv2.weight").equal(tensor_of(original, "conv2.weight")));

  LoadedModel io = clone(original);
  o.include_io = true;
  lock_model(io, o);
  EXPECT_FALSE(tensor_of(io, "conv1.weight").equal(tensor_of(original, "conv1.weight")));
  EXPECT_FALSE(tensor_of(io, "fc2.weight").equal(tensor_of(original, "fc2.weight")));
}

TEST(Lock, ExtractedUnitsAreZeroAndTheKeyHoldsTheirValues) {
  LoadedModel m = fresh_tiny();
  LoadedModel original = clone(m);
  LockOptions o;
  o.ratio = 0.05;
  LockOutcome out = lock_model(m, o);
  for (const auto& e : out.key.entries) {
    auto locked = tensor_of(m, e.tensor).reshape({-1, static_cast<int64_t>(e.unit_size)});
    auto orig = tensor_of(original, e.tensor).reshape({-1, static_cast<int64_t>(e.unit_size)});
    std::vector<int64_t> units(e.units.begin(), e.units.end());
    auto idx = torch::tensor(units, torch::kInt64);
    EXPECT_TRUE(locked.index_select(0, idx).eq(0).all().item<bool>());
    auto values = torch::from_blob(
        const_cast<uint8_t*>(e.values.data()),
        {static_cast<int64_t>(units.size()), static_cast<int64_t>(e.unit_size)}, torch::kFloat32);
    EXPECT_TRUE(values.equal(orig.index_select(0, idx)));
  }
  EXPECT_EQ(out.stats.values, static_cast<int64_t>(out.key.value_count()));
  EXPECT_EQ(out.stats.parameters, parameter_count(*m.net));
  ASSERT_TRUE(m.meta.lock.has_value());
  EXPECT_EQ(m.meta.lock->key_id, to_hex(out.key.header.key_id.data(), 16));
}

struct RoundTrip {
  Criterion criterion;
  Scope scope;
  bool include_io;
};

class LockUnlock : public ::testing::TestWithParam<RoundTrip> {};

TEST_P(LockUnlock, RestoresEveryBitAndTheFingerprint) {
  LoadedModel m = fresh_tiny(3);
  LoadedModel original = clone(m);
  const Digest before = model_fingerprint(m);
  LockOptions o;
  o.criterion = GetParam().criterion;
  o.scope = GetParam().scope;
  o.include_io = GetParam().include_io;
  o.ratio = 0.1;
  o.seed = 9;
  LockOutcome out = lock_model(m, o);
  EXPECT_NE(model_fingerprint(m), before);
  EXPECT_EQ(out.key.header.original_fingerprint, before);
  EXPECT_EQ(out.key.header.locked_fingerprint, model_fingerprint(m));
  // Through the serialised form, as a user would.
  auto bytes = serialize_key(out.key);
  unlock_model(m, parse_key(bytes.data(), bytes.size(), "key"));
  EXPECT_EQ(model_fingerprint(m), before);
  EXPECT_TRUE(same_tensors(m, original));
  EXPECT_FALSE(m.meta.lock.has_value());
}

INSTANTIATE_TEST_SUITE_P(Criteria, LockUnlock,
                         ::testing::Values(RoundTrip{Criterion::kL1, Scope::kLayer, false},
                                           RoundTrip{Criterion::kL1, Scope::kGlobal, true},
                                           RoundTrip{Criterion::kBn, Scope::kGlobal, false},
                                           RoundTrip{Criterion::kBn, Scope::kLayer, true},
                                           RoundTrip{Criterion::kRandom, Scope::kLayer, false},
                                           RoundTrip{Criterion::kRandom, Scope::kGlobal, false}),
                         [](const ::testing::TestParamInfo<RoundTrip>& i) {
                           return std::string(to_string(i.param.criterion)) + "_" +
                                  to_string(i.param.scope) + (i.param.include_io ? "_io" : "");
                         });

TEST(Unlock, KeyOfAnotherModelIsRefusedAndChangesNothing) {
  LoadedModel a = fresh_tiny(1), b = fresh_tiny(2);
  LockOptions o;
  LockOutcome ka = lock_model(a, o);
  lock_model(b, o);
  LoadedModel b_locked = clone(b);
  try {
    unlock_model(b, ka.key);
    FAIL() << "accepted a key of another model";
  } catch (const MismatchError& e) {
    EXPECT_NE(std::string(e.what()).find("another model"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(same_tensors(b, b_locked));
}

TEST(Unlock, TwiceIsRefused) {
  LoadedModel m = fresh_tiny();
  LockOutcome out = lock_model(m, LockOptions{});
  unlock_model(m, out.key);
  EXPECT_THROW(unlock_model(m, out.key), MismatchError);
}

TEST(Lock, LockingALockedModelIsRefused) {
  LoadedModel m = fresh_tiny();
  lock_model(m, LockOptions{});
  EXPECT_THROW(lock_model(m, LockOptions{}), UsageError);
}

TEST(Lock, BadRatioIsAUsageError) {
  LoadedModel m = fresh_tiny();
  LockOptions o;
  o.ratio = 1.5;
  EXPECT_THROW(lock_model(m, o), UsageError);
}

TEST(Fingerprint, IgnoresOrderAndSeesEveryBit) {
  LoadedModel m = fresh_tiny();
  auto tensors = named_tensors(*m.net);
  const Digest d = fingerprint(tensors);
  std::reverse(tensors.begin(), tensors.end());
  EXPECT_EQ(fingerprint(tensors), d);
  torch::NoGradGuard no_grad;
  auto w = tensor_of(m, "fc2.bias");
  const float old = w[3].item<float>();
  w[3] = std::nextafter(old, 1.0f);
  EXPECT_NE(model_fingerprint(m), d);
  w[3] = old;
  EXPECT_EQ(model_fingerprint(m), d);
  tensor_of(m, "bn1.running_mean")[0] = 0.5;  // buffers count too
  EXPECT_NE(model_fingerprint(m), d);
}

}  // namespace
}  // namespace corelocker::locking_test
