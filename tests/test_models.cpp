#include <gtest/gtest.h>

#include "locking/lock.h"
#include "models/checkpoint.h"
#include "temp_dir.h"
#include "test_support.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::models_test {
namespace {

TEST(ResNet, Resnet20HasTheCanonicalSizeAndStructure) {
  LoadedModel m = create_model(new_model_meta("resnet20", "fashion-mnist"));
  // He et al. (2016), Table 6: 0.27M parameters.
  EXPECT_NEAR(static_cast<double>(parameter_count(*m.net)), 0.27e6, 0.01 * 0.27e6);
  const Structure& s = m.net->structure();
  ASSERT_EQ(s.size(), 1u + 1u + 9u * 4u + 1u);  // stem conv+bn, 9 blocks of conv/bn/conv/bn, fc
  EXPECT_EQ(s.front().weight, "conv1.weight");
  EXPECT_EQ(s.back().weight, "fc.weight");
  EXPECT_EQ(s[1].kind, LayerKind::kBatchNorm);
  EXPECT_EQ(s[1].producer, 0);
  EXPECT_EQ(s[3].name, "layer1.0.bn1");
  EXPECT_EQ(s[s[3].producer].name, "layer1.0.conv1");
  // Every tensor named by the structure exists.
  auto tensors = named_tensors(*m.net);
  for (const auto& l : s) {
    EXPECT_TRUE(std::any_of(tensors.begin(), tensors.end(), [&](const NamedTensor& t) {
      return t.name == l.weight;
    })) << l.weight;
  }
}

TEST(ResNet, ForwardOnPaddedFashionMnist) {
  LoadedModel m = create_model(new_model_meta("resnet20", "fashion-mnist"));
  m.net->eval();
  auto y = m.net->forward(torch::randn({3, 1, 32, 32}));
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{3, 10}));
}

TEST(ResNet, DepthMustBe6nPlus2) {
  ModelMeta meta = new_model_meta("resnet20", "fashion-mnist");
  meta.options["depth"] = 21;
  EXPECT_THROW(create_model(meta), UsageError);
  meta.options["depth"] = 32;
  EXPECT_EQ(create_model(meta).net->structure().size(), 2u + 15u * 4u + 1u);
}

TEST(Models, UnknownArchitectureIsAUsageError) {
  EXPECT_THROW(create_model(new_model_meta("alexnet", "fashion-mnist")), UsageError);
}

TEST(Checkpoint, RoundTripKeepsEveryBitAndTheMetadata) {
  testing::TempDir dir;
  LoadedModel m = testing::fresh_tiny(5);
  m.meta.training_json = R"({"epochs":3})";
  save_model(dir.file("m.ckpt"), m);
  LoadedModel back = load_model(dir.file("m.ckpt"));
  EXPECT_TRUE(testing::same_tensors(m, back));
  EXPECT_EQ(back.meta.arch, "tinycnn");
  EXPECT_EQ(back.meta.option("width", 0), 8);
  EXPECT_EQ(back.meta.training_json, R"({"epochs":3})");
  EXPECT_EQ(model_fingerprint(back), model_fingerprint(m));
}

TEST(Checkpoint, LockedModelKeepsItsLockMetadata) {
  testing::TempDir dir;
  LoadedModel m = testing::fresh_tiny();
  lock_model(m, LockOptions{});
  save_model(dir.file("l.ckpt"), m);
  ModelMeta meta = read_model_meta(dir.file("l.ckpt"));
  ASSERT_TRUE(meta.lock.has_value());
  EXPECT_EQ(meta.lock->key_id, m.meta.lock->key_id);
  EXPECT_EQ(meta.lock->criterion, "l1");
}

TEST(Checkpoint, GarbageAndTruncatedFilesAreFormatErrors) {
  testing::TempDir dir;
  write_file_atomic(dir.file("junk.ckpt"), std::string("this is not a model"));
  EXPECT_THROW(load_model(dir.file("junk.ckpt")), FormatError);
  LoadedModel m = testing::fresh_tiny();
  save_model(dir.file("m.ckpt"), m);
  auto bytes = read_file(dir.file("m.ckpt"));
  bytes.resize(bytes.size() / 2);
  write_file_atomic(dir.file("cut.ckpt"), bytes);
  EXPECT_THROW(load_model(dir.file("cut.ckpt")), FormatError);
  EXPECT_THROW(load_model(dir.file("absent.ckpt")), IoError);
}

TEST(Checkpoint, MetadataFromAnotherArchitectureIsRefused) {
  EXPECT_THROW(meta_from_json(R"({"format":"other"})", "m"), FormatError);
  EXPECT_THROW(meta_from_json("{not json", "m"), FormatError);
  ModelMeta meta = new_model_meta("tinycnn", "fashion-mnist");
  std::string text = meta_to_json(meta);
  text.replace(text.find("\"format_version\":1"), 18, "\"format_version\":9");
  EXPECT_THROW(meta_from_json(text, "m"), FormatError);
}

// The padding options travel in the metadata (written only when set, so older files read as
// before); a pad value that is not a finite number is refused.
TEST(Checkpoint, PadValueAndOrderRoundTrip) {
  ModelMeta meta = new_model_meta("tinycnn", "fashion-mnist");
  std::string plain = meta_to_json(meta);
  EXPECT_EQ(plain.find("pad_value"), std::string::npos);
  EXPECT_EQ(plain.find("pad_normalised"), std::string::npos);
  meta.preprocess.pad_to = 32;
  meta.preprocess.pad_value = -0.5;
  meta.preprocess.pad_normalised = true;
  const ModelMeta back = meta_from_json(meta_to_json(meta), "m");
  EXPECT_EQ(back.preprocess.pad_value, -0.5);
  EXPECT_TRUE(back.preprocess.pad_normalised);
  std::string text = meta_to_json(meta);
  text.replace(text.find("-0.5"), 4, "\"x\"");
  EXPECT_THROW(meta_from_json(text, "m"), FormatError);
  text = meta_to_json(meta);
  text.replace(text.find("-0.5"), 4, "1e999");
  EXPECT_THROW(meta_from_json(text, "m"), FormatError);
}

}  // namespace
}  // namespace corelocker::models_test
