// The library pieces the Python module stands on (src/python/module.cpp): unlocking for a while
// (locking/scoped_unlock.h), TorchScript modules wrapped in memory (wrap_torchscript) and
// BatchNorm re-estimation on batches the caller prepares. tests/python tests the module itself.
#include <gtest/gtest.h>
#include <torch/script.h>

#include "attacks/effective.h"
#include "locking/fingerprint.h"
#include "locking/lock.h"
#include "locking/scoped_unlock.h"
#include "models/torchscript.h"
#include "test_support.h"
#include "torchscript_fixture.h"
#include "util/error.h"

namespace corelocker::python_support_test {
namespace {

using testing::clone;
using testing::fresh_tiny;
using testing::same_tensors;
using testing::tensor_of;

TEST(ScopedUnlock, UnlocksAndLocksAgainBitForBit) {
  for (Fill fill : {Fill::kZero, Fill::kDecoy}) {
    LoadedModel m = fresh_tiny(3);
    LoadedModel original = clone(m);
    LockOptions o;
    o.ratio = 0.1;
    o.fill = fill;
    const KeyFile key = lock_model(m, o).key;
    LoadedModel locked = clone(m);
    auto tensors = named_tensors(*m.net);
    const KeyFile undo = unlock_reversibly(tensors, key);
    EXPECT_TRUE(same_tensors(m, original));
    EXPECT_EQ(undo.header.locked_fingerprint, key.header.original_fingerprint);
    EXPECT_EQ(undo.header.original_fingerprint, key.header.locked_fingerprint);
    EXPECT_EQ(undo.value_count(), key.value_count());
    EXPECT_EQ(relock(tensors, undo), key.header.locked_fingerprint);
    EXPECT_TRUE(same_tensors(m, locked)) << to_string(fill);
  }
}

TEST(ScopedUnlock, WrongKeyChangesNothingAndRelockWritesEvenAfterOtherChanges) {
  LoadedModel a = fresh_tiny(1), b = fresh_tiny(2);
  const KeyFile key_a = lock_model(a, LockOptions{}).key;
  lock_model(b, LockOptions{});
  LoadedModel locked_b = clone(b);
  auto tensors_b = named_tensors(*b.net);
  EXPECT_THROW(unlock_reversibly(tensors_b, key_a), MismatchError);
  EXPECT_TRUE(same_tensors(b, locked_b));

  auto tensors_a = named_tensors(*a.net);
  const KeyFile undo = unlock_reversibly(tensors_a, key_a);
  tensor_of(a, "bn1.running_mean").add_(1.0);  // changed while unlocked
  EXPECT_NE(relock(tensors_a, undo), key_a.header.locked_fingerprint);
  tensor_of(a, "bn1.running_mean").sub_(1.0);
  EXPECT_EQ(fingerprint(tensors_a),
            key_a.header.locked_fingerprint);  // the key's units were put back
}

TEST(WrapTorchScript, SharesTheModulesTensorsAndKeepsItsModes) {
  const std::string dir = testing::torchscript_fixtures("ts-fresh-s3", "--seed 3");
  torch::jit::Module module = torch::jit::load(dir + "/scripted.pt");
  module.train(false);
  const Digest before = fingerprint(named_tensors(*load_torchscript(dir + "/scripted.pt").net));
  LoadedModel wrapped = wrap_torchscript(module, "module");
  EXPECT_FALSE(wrapped.net->is_training());
  EXPECT_FALSE(wrapped.meta_stored);
  EXPECT_EQ(model_fingerprint(wrapped), before);
  const LockOutcome out = lock_model(wrapped, LockOptions{});
  // The lock changed the module itself.
  std::vector<NamedTensor> own;
  for (const auto& p : module.named_parameters(/*recurse=*/true))
    own.push_back({p.name, p.value, false});
  for (const auto& b : module.named_buffers(/*recurse=*/true))
    own.push_back({b.name, b.value, true});
  EXPECT_EQ(fingerprint(own), out.key.header.locked_fingerprint);
  EXPECT_NE(out.key.header.locked_fingerprint, before);
}

TEST(Reestimate, BatchesFromTheCallerGiveTheDatasetsResult) {
  LoadedModel a = fresh_tiny(4), b = clone(a);
  const Dataset data = subset(testing::fashion_train(), 200, 3);
  const ReestimateResult ra = reestimate_batchnorm(a, data, 64);
  int64_t next = 0;
  const ReestimateResult rb = reestimate_batchnorm(b, [&]() -> torch::Tensor {
    if (next >= data.size()) return {};
    const int64_t n = std::min<int64_t>(64, data.size() - next);
    next += n;
    return preprocess_batch(data.images.narrow(0, next - n, n), b.meta.preprocess,
                            /*augment=*/false);
  });
  EXPECT_EQ(ra.batches, rb.batches);
  EXPECT_EQ(ra.images, rb.images);
  EXPECT_TRUE(same_tensors(a, b));
  const Digest fp = model_fingerprint(b);
  EXPECT_THROW(reestimate_batchnorm(b, [] { return torch::Tensor(); }), UsageError);
  EXPECT_EQ(model_fingerprint(b), fp);
}

}  // namespace
}  // namespace corelocker::python_support_test
