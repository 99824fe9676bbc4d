// Hand-made broken IDX files, one defect each (the pattern of llama.cpp's test-gguf).
#include <gtest/gtest.h>
#include <zlib.h>

#include "data/idx.h"
#include "temp_dir.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {
namespace {

std::vector<uint8_t> make_idx(std::vector<uint32_t> dims, uint8_t type = 0x08) {
  std::vector<uint8_t> b = {0, 0, type, static_cast<uint8_t>(dims.size())};
  uint64_t n = 1;
  for (auto d : dims) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(d >> s));
    n *= d;
  }
  for (uint64_t i = 0; i < n; ++i) b.push_back(static_cast<uint8_t>(i * 7));
  return b;
}

void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}

enum class Defect {
  kEmpty,
  kBadMagic,
  kFloatType,
  kZeroDims,
  kFiveDims,
  kTruncatedHeader,
  kTruncatedData,
  kTrailingByte,
  kOverflowDims
};

struct Case {
  Defect defect;
  const char* expected;  // substring of the error
};

std::vector<uint8_t> broken(Defect d) {
  auto good = make_idx({3, 2, 2});
  switch (d) {
    case Defect::kEmpty:
      return {};
    case Defect::kBadMagic:
      good[1] = 1;
      return good;
    case Defect::kFloatType:
      good[2] = 0x0d;
      return good;
    case Defect::kZeroDims:
      good[3] = 0;
      return good;
    case Defect::kFiveDims:
      good[3] = 5;
      return good;
    case Defect::kTruncatedHeader:
      good.resize(9);
      return good;
    case Defect::kTruncatedData:
      good.pop_back();
      return good;
    case Defect::kTrailingByte:
      good.push_back(0);
      return good;
    case Defect::kOverflowDims: {
      auto b = make_idx({0, 0, 0, 0});
      for (size_t i = 4; i < 20; ++i) b[i] = 0xff;
      return b;
    }
  }
  return good;
}

class IdxBroken : public ::testing::TestWithParam<Case> {};

TEST_P(IdxBroken, IsRefusedWithTheRightError) {
  const Case c = GetParam();
  try {
    parse_idx(broken(c.defect), "'t.idx'");
    FAIL() << "accepted a file with defect " << static_cast<int>(c.defect);
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(c.expected), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'t.idx'"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Defects, IdxBroken,
                         ::testing::Values(Case{Defect::kEmpty, "truncated IDX header"},
                                           Case{Defect::kBadMagic, "bad IDX magic"},
                                           Case{Defect::kFloatType, "unsupported IDX element type"},
                                           Case{Defect::kZeroDims, "0 dimensions"},
                                           Case{Defect::kFiveDims, "5 dimensions"},
                                           Case{Defect::kTruncatedHeader, "truncated IDX header"},
                                           Case{Defect::kTruncatedData, "(truncated)"},
                                           Case{Defect::kTrailingByte, "(trailing bytes)"},
                                           Case{Defect::kOverflowDims, "overflow"}),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return "defect" + std::to_string(static_cast<int>(i.param.defect));
                         });

TEST(Idx, ParsesAValidFile) {
  IdxArray a = parse_idx(make_idx({3, 2, 2}), "x");
  EXPECT_EQ(a.dims, (std::vector<uint32_t>{3, 2, 2}));
  ASSERT_EQ(a.data.size(), 12u);
  EXPECT_EQ(a.data[5], 35);
}

TEST(Idx, ReadsGzipAndPlainFiles) {
  testing::TempDir dir;
  write_gz(dir.file("a.gz"), make_idx({4}));
  write_file_atomic(dir.file("a.raw"), make_idx({4}));
  EXPECT_EQ(read_idx_file(dir.file("a.gz")).data, read_idx_file(dir.file("a.raw")).data);
}

TEST(Idx, TruncatedGzipStreamIsRefused) {
  testing::TempDir dir;
  write_gz(dir.file("a.gz"), make_idx({1000, 10}));
  auto bytes = read_file(dir.file("a.gz"));
  bytes.resize(bytes.size() / 2);
  write_file_atomic(dir.file("cut.gz"), bytes);
  try {
    read_idx_file(dir.file("cut.gz"));
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("cut.gz"), std::string::npos) << e.what();
  }
}

TEST(Idx, CorruptGzipStreamIsRefused) {
  testing::TempDir dir;
  write_gz(dir.file("a.gz"), make_idx({1000, 10}));
  auto bytes = read_file(dir.file("a.gz"));
  for (size_t i = 20; i < 60; ++i) bytes[i] ^= 0x5a;
  write_file_atomic(dir.file("bad.gz"), bytes);
  EXPECT_THROW(read_idx_file(dir.file("bad.gz")), FormatError);
}

TEST(Idx, GzipBombGuard) {
  testing::TempDir dir;
  write_gz(dir.file("a.gz"), make_idx({100000}));
  EXPECT_THROW(read_maybe_gzip(dir.file("a.gz"), 1000), FormatError);
}

TEST(Idx, MissingFileIsAnIoError) { EXPECT_THROW(read_idx_file("/nonexistent/x.gz"), IoError); }

}  // namespace
}  // namespace corelocker
