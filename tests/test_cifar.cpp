// CIFAR binary records: valid files and hand-made broken ones, one defect each (the pattern of
// llama.cpp's test-gguf).
#include <gtest/gtest.h>

#include "data/cifar.h"
#include "util/error.h"

namespace corelocker {
namespace {

// n records with labels i % classes (and coarse labels i % 20 for CIFAR-100); pixel bytes
// encode the record and the position.
std::vector<uint8_t> make_cifar(CifarKind kind, uint64_t n) {
  std::vector<uint8_t> b;
  for (uint64_t i = 0; i < n; ++i) {
    if (kind == CifarKind::kCifar100) b.push_back(static_cast<uint8_t>(i % 20));
    b.push_back(static_cast<uint8_t>(i % (kind == CifarKind::kCifar10 ? 10 : 100)));
    for (uint64_t p = 0; p < kCifarImageBytes; ++p) b.push_back(static_cast<uint8_t>(i * 31 + p));
  }
  return b;
}

TEST(Cifar, RecordSizes) {
  EXPECT_EQ(cifar_record_bytes(CifarKind::kCifar10), 3073u);
  EXPECT_EQ(cifar_record_bytes(CifarKind::kCifar100), 3074u);
}

TEST(Cifar, ParsesCifar10Records) {
  CifarArray a = parse_cifar(make_cifar(CifarKind::kCifar10, 13), CifarKind::kCifar10, "x");
  ASSERT_EQ(a.count, 13u);
  ASSERT_EQ(a.images.size(), 13u * 3072u);
  EXPECT_EQ(a.labels[12], 2);
  EXPECT_TRUE(a.coarse.empty());
  EXPECT_EQ(a.images[5 * 3072 + 1024], static_cast<uint8_t>(5 * 31 + 1024));  // green plane
}

TEST(Cifar, ParsesCifar100FineAndCoarseLabels) {
  CifarArray a = parse_cifar(make_cifar(CifarKind::kCifar100, 120), CifarKind::kCifar100, "x");
  ASSERT_EQ(a.count, 120u);
  EXPECT_EQ(a.labels[99], 99);
  EXPECT_EQ(a.labels[110], 10);
  EXPECT_EQ(a.coarse[45], 5);
  EXPECT_EQ(a.images[3 * 3072], static_cast<uint8_t>(3 * 31));
}

TEST(Cifar, AppendsFiles) {
  CifarArray a = parse_cifar(make_cifar(CifarKind::kCifar10, 2), CifarKind::kCifar10, "a");
  append_cifar(a, parse_cifar(make_cifar(CifarKind::kCifar10, 3), CifarKind::kCifar10, "b"));
  EXPECT_EQ(a.count, 5u);
  EXPECT_EQ(a.images.size(), 5u * 3072u);
  EXPECT_EQ(a.labels, (std::vector<uint8_t>{0, 1, 0, 1, 2}));
}

TEST(Cifar, FileNames) {
  EXPECT_EQ(cifar_files(CifarKind::kCifar10, true).size(), 5u);
  EXPECT_EQ(cifar_files(CifarKind::kCifar10, true)[4], "data_batch_5.bin");
  EXPECT_EQ(cifar_files(CifarKind::kCifar10, false), (std::vector<std::string>{"test_batch.bin"}));
  EXPECT_EQ(cifar_files(CifarKind::kCifar100, true), (std::vector<std::string>{"train.bin"}));
  EXPECT_EQ(cifar_files(CifarKind::kCifar100, false), (std::vector<std::string>{"test.bin"}));
}

enum class Defect {
  kEmpty,
  kTruncatedRecord,
  kTrailingByte,
  kLabel10In10,
  kLabel255In10,
  kFine100In100,
  kCoarse20In100,
  kCifar100ReadAs10,
};

struct Case {
  Defect defect;
  CifarKind kind;
  const char* expected;  // substring of the error
};

std::vector<uint8_t> broken(Defect d) {
  auto c10 = make_cifar(CifarKind::kCifar10, 4);
  auto c100 = make_cifar(CifarKind::kCifar100, 4);
  switch (d) {
    case Defect::kEmpty:
      return {};
    case Defect::kTruncatedRecord:
      c10.pop_back();
      return c10;
    case Defect::kTrailingByte:
      c10.push_back(0);
      return c10;
    case Defect::kLabel10In10:
      c10[3073 * 2] = 10;
      return c10;
    case Defect::kLabel255In10:
      c10[3073 * 3] = 255;
      return c10;
    case Defect::kFine100In100:
      c100[3074 * 1 + 1] = 100;
      return c100;
    case Defect::kCoarse20In100:
      c100[3074 * 2] = 20;
      return c100;
    case Defect::kCifar100ReadAs10:
      return c100;
  }
  return c10;
}

class CifarBroken : public ::testing::TestWithParam<Case> {};

TEST_P(CifarBroken, IsRefusedWithTheRightError) {
  const Case c = GetParam();
  try {
    parse_cifar(broken(c.defect), c.kind, "'t.bin'");
    FAIL() << "accepted a file with defect " << static_cast<int>(c.defect);
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(c.expected), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'t.bin'"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(
    Defects, CifarBroken,
    ::testing::Values(
        Case{Defect::kEmpty, CifarKind::kCifar10, "empty file"},
        Case{Defect::kTruncatedRecord, CifarKind::kCifar10, "3 records and 3072 bytes left over"},
        Case{Defect::kTrailingByte, CifarKind::kCifar10, "4 records and 1 bytes left over"},
        Case{Defect::kLabel10In10, CifarKind::kCifar10, "record 2 has label 10, expected 0..9"},
        Case{Defect::kLabel255In10, CifarKind::kCifar10, "record 3 has label 255"},
        Case{Defect::kFine100In100, CifarKind::kCifar100, "record 1 has label 100, expected 0..99"},
        Case{Defect::kCoarse20In100, CifarKind::kCifar100, "record 2 has coarse label 20"},
        // 4 x 3074 bytes are not a whole number of 3073-byte records.
        Case{Defect::kCifar100ReadAs10, CifarKind::kCifar10, "3073-byte records"}),
    [](const ::testing::TestParamInfo<Case>& i) {
      return "defect" + std::to_string(static_cast<int>(i.param.defect));
    });

}  // namespace
}  // namespace corelocker
