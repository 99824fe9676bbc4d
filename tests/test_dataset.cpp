#include <gtest/gtest.h>
#include <zlib.h>

#include "data/dataset.h"
#include "temp_dir.h"
#include "util/error.h"

namespace corelocker::dataset_test {
namespace {

void write_idx_gz(const std::string& path, std::vector<uint32_t> dims, uint8_t fill = 1) {
  std::vector<uint8_t> b = {0, 0, 8, static_cast<uint8_t>(dims.size())};
  uint64_t n = 1;
  for (auto d : dims) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(d >> s));
    n *= d;
  }
  b.resize(b.size() + n, fill);
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, b.data(), static_cast<unsigned>(b.size()));
  gzclose(f);
}

std::string load_error(const std::string& dir) {
  try {
    load_fashion_mnist(dir, Split::kTest);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(FashionMnist, LoadsTheRealDataSet) {
  Dataset test = load_dataset("fashion-mnist", "", Split::kTest);
  ASSERT_EQ(test.size(), 10000);
  EXPECT_EQ(test.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(test.images.scalar_type(), torch::kUInt8);
  // Balanced: 1000 of each class.
  auto counts = torch::bincount(test.labels);
  EXPECT_TRUE(counts.eq(1000).all().item<bool>());
}

TEST(FashionMnist, CountMismatchNamesBothFiles) {
  testing::TempDir dir;
  write_idx_gz(dir.file("t10k-images-idx3-ubyte.gz"), {5, 28, 28});
  write_idx_gz(dir.file("t10k-labels-idx1-ubyte.gz"), {4});
  const std::string msg = load_error(dir.path());
  EXPECT_NE(msg.find("5 images"), std::string::npos) << msg;
  EXPECT_NE(msg.find("4 labels"), std::string::npos) << msg;
}

TEST(FashionMnist, LabelOutOfRange) {
  testing::TempDir dir;
  write_idx_gz(dir.file("t10k-images-idx3-ubyte.gz"), {3, 28, 28});
  write_idx_gz(dir.file("t10k-labels-idx1-ubyte.gz"), {3}, 10);
  EXPECT_NE(load_error(dir.path()).find("label 10 at index 0 out of range"), std::string::npos);
}

TEST(FashionMnist, WrongImageSize) {
  testing::TempDir dir;
  write_idx_gz(dir.file("t10k-images-idx3-ubyte.gz"), {3, 32, 32});
  write_idx_gz(dir.file("t10k-labels-idx1-ubyte.gz"), {3});
  EXPECT_NE(load_error(dir.path()).find("32x32, expected 28x28"), std::string::npos);
}

TEST(FashionMnist, ImagesWithWrongRank) {
  testing::TempDir dir;
  write_idx_gz(dir.file("t10k-images-idx3-ubyte.gz"), {3, 784});
  write_idx_gz(dir.file("t10k-labels-idx1-ubyte.gz"), {3});
  EXPECT_NE(load_error(dir.path()).find("2 dimensions, expected 3"), std::string::npos);
}

TEST(FashionMnist, MissingFileNamesIt) {
  testing::TempDir dir;
  EXPECT_NE(load_error(dir.path()).find("t10k-images-idx3-ubyte.gz' not found"), std::string::npos);
}

TEST(Dataset, UnknownNameIsAUsageError) { EXPECT_THROW(dataset_info("imagenet"), UsageError); }

TEST(Dataset, SubsetIsDeterministicAndDistinct) {
  Dataset test = load_dataset("fashion-mnist", "", Split::kTest);
  Dataset a = subset(test, 500, 1), b = subset(test, 500, 1), c = subset(test, 500, 2);
  EXPECT_EQ(a.size(), 500);
  EXPECT_TRUE(a.labels.equal(b.labels) && a.images.equal(b.images));
  EXPECT_FALSE(a.images.equal(c.images));
  EXPECT_EQ(subset(test, 0, 1).size(), 10000);
}

TEST(Preprocess, PadsAndNormalises) {
  Preprocess pp{{0.5}, {0.25}, 32};
  auto img = torch::full({2, 1, 28, 28}, 255, torch::kUInt8);
  auto x = preprocess_batch(img, pp, /*augment=*/false);
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{2, 1, 32, 32}));
  EXPECT_FLOAT_EQ(x[0][0][16][16].item<float>(), 2.0f);  // (1 - 0.5) / 0.25
  EXPECT_FLOAT_EQ(x[0][0][0][0].item<float>(), -2.0f);   // zero padding, normalised
  EXPECT_FLOAT_EQ(x[0][0][1][1].item<float>(), -2.0f);
  EXPECT_FLOAT_EQ(x[0][0][2][2].item<float>(), 2.0f);
}

// The padded pixels: pad_value before normalising (pixel units), or after it (normalised units,
// torchvision's Normalize before Pad).
TEST(Preprocess, PadValueBeforeOrAfterNormalising) {
  Preprocess pp{{0.5}, {0.25}, 32};
  pp.pad_value = 0.75;
  auto img = torch::full({1, 1, 28, 28}, 255, torch::kUInt8);
  auto x = preprocess_batch(img, pp, /*augment=*/false);
  EXPECT_FLOAT_EQ(x[0][0][0][0].item<float>(), 1.0f);  // (0.75 - 0.5) / 0.25
  EXPECT_FLOAT_EQ(x[0][0][2][2].item<float>(), 2.0f);
  pp.pad_normalised = true;
  pp.pad_value = 0.0;
  x = preprocess_batch(img, pp, /*augment=*/false);
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{1, 1, 32, 32}));
  EXPECT_FLOAT_EQ(x[0][0][0][0].item<float>(), 0.0f);  // 0 in normalised units
  EXPECT_FLOAT_EQ(x[0][0][31][31].item<float>(), 0.0f);
  EXPECT_FLOAT_EQ(x[0][0][2][2].item<float>(), 2.0f);
  // Three channels from a grey image: padded after the repeat, every channel alike.
  Preprocess rgb{{0.5, 0.5, 0.5}, {0.25, 0.5, 1.0}, 30, 0, 3, -1.0, true};
  x = preprocess_batch(img, rgb, /*augment=*/false);
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{1, 3, 30, 30}));
  for (int64_t c = 0; c < 3; ++c) EXPECT_FLOAT_EQ(x[0][c][0][0].item<float>(), -1.0f);
  EXPECT_FLOAT_EQ(x[0][1][1][1].item<float>(), 1.0f);  // (1 - 0.5) / 0.5
}

TEST(Preprocess, RandomCropKeepsShapeAndShiftsContent) {
  Preprocess pp{{0.0}, {1.0}, 0};
  auto img = torch::zeros({64, 1, 8, 8}, torch::kUInt8);
  img.index_put_({torch::indexing::Slice(), 0, 4, 4}, 255);
  torch::manual_seed(0);
  auto x = preprocess_batch(img, pp, /*augment=*/true);
  EXPECT_EQ(x.sizes(), img.sizes());
  // Each image keeps at most its one bright pixel, and the crops do not all agree.
  auto pos = x.reshape({64, 64}).argmax(1);
  EXPECT_GT(std::get<0>(at::_unique(pos)).numel(), 1);
}

}  // namespace
}  // namespace corelocker::dataset_test
