// Key file round trip and a matrix of hand-made broken files, one defect each.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <random>
#include <set>

#include "keyfile/key_file.h"
#include "temp_dir.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {
namespace {

std::vector<uint8_t> f32_bytes(std::vector<float> v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

KeyFile sample_key() {
  KeyFile k;
  k.header.locked_fingerprint.fill(0x11);
  k.header.original_fingerprint.fill(0x22);
  k.header.key_id.fill(0x33);
  k.header.criterion = Criterion::kBn;
  k.header.scope = Scope::kGlobal;
  k.header.ratio = 0.05;
  k.header.units = 2;
  k.entries.push_back({"a.weight", DType::kF32, {4, 3}, 3, {0, 2}, f32_bytes({1, 2, 3, 4, 5, 6})});
  k.entries.push_back({"b.weight", DType::kF32, {5}, 1, {1, 4}, f32_bytes({7, 8})});
  return k;
}

// Offsets in sample_key()'s serialisation (version 3, unencrypted). Entry 0's indices {0, 2}
// are the LEB128 bytes 0x00 (first index 0) and 0x01 (gap 2 minus 1) after their byte count.
constexpr size_t kVersion = 8, kHeaderSize = 12, kCriterion = 96, kRatio = 100, kRatioAfter = 108;
constexpr size_t kTier = 132, kEncryption = 136, kEntryCount = 204;
constexpr size_t kName0Len = 208, kDtype0 = 220, kNdim0 = 221, kUnitSize0 = 240, kCount0 = 248,
                 kIndexBytes0 = 256;
constexpr size_t kIndex0 = 264, kValue0 = 266, kName1 = 294;

void put16(std::vector<uint8_t>& b, size_t at, uint16_t v) { std::memcpy(&b[at], &v, 2); }
void put32(std::vector<uint8_t>& b, size_t at, uint32_t v) { std::memcpy(&b[at], &v, 4); }
void put64(std::vector<uint8_t>& b, size_t at, uint64_t v) { std::memcpy(&b[at], &v, 8); }

// Recomputes the trailing checksum, so that a structural defect is what the parser meets.
void reseal(std::vector<uint8_t>& b) {
  Digest d = hash_bytes(b.data(), b.size() - 32);
  std::memcpy(&b[b.size() - 32], d.data(), 32);
}

struct Case {
  const char* name;
  std::function<void(std::vector<uint8_t>&)> damage;
  const char* expected;
};

class KeyBroken : public ::testing::TestWithParam<Case> {};

TEST_P(KeyBroken, IsRefusedWithTheRightError) {
  auto bytes = serialize_key(sample_key());
  GetParam().damage(bytes);
  try {
    parse_key(bytes.data(), bytes.size(), "key 'k.clk'");
    FAIL() << GetParam().name << " was accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(GetParam().expected), std::string::npos)
        << GetParam().name << ": " << e.what();
    EXPECT_NE(std::string(e.what()).find("k.clk"), std::string::npos) << e.what();
  }
}

const Case kCases[] = {
    {"empty", [](auto& b) { b.clear(); }, "bad magic"},
    {"bad magic", [](auto& b) { b[0] = 'X'; }, "bad magic"},
    {"future version", [](auto& b) { put32(b, kVersion, 4); },
     "version 4, this build reads up to 3"},
    {"version zero", [](auto& b) { put32(b, kVersion, 0); }, "version 0"},
    {"header size", [](auto& b) { put32(b, kHeaderSize, 100); }, "header size 100"},
    {"truncated header", [](auto& b) { b.resize(50); }, "truncated"},
    {"truncated payload", [](auto& b) { b.resize(b.size() - 40); }, "(truncated)"},
    {"trailing byte", [](auto& b) { b.push_back(0); }, "(trailing bytes)"},
    {"flipped header byte", [](auto& b) { b[20] ^= 1; }, "checksum mismatch"},
    {"flipped value byte", [](auto& b) { b[kValue0 + 3] ^= 0x80; }, "checksum mismatch"},
    {"flipped checksum byte", [](auto& b) { b.back() ^= 1; }, "checksum mismatch"},
    {"unknown criterion",
     [](auto& b) {
       b[kCriterion] = 7;
       reseal(b);
     },
     "unknown criterion code 7"},
    {"ratio out of range",
     [](auto& b) {
       double r = 2.0;
       std::memcpy(&b[kRatio], &r, 8);
       reseal(b);
     },
     "outside [0, 1]"},
    {"ratio after above ratio",
     [](auto& b) {
       double r = 0.5;
       std::memcpy(&b[kRatioAfter], &r, 8);
       reseal(b);
     },
     "is not below the ratio"},
    {"tier beyond tier count",
     [](auto& b) {
       put16(b, kTier, 3);
       reseal(b);
     },
     "tier 3 of 1"},
    {"unknown encryption", [](auto& b) { b[kEncryption] = 9; }, "(trailing bytes)"},
    {"count larger than index block",
     [](auto& b) {
       put64(b, kCount0, 1000);
       reseal(b);
     },
     "1000 unit indices cannot fit in an index block of 2 bytes"},
    {"huge count",
     [](auto& b) {
       put64(b, kCount0, UINT64_MAX / 4);
       reseal(b);
     },
     "cannot fit in an index block"},
    {"index block larger than data",
     [](auto& b) {
       put64(b, kIndexBytes0, 1000);
       reseal(b);
     },
     "truncated while reading unit indices of 'a.weight'"},
    {"huge index block",
     [](auto& b) {
       put64(b, kIndexBytes0, UINT64_MAX);
       reseal(b);
     },
     "truncated while reading unit indices"},
    {"index block with a spare byte",
     [](auto& b) {
       put64(b, kIndexBytes0, 3);
       reseal(b);
     },
     "holds 2 indices in 2 bytes"},
    {"index out of range",
     [](auto& b) {
       b[kIndex0 + 1] = 3;
       reseal(b);
     },
     "unit index 4 out of range"},
    {"first index out of range",
     [](auto& b) {
       b[kIndex0] = 0x7f;
       reseal(b);
     },
     "out of range (tensor has 4 units)"},
    {"index runs past its block",
     [](auto& b) {
       b[kIndex0 + 1] = 0x81;
       reseal(b);
     },
     "ends inside index 1"},
    {"index not minimally encoded",
     [](auto& b) {
       b[kIndex0] = 0x80;
       b[kIndex0 + 1] = 0x00;
       reseal(b);
     },
     "index 0 is not minimally encoded"},
    {"duplicate tensor",
     [](auto& b) {
       b[kName1] = 'a';
       reseal(b);
     },
     "duplicate entry for tensor 'a.weight'"},
    {"unit size does not divide",
     [](auto& b) {
       put64(b, kUnitSize0, 5);
       reseal(b);
     },
     "does not divide"},
    {"unknown dtype",
     [](auto& b) {
       b[kDtype0] = 9;
       reseal(b);
     },
     "unknown dtype code 9"},
    {"zero dimensions",
     [](auto& b) {
       b[kNdim0] = 0;
       reseal(b);
     },
     "0 dimensions"},
    {"empty name",
     [](auto& b) {
       put32(b, kName0Len, 0);
       reseal(b);
     },
     "name length 0"},
    {"more entries than payload",
     [](auto& b) {
       put32(b, kEntryCount, 3);
       reseal(b);
     },
     "truncated while reading name length"},
    {"fewer entries than payload",
     [](auto& b) {
       put32(b, kEntryCount, 1);
       reseal(b);
     },
     "bytes left in the payload"},
};

INSTANTIATE_TEST_SUITE_P(Defects, KeyBroken, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           std::string n = i.param.name;
                           for (auto& c : n)
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

// A tensor of 2^64 - 1 weights gives an index of ten LEB128 bytes, whose last may only be 0 or 1.
TEST(KeyFile, IndexOverflowingSixtyFourBitsIsRefused) {
  KeyFile k = sample_key();
  k.entries.resize(1);
  k.entries[0] = {"huge.weight", DType::kF32, {UINT64_MAX}, 1, {uint64_t{1} << 63}, f32_bytes({1})};
  auto bytes = serialize_key(k);
  EXPECT_EQ(parse_key(bytes.data(), bytes.size(), "k").entries[0].units, k.entries[0].units);
  // name length 4 + 11, dtype..reserved 4, dims 8, unit size 8, count 8, block size 8
  const size_t block = kName0Len + 4 + 11 + 4 + 8 + 8 + 8 + 8;
  ASSERT_EQ(bytes[block + 9], 0x01);
  bytes[block + 9] = 0x02;
  reseal(bytes);
  try {
    parse_key(bytes.data(), bytes.size(), "k");
    FAIL() << "overflowing index accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("index 0 overflows 64 bits"), std::string::npos)
        << e.what();
  }
}

// Single weights at 5%: the gaps fit in one byte, so an index costs about one byte, not eight.
TEST(KeyFile, IndicesOfASparseLockTakeAboutOneByteEach) {
  KeyFile k = sample_key();
  k.entries.resize(1);
  KeyEntry& e = k.entries[0];
  e = {"fc.weight", DType::kF32, {1000, 1000}, 1, {}, {}};
  std::mt19937 rng(1);
  for (uint64_t i = 0; i < 1000000; ++i) {
    if (rng() % 20 == 0) e.units.push_back(i);
  }
  e.values.assign(e.units.size() * 4, 0);
  const auto bytes = serialize_key(k);
  const double per_index = double(bytes.size() - e.values.size() - 300) / double(e.units.size());
  EXPECT_LT(per_index, 1.1);
  EXPECT_EQ(parse_key(bytes.data(), bytes.size(), "k").entries[0].units, e.units);
}

// The in-memory unit list is the file's index block: the same bytes, read back as the same units,
// and it refuses what a file's block may not hold.
TEST(UnitList, HoldsIncreasingUnitsAsTheKeyFileDoes) {
  const std::vector<uint64_t> units = {0, 1, 127, 128, 300, 16511, 16512, uint64_t{1} << 40};
  UnitList l(units.begin(), units.end());
  EXPECT_EQ(l.size(), units.size());
  EXPECT_EQ(l.front(), 0u);
  EXPECT_EQ(l.back(), uint64_t{1} << 40);
  EXPECT_EQ(l.to_vector(), units);
  EXPECT_EQ(std::vector<uint64_t>(l.begin(), l.end()), units);
  // gaps minus 1: 0, 0, 125, 0, 171, 16210, 0, 2^40 - 16513 (1, 1, 1, 1, 2, 2, 1, 6 bytes)
  EXPECT_EQ(l.encoded().size(), 15u);
  const UnitList back =
      UnitList::decode(l.encoded().data(), l.encoded().size(), l.size(), uint64_t{1} << 41, "t");
  EXPECT_EQ(back, l);
  EXPECT_EQ(back.to_vector(), units);
  EXPECT_THROW(
      UnitList::decode(l.encoded().data(), l.encoded().size(), l.size(), uint64_t{1} << 40, "t"),
      FormatError);                                     // the last index is not below the limit
  EXPECT_THROW(l.push_back(uint64_t{1} << 40), Error);  // not above the last
  EXPECT_EQ(l.size(), units.size());                    // and nothing was added
  const std::vector<int64_t> negative = {-1, 3};
  EXPECT_THROW(UnitList(negative.begin(), negative.end()), Error);
  const std::vector<int> unsorted = {3, 2};
  EXPECT_THROW(UnitList(unsorted.begin(), unsorted.end()), Error);
  const UnitList none;
  EXPECT_TRUE(none.empty());
  EXPECT_EQ(none.begin(), none.end());
  EXPECT_NE(l.begin(), l.end());
  EXPECT_NE(UnitList({1, 2}), UnitList({1, 3}));
}

TEST(UnitList, MergeIsTheSortedUnion) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    std::set<uint64_t> a, b;
    for (int i = 0; i < 500; ++i) {
      a.insert(rng() % 5000);
      b.insert(rng() % (trial % 2 ? 100000 : 5000));
    }
    std::set<uint64_t> both = a;
    both.insert(b.begin(), b.end());
    const UnitList m = UnitList::merge(UnitList(a.begin(), a.end()), UnitList(b.begin(), b.end()));
    EXPECT_EQ(m.to_vector(), std::vector<uint64_t>(both.begin(), both.end()));
    EXPECT_EQ(m, UnitList(both.begin(), both.end()));
  }
  EXPECT_EQ(UnitList::merge({}, {4, 9}), UnitList({4, 9}));
  EXPECT_EQ(UnitList::merge({4, 9}, {}), UnitList({4, 9}));
}

TEST(KeyFile, RoundTrips) {
  KeyFile k = sample_key();
  auto bytes = serialize_key(k);
  KeyFile back = parse_key(bytes.data(), bytes.size(), "k");
  EXPECT_EQ(back.header.locked_fingerprint, k.header.locked_fingerprint);
  EXPECT_EQ(back.header.original_fingerprint, k.header.original_fingerprint);
  EXPECT_EQ(back.header.key_id, k.header.key_id);
  EXPECT_EQ(back.header.criterion, Criterion::kBn);
  EXPECT_EQ(back.header.scope, Scope::kGlobal);
  EXPECT_DOUBLE_EQ(back.header.ratio, 0.05);
  ASSERT_EQ(back.entries.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(back.entries[i].tensor, k.entries[i].tensor);
    EXPECT_EQ(back.entries[i].shape, k.entries[i].shape);
    EXPECT_EQ(back.entries[i].unit_size, k.entries[i].unit_size);
    EXPECT_EQ(back.entries[i].units, k.entries[i].units);
    EXPECT_EQ(back.entries[i].values, k.entries[i].values);
  }
  EXPECT_EQ(back.value_count(), 8u);
  // The offsets the broken-file matrix relies on.
  EXPECT_EQ(bytes[kEntryCount], 2);
  EXPECT_EQ(bytes[kName0Len], 8);
  EXPECT_EQ(bytes[kName1], 'b');
  EXPECT_EQ(back.header.version, kKeyVersion);
}

// A version-1 file, written the way corelocker 0.1 wrote it.
std::vector<uint8_t> v1_bytes(const KeyFile& k) {
  std::vector<uint8_t> b(kKeyMagic, kKeyMagic + 8);
  auto raw = [&](const void* p, size_t n) {
    b.insert(b.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
  };
  auto u8 = [&](uint8_t v) { b.push_back(v); };
  auto u32 = [&](uint32_t v) { raw(&v, 4); };
  auto u64 = [&](uint64_t v) { raw(&v, 8); };
  u32(1);
  u32(kKeyHeaderSizeV1);
  raw(k.header.locked_fingerprint.data(), 32);
  raw(k.header.original_fingerprint.data(), 32);
  raw(k.header.key_id.data(), 16);
  u8(static_cast<uint8_t>(k.header.criterion));
  u8(static_cast<uint8_t>(k.header.scope));
  u8(0);
  u8(0);
  raw(&k.header.ratio, 8);
  u64(k.header.seed);
  u64(k.header.units);
  u32(static_cast<uint32_t>(k.entries.size()));
  std::vector<uint8_t> payload;
  std::swap(b, payload);
  for (const auto& e : k.entries) {
    u32(static_cast<uint32_t>(e.tensor.size()));
    raw(e.tensor.data(), e.tensor.size());
    u8(static_cast<uint8_t>(e.dtype));
    u8(static_cast<uint8_t>(e.shape.size()));
    u8(0);
    u8(0);
    for (auto d : e.shape) u64(d);
    u64(e.unit_size);
    u64(e.units.size());
    for (auto u : e.units) u64(u);
    raw(e.values.data(), e.values.size());
  }
  std::swap(b, payload);
  u64(payload.size());
  raw(payload.data(), payload.size());
  Digest d = hash_bytes(b.data(), b.size());
  raw(d.data(), 32);
  return b;
}

TEST(KeyFile, Version1IsStillRead) {
  KeyFile k = sample_key();
  auto bytes = v1_bytes(k);
  ASSERT_EQ(bytes.size(),
            16u + kKeyHeaderSizeV1 + (bytes.size() - 16 - kKeyHeaderSizeV1 - 32) + 32);
  KeyFile back = parse_key(bytes.data(), bytes.size(), "v1");
  EXPECT_EQ(back.header.version, 1u);
  EXPECT_EQ(back.header.criterion, Criterion::kBn);
  EXPECT_DOUBLE_EQ(back.header.ratio, 0.05);
  EXPECT_EQ(back.header.tier, 1);
  EXPECT_EQ(back.header.tiers, 1);
  EXPECT_EQ(back.header.encryption, Encryption::kNone);
  ASSERT_EQ(back.entries.size(), 2u);
  EXPECT_EQ(back.entries[1].values, k.entries[1].values);
  bytes[100] ^= 1;  // still checksummed
  EXPECT_THROW(parse_key(bytes.data(), bytes.size(), "v1"), FormatError);
}

KeyCredentials passphrase(const std::string& p) {
  KeyCredentials c;
  c.kind = Encryption::kPassphrase;
  c.passphrase = p;
  set_kdf_preset(c, "min");  // fast Argon2id for tests
  return c;
}

TEST(KeyEncryption, PassphraseRoundTripHidesTheContents) {
  KeyFile k = sample_key();
  auto bytes = serialize_key(k, passphrase("correct horse"));
  // Names, indices and values live only inside the ciphertext.
  const std::string text(bytes.begin(), bytes.end());
  EXPECT_EQ(text.find("a.weight"), std::string::npos);
  KeyFile back = parse_key(bytes.data(), bytes.size(), "k", passphrase("correct horse"));
  EXPECT_EQ(back.header.encryption, Encryption::kPassphrase);
  ASSERT_EQ(back.entries.size(), 2u);
  EXPECT_EQ(back.entries[0].values, k.entries[0].values);
  // The header is readable without the passphrase.
  KeyHeader h = parse_key_header(bytes.data(), bytes.size(), "k");
  EXPECT_EQ(h.criterion, Criterion::kBn);
  EXPECT_EQ(h.locked_fingerprint, k.header.locked_fingerprint);
  EXPECT_NE(h.kdf_memlimit, 0u);
  // Two encryptions of the same key differ (fresh salt and nonce).
  EXPECT_NE(serialize_key(k, passphrase("correct horse")), bytes);
}

TEST(KeyEncryption, WrongPassphraseIsAnAuthError) {
  auto bytes = serialize_key(sample_key(), passphrase("correct horse"));
  try {
    parse_key(bytes.data(), bytes.size(), "k", passphrase("battery staple"));
    FAIL();
  } catch (const AuthError& e) {
    EXPECT_NE(std::string(e.what()).find("wrong passphrase or key file altered"),
              std::string::npos);
  }
}

TEST(KeyEncryption, EveryFlippedByteAfterTheFramingIsAnAuthError) {
  auto good = serialize_key(sample_key(), passphrase("pw"));
  // Every header field after the framing, and a sample of the ciphertext and tag.
  std::vector<size_t> positions;
  for (size_t i = 16; i < 196; ++i) positions.push_back(i);
  for (size_t i = 204; i < good.size(); i += 7) positions.push_back(i);
  positions.push_back(good.size() - 1);
  for (size_t i : positions) {
    if (i == kEncryption) continue;  // changes the framing itself: see below
    auto bytes = good;
    bytes[i] ^= 0x01;
    EXPECT_THROW(parse_key(bytes.data(), bytes.size(), "k", passphrase("pw")), AuthError)
        << "byte " << i;
  }
  auto bytes = good;
  bytes[kEncryption] = 0;  // pretend to be plain: no checksum where one would have to be
  EXPECT_THROW(parse_key(bytes.data(), bytes.size(), "k", passphrase("pw")), FormatError);
}

TEST(KeyEncryption, MissingOrMismatchedCredentialsAreUsageErrors) {
  auto bytes = serialize_key(sample_key(), passphrase("pw"));
  EXPECT_THROW(parse_key(bytes.data(), bytes.size(), "k"), UsageError);
  KeyCredentials secret;
  secret.kind = Encryption::kSecret;
  EXPECT_THROW(parse_key(bytes.data(), bytes.size(), "k", secret), UsageError);
}

TEST(KeyEncryption, RawSecret) {
  KeyCredentials secret;
  secret.kind = Encryption::kSecret;
  random_bytes(secret.secret.data(), 32);
  auto bytes = serialize_key(sample_key(), secret);
  EXPECT_EQ(parse_key(bytes.data(), bytes.size(), "k", secret).entries.size(), 2u);
  KeyCredentials other = secret;
  other.secret[0] ^= 1;
  EXPECT_THROW(parse_key(bytes.data(), bytes.size(), "k", other), AuthError);
}

TEST(KeyEncryption, HostileArgonCostIsRefusedBeforeRunning) {
  auto bytes = serialize_key(sample_key(), passphrase("pw"));
  put64(bytes, 148, uint64_t{1} << 50);  // memlimit: 1 PiB
  EXPECT_THROW(parse_key(bytes.data(), bytes.size(), "k", passphrase("pw")), AuthError);
}

TEST(KeyFile, SerializeRefusesInconsistentKeys) {
  KeyFile k = sample_key();
  k.entries[1].tensor = "a.weight";
  EXPECT_THROW(serialize_key(k), Error);
  k = sample_key();
  k.entries[0].values.pop_back();
  EXPECT_THROW(serialize_key(k), FormatError);
}

TEST(KeyFile, WritesAtomicallyAndReadsBack) {
  testing::TempDir dir;
  const uint64_t n = write_key_file(dir.file("k.clk"), sample_key());
  EXPECT_EQ(n, read_file(dir.file("k.clk")).size());
  EXPECT_EQ(read_key_file(dir.file("k.clk")).entries.size(), 2u);
}

TEST(KeyFile, NamesParse) {
  EXPECT_EQ(parse_criterion("bn"), Criterion::kBn);
  EXPECT_THROW(parse_criterion("l2"), UsageError);
  EXPECT_EQ(parse_scope("global"), Scope::kGlobal);
  EXPECT_THROW(parse_scope("model"), UsageError);
}

}  // namespace
}  // namespace corelocker
