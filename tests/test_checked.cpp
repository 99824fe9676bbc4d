#include <gtest/gtest.h>

#include <cstring>

#include "util/checked.h"
#include "util/hash.h"

namespace corelocker {

TEST(Checked, MultipliesWithinRange) { EXPECT_EQ(checked_mul(1u << 20, 1u << 20, "x"), uint64_t{1} << 40); }

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

}  // namespace corelocker
