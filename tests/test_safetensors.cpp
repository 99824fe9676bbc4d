// safetensors reader/writer: round trip, detection, and a matrix of hand-made broken files, one
// defect each, every one refused with the right error.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "formats/safetensors/safetensors.h"
#include "temp_dir.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {
namespace {

// A file from a header text and a data region of `data_size` bytes (0x5a each).
std::vector<uint8_t> framed(const std::string& header, uint64_t data_size, uint64_t length_field) {
  std::vector<uint8_t> b(8 + header.size() + data_size, 0x5a);
  std::memcpy(b.data(), &length_field, 8);
  if (!header.empty()) std::memcpy(b.data() + 8, header.data(), header.size());
  return b;
}
std::vector<uint8_t> framed(const std::string& header, uint64_t data_size) {
  return framed(header, data_size, header.size());
}

TEST(Safetensors, WriterRoundTripsThroughTheReader) {
  testing::TempDir dir;
  const std::vector<StSpec> specs = {{"conv.weight", "F32", {2, 1, 3, 3}},
                                     {"fc.weight", "BF16", {3, 4}},
                                     {"steps", "I64", {}},
                                     {"empty", "F16", {0, 5}},
                                     {"mask", "BOOL", {3}}};
  const std::string header = st_make_header(specs, {{"format", "pt"}});
  EXPECT_EQ((8 + header.size()) % 8, 0u);
  const uint64_t data = 18 * 4 + 12 * 2 + 8 + 0 + 3;
  {
    StWriter w(dir.file("m.safetensors"), header, data);
    std::vector<uint8_t> bytes(data);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i);
    w.write(bytes.data(), 10);
    w.write(bytes.data() + 10, data - 10);
    w.commit();
  }
  StFile f(dir.file("m.safetensors"));
  ASSERT_EQ(f.header.tensors.size(), 5u);
  EXPECT_EQ(f.header.tensors[0].name, "conv.weight");
  EXPECT_EQ(f.header.tensors[1].dtype, "BF16");
  EXPECT_EQ(f.header.tensors[1].begin, 72u);
  EXPECT_EQ(f.header.tensors[2].shape.size(), 0u);
  EXPECT_EQ(f.header.tensors[2].numel(), 1u);
  EXPECT_EQ(f.header.data_size, data);
  EXPECT_EQ(f.header.metadata.at("format"), "pt");
  EXPECT_EQ(f.tensor_data(f.header.tensors[1])[0], 72);
  EXPECT_TRUE(is_safetensors_file(dir.file("m.safetensors")));
}

TEST(Safetensors, WriterRefusesShortDataAndLeavesNothing) {
  testing::TempDir dir;
  const std::string header = st_make_header({{"a", "F32", {4}}}, {});
  {
    StWriter w(dir.file("short.safetensors"), header, 16);
    const uint8_t b[8] = {};
    w.write(b, 8);
    EXPECT_THROW(w.write(std::vector<uint8_t>(9).data(), 9), Error);
    EXPECT_THROW(w.commit(), Error);
  }
  EXPECT_FALSE(file_exists(dir.file("short.safetensors")));
}

TEST(Safetensors, DetectionByContentAndExtension) {
  testing::TempDir dir;
  write_file_atomic(dir.file("model.bin"),
                    framed(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 2));
  write_file_atomic(dir.file("other.bin"), std::string("PK\x03\x04 not a safetensors file"));
  write_file_atomic(dir.file("broken.safetensors"), std::string("xx"));
  EXPECT_TRUE(is_safetensors_file(dir.file("model.bin")));
  EXPECT_FALSE(is_safetensors_file(dir.file("other.bin")));
  EXPECT_TRUE(is_safetensors_file(dir.file("broken.safetensors")));  // then refused by the reader
  EXPECT_FALSE(is_safetensors_file(dir.file("missing.bin")));
}

TEST(Safetensors, ReaderOrdersTensorsByOffsetAndAcceptsPadding) {
  const std::string h =
      R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]},"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
      R"("__metadata__":{}}    )";
  auto bytes = framed(h, 5);
  StHeader st = parse_st_header(bytes.data(), bytes.size(), bytes.size(), "t");
  ASSERT_EQ(st.tensors.size(), 2u);
  EXPECT_EQ(st.tensors[0].name, "a");
  EXPECT_EQ(st.tensors[1].name, "b");
  EXPECT_TRUE(st.has_metadata);
}

struct Case {
  const char* name;
  std::vector<uint8_t> bytes;
  const char* expected;
};

std::string one(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return R"({"a":{"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" + offsets +
         "}}";
}

