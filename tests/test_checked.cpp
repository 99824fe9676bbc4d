#include <gtest/gtest.h>
#include <sodium.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "util/checked.h"
#include "util/hash.h"

namespace corelocker {

TEST(Checked, MultipliesWithinRange) {
  EXPECT_EQ(checked_mul(1u << 20, 1u << 20, "x"), uint64_t{1} << 40);
}

TEST(Checked, MultiplicationOverflowThrowsNamingTheField) {
  try {
    checked_mul(uint64_t{1} << 40, uint64_t{1} << 40, "dims of 'w'");
    FAIL() << "no exception";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("dims of 'w'"), std::string::npos);
  }
}

TEST(Checked, AdditionOverflowThrows) {
  EXPECT_EQ(checked_add(1, 2, "x"), 3u);
  EXPECT_THROW(checked_add(UINT64_MAX, 1, "x"), FormatError);
}

TEST(Hex, RoundTripsAndRejectsBadInput) {
  uint8_t in[4] = {0x00, 0x7f, 0xa0, 0xff}, out[4] = {};
  EXPECT_EQ(to_hex(in, 4), "007fa0ff");
  EXPECT_TRUE(from_hex("007FA0ff", out, 4));
  EXPECT_EQ(0, std::memcmp(in, out, 4));
  EXPECT_FALSE(from_hex("007fa0f", out, 4));
  EXPECT_FALSE(from_hex("007fa0fg", out, 4));
}

TEST(Hash, Blake2bMatchesKnownVector) {
  // BLAKE2b-256 of the empty string.
  Digest d = hash_bytes("", 0);
  EXPECT_EQ(to_hex(d), "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8");
}

// Hasher is our own BLAKE2b: its digests must be libsodium's, whatever the lengths and however
// the bytes are split between update() calls (block boundaries, the block kept for the end).
TEST(Hash, Blake2bIsLibsodiumsWhateverThePieces) {
  ASSERT_GE(sodium_init(), 0);
  Hasher abc;
  abc.update("abc", 3);
  EXPECT_EQ(to_hex(abc.finish()),
            "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319");
  std::vector<uint8_t> data(70000);
  uint32_t x = 12345;
  for (auto& b : data) b = static_cast<uint8_t>((x = x * 1103515245u + 12345u) >> 24);
  for (size_t n : {0, 1, 127, 128, 129, 255, 256, 257, 383, 384, 1000, 4096, 65537, 70000}) {
    Digest expected{};
    crypto_generichash(expected.data(), expected.size(), data.data(), n, nullptr, 0);
    for (size_t step : {size_t{0}, size_t{1}, size_t{7}, size_t{128}, size_t{129}, size_t{1000}}) {
      Hasher h;
      if (step == 0) {
        h.update(data.data(), n);
      } else {
        for (size_t at = 0, k = step; at < n; at += k, k = k % 300 + step)
          h.update(data.data() + at, std::min(k, n - at));
      }
      EXPECT_EQ(h.finish(), expected) << n << " bytes in pieces of " << step;
    }
  }
}

TEST(Hash, Blake3MatchesKnownVectorsAndStreams) {
  Blake3Hasher empty;
  EXPECT_EQ(to_hex(empty.finish()),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
  Blake3Hasher abc;
  abc.update("abc", 3);
  EXPECT_EQ(to_hex(abc.finish()),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
  // 100,000 bytes (many 1 KiB chunks, so the SIMD paths run) in one call and in uneven pieces
  std::vector<uint8_t> data(100000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i % 251);
  Blake3Hasher whole, pieces;
  whole.update(data.data(), data.size());
  for (size_t at = 0, step = 1; at < data.size(); at += step, step = step * 3 + 1) {
    pieces.update(data.data() + at, std::min(step, data.size() - at));
  }
  const Digest d = whole.finish();
  EXPECT_EQ(d, pieces.finish());
  EXPECT_NE(d, hash_bytes(data.data(), data.size()));
}

}  // namespace corelocker
