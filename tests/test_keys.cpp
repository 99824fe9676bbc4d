// Keys that are safe to ship: tiered keys, encrypted keys end to end, in-memory unlock, decoy fill.
#include <gtest/gtest.h>

#include <cmath>

#include "locking/detect.h"
#include "locking/fingerprint.h"
#include "locking/lock.h"
#include "temp_dir.h"
#include "test_support.h"
#include "util/error.h"

namespace corelocker::keys_test {
namespace {

using testing::clone;
using testing::fresh_tiny;
using testing::same_tensors;

LockOptions l1_at(double ratio) {
  LockOptions o;
  o.ratio = ratio;
  return o;
}

Digest single_lock_fingerprint(LoadedModel& original, LockOptions o) {
  LoadedModel m = clone(original);
  lock_model(m, o);
  return model_fingerprint(m);
}

TEST(Tiers, EachKeyLandsOnTheSingleRatioLockAndTheLastOnTheOriginal) {
  LoadedModel original = fresh_tiny(11);
  LoadedModel m = clone(original);
  std::vector<double> seen;
  auto tiers = lock_model_tiers(m, l1_at(0), {0.2, 0.05, 0.1},
                                [&](double r, LoadedModel&) { seen.push_back(r); });
  EXPECT_EQ(seen, (std::vector<double>{0.05, 0.1, 0.2}));
  ASSERT_EQ(tiers.size(), 3u);
  // The locked model is the lock at the largest ratio, unit for unit.
  EXPECT_EQ(model_fingerprint(m), single_lock_fingerprint(original, l1_at(0.2)));
  EXPECT_EQ(tiers[0].key.header.tier, 1);
  EXPECT_EQ(tiers[0].key.header.tiers, 3);
  EXPECT_DOUBLE_EQ(tiers[0].key.header.ratio, 0.2);
  EXPECT_DOUBLE_EQ(tiers[0].key.header.ratio_after, 0.1);
  EXPECT_EQ(tiers[0].key.header.key_id, tiers[2].key.header.key_id);
  unlock_model(m, tiers[0].key);
  EXPECT_EQ(model_fingerprint(m), single_lock_fingerprint(original, l1_at(0.1)));
  ASSERT_TRUE(m.meta.lock.has_value());
  EXPECT_DOUBLE_EQ(m.meta.lock->ratio, 0.1);
  EXPECT_EQ(m.meta.lock->tiers, 2);
  unlock_model(m, tiers[1].key);
  EXPECT_EQ(model_fingerprint(m), single_lock_fingerprint(original, l1_at(0.05)));
  unlock_model(m, tiers[2].key);
  EXPECT_TRUE(same_tensors(m, original));
  EXPECT_FALSE(m.meta.lock.has_value());
}

TEST(Tiers, OutOfOrderIsRefusedWithAClearMessage) {
  LoadedModel m = fresh_tiny(12);
  auto tiers = lock_model_tiers(m, l1_at(0), {0.05, 0.1});
  LoadedModel before = clone(m);
  try {
    unlock_model(m, tiers[1].key);
    FAIL() << "applied tier 2 before tier 1";
  } catch (const MismatchError& e) {
    EXPECT_NE(std::string(e.what()).find("in order"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(same_tensors(m, before));
}

TEST(Tiers, KeysAreSeparatelyEncryptable) {
  LoadedModel original = fresh_tiny(13);
  LoadedModel m = clone(original);
  LockOptions o;
  o.criterion = Criterion::kBn;
  o.scope = Scope::kGlobal;
  auto tiers = lock_model_tiers(m, o, {0.1, 0.3});
  std::vector<KeyFile> read_back;
  for (size_t i = 0; i < tiers.size(); ++i) {
    KeyCredentials c;
    c.kind = Encryption::kPassphrase;
    c.passphrase = "tier " + std::to_string(i);
    set_kdf_preset(c, "min");
    auto bytes = serialize_key(tiers[i].key, c);
    read_back.push_back(parse_key(bytes.data(), bytes.size(), "k", c));
  }
  unlock_model(m, read_back);
  EXPECT_TRUE(same_tensors(m, original));
}

TEST(Tiers, BadRatioListsAreUsageErrors) {
  LoadedModel m = fresh_tiny();
  EXPECT_THROW(lock_model_tiers(m, l1_at(0), {}), UsageError);
  EXPECT_THROW(lock_model_tiers(m, l1_at(0), {0.1, 0.1}), UsageError);
  EXPECT_THROW(lock_model_tiers(m, l1_at(0), {0.1, 1.5}), UsageError);
  EXPECT_THROW(lock_model_tiers(m, l1_at(0), {0.1, 0.1000001}), UsageError);  // same units
  EXPECT_FALSE(m.meta.lock.has_value());
}

TEST(InMemoryUnlock, LoadUnlockedWritesNothing) {
  testing::TempDir dir;
  LoadedModel original = fresh_tiny(14);
  LoadedModel m = clone(original);
  LockOutcome out = lock_model(m, l1_at(0.1));
  save_model(dir.file("locked.ckpt"), m);
  LoadedModel back = load_unlocked(dir.file("locked.ckpt"), {out.key});
  EXPECT_TRUE(same_tensors(back, original));
  EXPECT_EQ(std::system(("test $(ls '" + dir.path() + "' | wc -l) -eq 1").c_str()), 0);
}

TEST(Decoy, LeavesNoExactZerosAndRestoresExactly) {
  LoadedModel original = fresh_tiny(15);
  LoadedModel m = clone(original);
  LockOptions o = l1_at(0.1);
  o.fill = Fill::kDecoy;
  LockOutcome out = lock_model(m, o);
  EXPECT_EQ(out.key.header.fill, Fill::kDecoy);
  for (const auto& e : out.key.entries) {
    auto t = named_tensors(*m.net);
    for (auto& nt : t) {
      if (nt.name != e.tensor) continue;
      auto units = nt.tensor.reshape({-1, static_cast<int64_t>(e.unit_size)});
      std::vector<int64_t> idx(e.units.begin(), e.units.end());
      auto picked = units.index_select(0, torch::tensor(idx, torch::kInt64));
      EXPECT_EQ(picked.eq(0).all(1).sum().item<int64_t>(), 0) << e.tensor;
    }
  }
  EXPECT_EQ(m.meta.lock->fill, "decoy");
  unlock_model(m, out.key);
  EXPECT_TRUE(same_tensors(m, original));
}

TEST(Decoy, TheDetectorFindsZeroFillButNotDecoys) {
  LoadedModel original = testing::trained_resnet();
  for (Fill fill : {Fill::kZero, Fill::kDecoy}) {
    LoadedModel m = clone(original);
    LockOptions o = l1_at(0.05);
    o.fill = fill;
    LockOutcome out = lock_model(m, o);
    DetectionReport r = detect_extracted(named_tensors(*m.net), out.key);
    EXPECT_NEAR(r.chance(), 0.05, 0.01);
    // Random flagging hits about chance * flagged units with this binomial sd.
    const double sd = std::sqrt(r.chance() * (1.0 - r.chance()) / double(r.flagged));
    if (fill == Fill::kZero) {
      EXPECT_GE(r.precision(), 0.95);
      EXPECT_GT(r.oracle_z(), 10.0);
    } else {
      // Decoys are drawn from the OS generator; 4 sd leaves room for their randomness while
      // catching decoys that stand out in size (lower-half donors gave ~2x chance, 5.5 sd).
      EXPECT_LE(r.precision_far(), r.chance() + 4 * sd) << "decoys stand out from the median";
      EXPECT_LE(r.precision_small(), r.chance() + 4 * sd)
          << "decoys are smaller than the other units";
      EXPECT_LE(r.oracle_z(), 4.0)
          << "oracle finds decoys: " << r.hits << " hits, chance " << r.oracle_chance_hits;
    }
  }
}

TEST(Detector, OracleChanceMatchesWhatItGetsOnRandomUnits) {
  // Score the detector against units of an unlocked model picked at random: nothing is hidden
  // there, so the oracle's hits must sit in its own chance band, above the plain rate.
  LoadedModel m = testing::trained_resnet();
  LoadedModel probe = clone(m);
  LockOptions o = l1_at(0.05);
  o.criterion = Criterion::kRandom;
  o.seed = 11;
  LockOutcome out = lock_model(probe, o);  // only the key's positions (random units) are used
  DetectionReport r = detect_extracted(named_tensors(*m.net), out.key);
  EXPECT_GT(r.oracle_chance(), r.chance());
  EXPECT_LT(std::abs(r.oracle_z()), 4.0);
  EXPECT_GT(r.oracle_chance_sd, 0.0);
  EXPECT_THROW(detect_extracted(named_tensors(*m.net), out.key, 1), UsageError);
}

TEST(DecoySearch, KeepsTheDrawNearestZeroFillOrTheLowestAndRestoresExactly) {
  LoadedModel original = fresh_tiny(16);
  for (auto target : {DecoySearch::Target::kMatchZero, DecoySearch::Target::kLowest}) {
    LoadedModel m = clone(original);
    LockOptions o = l1_at(0.1);
    o.fill = Fill::kDecoy;
    const bool match = target == DecoySearch::Target::kMatchZero;
    // kMatchZero scores the zero-filled lock first (0.3 here), then the four draws.
    std::vector<double> scores = {0.5, 0.2, 0.9, 0.35};
    if (match) scores.insert(scores.begin(), 0.3);
    std::vector<Digest> seen;
    std::vector<bool> zero_filled;
    DecoySearch search;
    search.tries = 4;
    search.target = target;
    search.score = [&](LoadedModel& state) {
      seen.push_back(model_fingerprint(state));
      bool zeros = false;
      for (auto& t : named_tensors(*state.net)) {
        if (t.name == "conv2.weight")
          zeros = t.tensor.reshape({-1, 9}).eq(0).all(1).any().item<bool>();
      }
      zero_filled.push_back(zeros);
      return scores[seen.size() - 1];
    };
    auto tensors = named_tensors(*m.net);
    LockOutcome out = lock_model(m, rank_units(tensors, m.net->structure(), o), 0.1, search);
    ASSERT_EQ(seen.size(), scores.size());
    EXPECT_EQ(zero_filled.front(), match) << "the reference is the zero-filled lock";
    const size_t first_draw = match ? 1 : 0;
    for (size_t i = first_draw + 1; i < seen.size(); ++i)
      EXPECT_NE(seen[i], seen[first_draw]) << "draws differ";
    const size_t chosen = match ? 4 : 1;  // 0.35 is nearest 0.3; 0.2 is the lowest
    EXPECT_EQ(model_fingerprint(m), seen[chosen]);
    EXPECT_EQ(out.key.header.locked_fingerprint, seen[chosen]);
    EXPECT_EQ(out.key.header.fill, Fill::kDecoy);
    unlock_model(m, out.key);
    EXPECT_TRUE(same_tensors(m, original));
  }
  LoadedModel again = clone(original);
  LockOptions o = l1_at(0.1);
  o.fill = Fill::kDecoy;
  DecoySearch bad;
  bad.tries = 0;
  auto t2 = named_tensors(*again.net);
  EXPECT_THROW(lock_model(again, rank_units(t2, again.net->structure(), o), 0.1, bad), UsageError);
}

}  // namespace
}  // namespace corelocker::keys_test