std::vector<Case> cases() {
  const std::string good = one("F32", "[2]", "[0,8]");
  std::vector<Case> c;
  c.push_back({"ShorterThanThePreamble", {1, 2, 3}, "at least 8"});
  c.push_back({"HeaderLengthZero", framed("", 0, 0), "header length is 0"});
  c.push_back({"HeaderLengthPastTheEnd", framed(good, 8, 1000), "runs past the end of the file"});
  c.push_back({"HeaderLengthAbsurd", framed(good, 8, uint64_t{1} << 40), "exceeds the limit"});
  c.push_back({"HeaderLengthMaxU64", framed(good, 8, ~uint64_t{0}), "exceeds the limit"});
  c.push_back({"BadJson", framed(R"({"a":{"dtype":"F32",)", 8), "not valid JSON"});
  c.push_back({"InvalidUtf8", framed("{\"\xff\xfe\":{}}", 0), "not valid JSON"});
  c.push_back({"JsonArray", framed("[1,2]", 0), "expected an object"});
  c.push_back({"UnknownDtype", framed(one("F31", "[2]", "[0,8]"), 8), "unknown dtype 'F31'"});
  c.push_back({"DtypeNotString", framed(R"({"a":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", 8),
               "dtype is not a string"});
  c.push_back({"ShapeSizeMismatch", framed(one("F32", "[3]", "[0,8]"), 8), "need 12"});
  c.push_back({"WrongDtypeSize", framed(one("F64", "[2]", "[0,8]"), 8), "need 16"});
  c.push_back(
      {"NegativeDimension", framed(one("F32", "[-2]", "[0,8]"), 8), "non-negative integer"});
  c.push_back(
      {"FractionalDimension", framed(one("F32", "[2.5]", "[0,8]"), 8), "non-negative integer"});
  c.push_back({"ShapeOverflow",
               framed(one("F32", "[4294967296,4294967296,4294967296]", "[0,8]"), 8),
               "size overflow"});
  c.push_back(
      {"OffsetsPastTheData", framed(one("F32", "[2]", "[8,16]"), 8), "past the data region"});
  c.push_back({"OffsetsReversed", framed(one("F32", "[0]", "[8,0]"), 8), "end before they begin"});
  c.push_back({"OffsetsNotAPair", framed(one("F32", "[2]", "[0,8,8]"), 8), "not [begin, end]"});
  c.push_back(
      {"Overlap",
       framed(
           R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
           6),
       "overlaps tensor 'a'"});
  c.push_back(
      {"Gap",
       framed(
           R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})",
           6),
       "gap in the data region"});
  c.push_back({"TrailingBytes", framed(good, 12), "trailing bytes"});
  c.push_back(
      {"DuplicateName",
       framed(
           R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
           4),
       "duplicate key 'a'"});
  c.push_back({"MetadataNotAnObject", framed(R"({"__metadata__":"x"})", 0),
               "__metadata__ is a JSON string"});
  c.push_back({"MetadataValueNotString", framed(R"({"__metadata__":{"epoch":3}})", 0),
               "'epoch' is a JSON number"});
  c.push_back({"MissingField", framed(R"({"a":{"dtype":"U8","shape":[2]}})", 0),
               "needs dtype, shape and data_offsets"});
  c.push_back({"UnknownField",
               framed(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"stride":[1]}})", 2),
               "unknown field 'stride'"});
  c.push_back({"EntryNotAnObject", framed(R"({"a":[1]})", 0), "expected an object"});
  c.push_back({"EmptyName", framed(R"({"":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 2),
               "empty name"});
  return c;
}

class StBroken : public ::testing::TestWithParam<Case> {};

TEST_P(StBroken, IsRefusedWithTheRightError) {
  const Case& c = GetParam();
  try {
    parse_st_header(c.bytes.data(), c.bytes.size(), c.bytes.size(), "file 't'");
    FAIL() << "accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(c.expected), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("file 't'", 0), 0u) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Defects, StBroken, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return std::string(i.param.name);
                         });

TEST(Safetensors, MappedReaderRefusesAHostileFileFromDisk) {
  testing::TempDir dir;
  write_file_atomic(dir.file("h.safetensors"), framed(one("F32", "[2]", "[0,8]"), 8, 1 << 20));
  EXPECT_THROW(StFile(dir.file("h.safetensors")), FormatError);
  write_file_atomic(dir.file("empty.safetensors"), std::string());
  EXPECT_THROW(StFile(dir.file("empty.safetensors")), FormatError);
  EXPECT_THROW(StFile(dir.file("missing.safetensors")), IoError);
}

TEST(Safetensors, MakeHeaderRefusesBadSpecs) {
  EXPECT_THROW(st_make_header({{"a", "F33", {1}}}, {}), UsageError);
  EXPECT_THROW(st_make_header({{"a", "F32", {1}}, {"a", "F32", {1}}}, {}), UsageError);
  EXPECT_THROW(st_make_header({{"__metadata__", "F32", {1}}}, {}), UsageError);
}

}  // namespace
}  // namespace corelocker
