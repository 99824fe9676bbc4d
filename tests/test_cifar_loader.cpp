// Loading CIFAR-10 / CIFAR-100 folders the tests generate, and CIFAR augmentation.
#include <gtest/gtest.h>

#include "data/cifar.h"
#include "data/dataset.h"
#include "temp_dir.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::cifar_loader_test {
namespace {

// n records; record i has label (i + offset) % classes and every pixel of plane c equal to
// (i + offset + c) % 256.
std::vector<uint8_t> records(bool cifar100, int n, int offset) {
  std::vector<uint8_t> b;
  for (int i = 0; i < n; ++i) {
    const int k = i + offset;
    if (cifar100) b.push_back(static_cast<uint8_t>(k % 20));
    b.push_back(static_cast<uint8_t>(k % (cifar100 ? 100 : 10)));
    for (int c = 0; c < 3; ++c) b.insert(b.end(), 1024, static_cast<uint8_t>((k + c) % 256));
  }
  return b;
}

class CifarFolder : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int f = 1; f <= 5; ++f) {
      write_file_atomic(dir_.file("data_batch_" + std::to_string(f) + ".bin"),
                        records(false, 4, 4 * (f - 1)));
    }
    write_file_atomic(dir_.file("test_batch.bin"), records(false, 3, 100));
    write_file_atomic(dir_.file("train.bin"), records(true, 7, 0));
    write_file_atomic(dir_.file("test.bin"), records(true, 2, 50));
  }
  testing::TempDir dir_;
};

TEST_F(CifarFolder, LoadsCifar10TrainingBatchesInOrder) {
  Dataset d = load_dataset("cifar10", dir_.path(), Split::kTrain);
  EXPECT_EQ(d.name, "cifar10");
  EXPECT_EQ(d.classes, 10);
  ASSERT_EQ(d.images.sizes(), (std::vector<int64_t>{20, 3, 32, 32}));
  EXPECT_EQ(d.labels[13].item<int64_t>(), 3);
  EXPECT_EQ(d.images[13][2][31][0].item<uint8_t>(), 15);  // blue plane of record 13
  Dataset t = load_dataset("cifar10", dir_.path(), Split::kTest);
  EXPECT_EQ(t.size(), 3);
  EXPECT_EQ(t.labels[0].item<int64_t>(), 0);  // 100 % 10
}

TEST_F(CifarFolder, LoadsCifar100FineLabels) {
  Dataset d = load_dataset("cifar100", dir_.path(), Split::kTest);
  EXPECT_EQ(d.classes, 100);
  ASSERT_EQ(d.size(), 2);
  EXPECT_EQ(d.labels[1].item<int64_t>(), 51);
  EXPECT_EQ(load_dataset("cifar100", dir_.path(), Split::kTrain).size(), 7);
}

TEST_F(CifarFolder, MissingBatchIsAnIoErrorNamingIt) {
  std::remove(dir_.file("data_batch_4.bin").c_str());
  try {
    load_dataset("cifar10", dir_.path(), Split::kTrain);
    FAIL();
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("data_batch_4.bin"), std::string::npos) << e.what();
  }
}

TEST_F(CifarFolder, BrokenBatchIsAFormatErrorNamingIt) {
  auto b = records(false, 4, 0);
  b.pop_back();
  write_file_atomic(dir_.file("data_batch_2.bin"), b);
  try {
    load_dataset("cifar10", dir_.path(), Split::kTrain);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("data_batch_2.bin"), std::string::npos) << e.what();
  }
  // A CIFAR-100 file in a CIFAR-10 folder.
  write_file_atomic(dir_.file("test_batch.bin"), records(true, 3, 0));
  EXPECT_THROW(load_dataset("cifar10", dir_.path(), Split::kTest), FormatError);
}

TEST(Cifar, NoDefaultFolder) {
  EXPECT_THROW(load_dataset("cifar10", "", Split::kTest), UsageError);
  EXPECT_THROW(dataset_info("cifar1000"), UsageError);
  EXPECT_TRUE(dataset_info("cifar100").flip);
  EXPECT_FALSE(dataset_info("fashion-mnist").flip);
  EXPECT_EQ(dataset_info("cifar10").mean.size(), 3u);
}

// Random crops keep the image size; flips mirror some images and only with `flip`.
TEST(Cifar, AugmentationFlipsOnlyWhenAsked) {
  Preprocess pp;
  pp.mean = {0.0, 0.0, 0.0};
  pp.std = {1.0, 1.0, 1.0};
  // Left half 255, right half 0: a flip moves the bright half to the right.
  auto images = torch::zeros({64, 3, 32, 32}, torch::kUInt8);
  images.narrow(3, 0, 16).fill_(255);
  torch::manual_seed(1);
  auto plain = preprocess_batch(images, pp, /*augment=*/true, /*flip=*/false);
  auto flipped = preprocess_batch(images, pp, /*augment=*/true, /*flip=*/true);
  ASSERT_EQ(flipped.sizes(), images.sizes());
  auto right_bright = [](const torch::Tensor& x) {
    return x.select(3, 31).mean({1, 2}).gt(0.5).sum().item<int64_t>();
  };
  EXPECT_EQ(right_bright(plain), 0);
  EXPECT_GT(right_bright(flipped), 10);
  EXPECT_LT(right_bright(flipped), 54);
}

}  // namespace
}  // namespace corelocker::cifar_loader_test
