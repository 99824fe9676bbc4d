// Streaming l1 lock / unlock of safetensors files: the right units go, restore is byte-exact, and
// wrong keys or altered files are refused with nothing written.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <tuple>

#include "formats/safetensors/safetensors.h"
#include "formats/safetensors/safetensors_lock.h"
#include "temp_dir.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {
namespace {

uint16_t to_bf16(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return static_cast<uint16_t>(b >> 16);
}
uint16_t to_f16(float f) {  // normal range only, truncating (test data is in range)
  uint32_t b;
  std::memcpy(&b, &f, 4);
  const uint32_t sign = (b >> 16) & 0x8000u;
  const int exp = static_cast<int>((b >> 23) & 0xff) - 127 + 15;
  if (exp <= 0) return static_cast<uint16_t>(sign);
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(exp) << 10) | ((b >> 13) & 0x3ffu));
}

struct Model {
  std::vector<StSpec> specs;
  std::vector<std::vector<uint8_t>> data;
};

// A small CNN as a user would save it: a stem conv, a BN, an F16 conv, a BF16 linear, a head,
// integer buffers. Values are quantised to a few levels so that scores tie.
Model sample_model(uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> level(-8, 8);
  auto f32 = [&](size_t n) {
    std::vector<uint8_t> b(n * 4);
    for (size_t i = 0; i < n; ++i) {
      const float v = static_cast<float>(level(rng)) / 8.0f;
      std::memcpy(&b[i * 4], &v, 4);
    }
    return b;
  };
  auto half = [&](size_t n, bool bf16) {
    std::vector<uint8_t> b(n * 2);
    for (size_t i = 0; i < n; ++i) {
      const float v = static_cast<float>(level(rng)) / 8.0f;
      const uint16_t h = bf16 ? to_bf16(v) : to_f16(v);
      std::memcpy(&b[i * 2], &h, 2);
    }
    return b;
  };
  Model m;
  auto add = [&](const std::string& n, const std::string& dt, std::vector<uint64_t> shape,
                 std::vector<uint8_t> d) {
    m.specs.push_back({n, dt, std::move(shape)});
    m.data.push_back(std::move(d));
  };
  add("conv1.weight", "F32", {4, 1, 3, 3}, f32(36));
  add("bn1.weight", "F32", {4}, f32(4));
  add("bn1.num_batches_tracked", "I64", {}, std::vector<uint8_t>(8, 1));
  add("layer1.conv.weight", "F16", {8, 4, 3, 3}, half(288, false));
  add("layer1.conv2.weight", "F32", {8, 8, 3, 3}, f32(576));
  add("fc1.weight", "BF16", {16, 32}, half(512, true));
  add("fc1.bias", "F32", {16}, f32(16));
  add("fc.weight", "F32", {10, 16}, f32(160));
  add("fc.bias", "F32", {10}, f32(10));
  return m;
}

void write_model(const std::string& path, const Model& m,
                 const std::map<std::string, std::string>& meta) {
  uint64_t total = 0;
  for (const auto& d : m.data) total += d.size();
  StWriter w(path, st_make_header(m.specs, meta), total);
  for (const auto& d : m.data) w.write(d.data(), d.size());
  w.commit();
}

float abs_value(const std::string& dtype, const uint8_t* p, uint64_t i) {
  if (dtype == "F32") {
    float f;
    std::memcpy(&f, p + 4 * i, 4);
    return std::fabs(f);
  }
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  if (dtype == "BF16") {
    const uint32_t b = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &b, 4);
    return std::fabs(f);
  }
  // F16, normal numbers and zero as the test writes them
  const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  if (exp == 0) return 0.0f;
  return std::ldexp(1.0f + static_cast<float>(mant) / 1024.0f, static_cast<int>(exp) - 15);
}

// The units a full sort picks: score descending, ties by (layer, index) in file order.
std::vector<uint64_t> expected_units(const StFile& f, const StTensor& t, uint64_t unit_size,
                                     uint64_t k) {
  const uint64_t n = t.numel() / unit_size;
  std::vector<std::pair<float, uint64_t>> s;
  for (uint64_t u = 0; u < n; ++u) {
    float sum = 0.0f;
    for (uint64_t e = 0; e < unit_size; ++e)
      sum += abs_value(t.dtype, f.tensor_data(t), u * unit_size + e);
    s.emplace_back(sum, u);
  }
  std::stable_sort(s.begin(), s.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<uint64_t> out;
  for (uint64_t i = 0; i < k; ++i) out.push_back(s[i].second);
  std::sort(out.begin(), out.end());
  return out;
}

class StLock : public ::testing::Test {
 protected:
  void SetUp() override {
    write_model(dir_.file("m.safetensors"), sample_model(7), {{"format", "pt"}});
  }
  StLockOutcome lock(const StLockOptions& o, const std::string& out = "locked.safetensors") {
    return lock_safetensors(dir_.file("m.safetensors"), dir_.file(out), o,
                            [&](const KeyFile& k) { write_key_file(dir_.file("key.clk"), k); });
  }
  testing::TempDir dir_;
};

TEST_F(StLock, LayerScopeTakesTheTopUnitsOfEachInnerLayerAndRestoresByteExact) {
  StLockOptions o;
  o.ratio = 0.1;
  const StLockOutcome r = lock(o);
  EXPECT_EQ(r.excluded, (std::vector<std::string>{"conv1.weight", "fc.weight"}));
  // 32 kernels -> 3, 64 kernels -> 6, 512 weights -> 51
  EXPECT_EQ(r.units, 3u + 6u + 51u);
  EXPECT_EQ(r.values, 3u * 9 + 6u * 9 + 51u);
  ASSERT_EQ(r.key.entries.size(), 3u);
  const StFile orig(dir_.file("m.safetensors"));
  const StFile locked(dir_.file("locked.safetensors"));
  EXPECT_EQ(locked.header.metadata.at("format"), "pt");
  EXPECT_EQ(locked.header.metadata.at("corelocker.criterion"), "l1");
  EXPECT_EQ(locked.header.metadata.at("corelocker.key_id"),
            to_hex(r.key.header.key_id.data(), r.key.header.key_id.size()));
  EXPECT_EQ((locked.header.data_start) % 8, 0u);
  const std::map<std::string, uint64_t> unit_size = {
      {"layer1.conv.weight", 9}, {"layer1.conv2.weight", 9}, {"fc1.weight", 1}};
  for (const auto& e : r.key.entries) {
    const StTensor& t = *std::find_if(orig.header.tensors.begin(), orig.header.tensors.end(),
                                      [&](const StTensor& x) { return x.name == e.tensor; });
    EXPECT_EQ(e.unit_size, unit_size.at(e.tensor));
    EXPECT_EQ(e.units.to_vector(), expected_units(orig, t, e.unit_size, e.units.size()))
        << e.tensor;
    // extracted positions are zero in the locked file, the rest is unchanged
    const size_t es = st_dtype_size(t.dtype);
    const uint8_t* lp = locked.tensor_data(t);
    const uint8_t* op = orig.tensor_data(t);
    const std::vector<uint64_t> units = e.units.to_vector();
    for (uint64_t u = 0, next = 0; u < t.numel() / e.unit_size; ++u) {
      const bool taken = next < units.size() && units[next] == u;
      const uint64_t bytes = e.unit_size * es;
      if (taken) {
        EXPECT_EQ(std::vector<uint8_t>(lp + u * bytes, lp + (u + 1) * bytes),
                  std::vector<uint8_t>(bytes, 0));
        EXPECT_EQ(std::memcmp(e.values.data() + next * bytes, op + u * bytes, bytes), 0);
        ++next;
      } else {
        EXPECT_EQ(std::memcmp(lp + u * bytes, op + u * bytes, bytes), 0);
      }
    }
  }
  EXPECT_NE(st_fingerprint(orig), st_fingerprint(locked));
  EXPECT_EQ(st_fingerprint(orig), r.key.header.original_fingerprint);
  EXPECT_EQ(st_fingerprint(locked), r.key.header.locked_fingerprint);

  const KeyFile key = read_key_file(dir_.file("key.clk"));
  const StUnlockOutcome u =
      unlock_safetensors(dir_.file("locked.safetensors"), dir_.file("restored.safetensors"), key);
  EXPECT_EQ(u.fingerprint, r.key.header.original_fingerprint);
  EXPECT_EQ(read_file(dir_.file("restored.safetensors")), read_file(dir_.file("m.safetensors")));
}

TEST_F(StLock, GlobalScopeAndIncludeIoAndNoMetadataStillRestoreByteExact) {
  write_model(dir_.file("m.safetensors"), sample_model(9), {});  // no __metadata__ at all
  StLockOptions o;
  o.scope = Scope::kGlobal;
  o.include_io = true;
  o.ratio = 0.05;
  const StLockOutcome r = lock(o);
  EXPECT_TRUE(r.excluded.empty());
  // conv kernels: 4+32+64 = 100 -> 5; linear weights: 512+160 = 672 -> 34
  EXPECT_EQ(r.units, 5u + 34u);
  const StFile locked(dir_.file("locked.safetensors"));
  EXPECT_EQ(locked.header.metadata.at("corelocker.scope"), "global");
  unlock_safetensors(dir_.file("locked.safetensors"), dir_.file("restored.safetensors"),
                     read_key_file(dir_.file("key.clk")));
  EXPECT_EQ(read_file(dir_.file("restored.safetensors")), read_file(dir_.file("m.safetensors")));
}

TEST_F(StLock, PaddedHeaderWithMetadataInTheMiddleRestoresByteExact) {
  // A header as another writer might lay it out: whitespace, metadata not first, space padding.
  const std::string header =
      "{ \"b.weight\" : {\"dtype\":\"F32\",\"shape\":[3,4],\"data_offsets\":[48,96]},\n"
      "  \"__metadata__\": { \"x\": \"y\" },\n"
      "  \"a.weight\":{\"dtype\":\"F32\",\"shape\":[3,4],\"data_offsets\":[0,48]},"
      "\"c.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[96,120]} }      ";
  const uint64_t n = header.size();
  std::vector<uint8_t> bytes(8 + n + 30 * 4);
  std::memcpy(bytes.data(), &n, 8);
  std::memcpy(bytes.data() + 8, header.data(), n);
  for (int i = 0; i < 30; ++i) {
    const float v = static_cast<float>(i % 7) - 3.0f;
    std::memcpy(bytes.data() + 8 + n + 4 * i, &v, 4);
  }
  write_file_atomic(dir_.file("m.safetensors"), bytes);
  StLockOptions o;
  o.ratio = 0.25;
  const StLockOutcome r = lock(o);
  EXPECT_EQ(r.excluded, (std::vector<std::string>{"a.weight", "c.weight"}));
  EXPECT_EQ(r.units, 3u);
  const StFile locked(dir_.file("locked.safetensors"));
  EXPECT_EQ(locked.header.metadata.at("x"), "y");
  unlock_safetensors(dir_.file("locked.safetensors"), dir_.file("restored.safetensors"),
                     read_key_file(dir_.file("key.clk")));
  EXPECT_EQ(read_file(dir_.file("restored.safetensors")), bytes);
}

TEST_F(StLock, KeyOfAnotherLockIsRefusedAndNothingIsWritten) {
  lock(StLockOptions{});
  const KeyFile first = read_key_file(dir_.file("key.clk"));
  lock(StLockOptions{}, "locked2.safetensors");  // same model, new key id
  EXPECT_THROW(unlock_safetensors(dir_.file("locked.safetensors"), dir_.file("r.safetensors"),
                                  read_key_file(dir_.file("key.clk"))),
               MismatchError);
  EXPECT_FALSE(file_exists(dir_.file("r.safetensors")));
  // A key with the right id but altered values: the restored fingerprint does not match.
  KeyFile bad = first;
  bad.entries[0].values[0] ^= 0x40;
  EXPECT_THROW(unlock_safetensors(dir_.file("locked.safetensors"), dir_.file("r.safetensors"), bad),
               MismatchError);
  EXPECT_FALSE(file_exists(dir_.file("r.safetensors")));
  EXPECT_NO_THROW(
      unlock_safetensors(dir_.file("locked.safetensors"), dir_.file("r.safetensors"), first));
}

TEST_F(StLock, AlteredLockedFileIsRefusedAndNothingIsWritten) {
  lock(StLockOptions{});
  auto bytes = read_file(dir_.file("locked.safetensors"));
  bytes[bytes.size() - 3] ^= 0x01;  // a byte of fc.bias
  write_file_atomic(dir_.file("altered.safetensors"), bytes);
  try {
    unlock_safetensors(dir_.file("altered.safetensors"), dir_.file("r.safetensors"),
                       read_key_file(dir_.file("key.clk")));
    FAIL() << "accepted";
  } catch (const MismatchError& e) {
    EXPECT_NE(std::string(e.what()).find("was modified"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(file_exists(dir_.file("r.safetensors")));
}

TEST_F(StLock, ChangedHeaderIsRefused) {
  lock(StLockOptions{});
  auto bytes = read_file(dir_.file("locked.safetensors"));
  const std::string text(bytes.begin() + 8, bytes.end());
  const size_t at = text.find("\"format\":\"pt\"");
  ASSERT_NE(at, std::string::npos);
  bytes[8 + at + 10] = 'q';  // "pt" -> "qt": still valid, but not the header that was locked
  write_file_atomic(dir_.file("altered.safetensors"), bytes);
  try {
    unlock_safetensors(dir_.file("altered.safetensors"), dir_.file("r.safetensors"),
                       read_key_file(dir_.file("key.clk")));
    FAIL() << "accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("header was changed after locking"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(file_exists(dir_.file("r.safetensors")));
}

TEST_F(StLock, RefusesToLockTwiceOrWithoutEligibleLayers) {
  lock(StLockOptions{});
  EXPECT_THROW(lock_safetensors(dir_.file("locked.safetensors"), dir_.file("x.safetensors"),
                                StLockOptions{}, [](const KeyFile&) {}),
               UsageError);
  EXPECT_THROW(unlock_safetensors(dir_.file("m.safetensors"), dir_.file("x.safetensors"),
                                  read_key_file(dir_.file("key.clk"))),
               UsageError);
  write_model(dir_.file("tiny.safetensors"),
              Model{{{"fc.weight", "F32", {2, 2}}}, {std::vector<uint8_t>(16)}}, {});
  EXPECT_THROW(lock_safetensors(dir_.file("tiny.safetensors"), dir_.file("x.safetensors"),
                                StLockOptions{}, [](const KeyFile&) {}),
               UsageError);
  EXPECT_FALSE(file_exists(dir_.file("x.safetensors")));
}

// Three linear layers of `dtype` (only the middle one eligible), each holding the 30 values `v`.
template <typename T>
Model three_linear_layers(const std::string& dtype, const std::vector<T>& v) {
  std::vector<uint8_t> d(v.size() * sizeof(T));
  std::memcpy(d.data(), v.data(), d.size());
  Model m;
  m.specs = {
      {"in.weight", dtype, {5, 6}}, {"mid.weight", dtype, {6, 5}}, {"out.weight", dtype, {5, 6}}};
  m.data = {d, d, d};
  return m;
}

TEST_F(StLock, F64AndNaNWeightsLockAndRestoreByteExact) {
  // A NaN unit is never preferred over a number; it still round-trips bit for bit.
  std::vector<double> v(6 * 5);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i % 11) - 5.0;
  v[7] = std::nan("");
  v[8] = -std::numeric_limits<double>::infinity();
  write_model(dir_.file("m.safetensors"), three_linear_layers("F64", v), {});
  StLockOptions o;
  o.ratio = 0.1;
  const StLockOutcome r = lock(o);
  ASSERT_EQ(r.key.entries.size(), 1u);
  EXPECT_EQ(r.key.entries[0].tensor, "mid.weight");
  EXPECT_EQ(r.key.entries[0].dtype, DType::kF64);
  // 30 weights -> 3: the infinity first, then the two 5.0 with the lowest indices
  EXPECT_EQ(r.key.entries[0].units.to_vector(), (std::vector<uint64_t>{0, 8, 10}));
  unlock_safetensors(dir_.file("locked.safetensors"), dir_.file("restored.safetensors"),
                     read_key_file(dir_.file("key.clk")));
  EXPECT_EQ(read_file(dir_.file("restored.safetensors")), read_file(dir_.file("m.safetensors")));
}

TEST_F(StLock, F32NaNAndInfinityRankAsInF64) {
  // F32 linear weights take a bit-level fast path; it must rank exactly as the general one.
  std::vector<float> v(6 * 5);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 11) - 5.0f;
  v[7] = std::nanf("");
  v[8] = -std::numeric_limits<float>::infinity();
  v[9] = -0.0f;
  write_model(dir_.file("m.safetensors"), three_linear_layers("F32", v), {});
  StLockOptions o;
  o.ratio = 0.1;
  const StLockOutcome r = lock(o);
  ASSERT_EQ(r.key.entries.size(), 1u);
  EXPECT_EQ(r.key.entries[0].units.to_vector(), (std::vector<uint64_t>{0, 8, 10}));
  unlock_safetensors(dir_.file("locked.safetensors"), dir_.file("restored.safetensors"),
                     read_key_file(dir_.file("key.clk")));
  EXPECT_EQ(read_file(dir_.file("restored.safetensors")), read_file(dir_.file("m.safetensors")));
}

// Layers large enough that the streaming selection compacts many times, with scores that tie
// everywhere: the units must be those of a full stable sort, in both scopes, and the lock must
// not depend on the number of threads.
TEST_F(StLock, LargeLayersWithTiesSelectAsAFullSortOnOneOrTwoThreads) {
  std::mt19937 rng(3);
  // 17 levels (kernel sums tie often) or 8193 (keys differ in their low bits, ~15 weights a level)
  auto f32 = [&](size_t n, int levels = 8) {
    std::uniform_int_distribution<int> level(-levels, levels);
    std::vector<uint8_t> b(n * 4);
    for (size_t i = 0; i < n; ++i) {
      const float x = static_cast<float>(level(rng)) / static_cast<float>(levels);
      std::memcpy(&b[i * 4], &x, 4);
    }
    return b;
  };
  Model m;
  m.specs = {{"stem.weight", "F32", {8, 1, 3, 3}},
             {"conv.weight", "F32", {96, 64, 3, 3}},
             {"big.weight", "F32", {250, 240}},
             {"head.weight", "F32", {10, 250}}};
  m.data = {f32(72), f32(96 * 64 * 9), f32(250 * 240, 4096), f32(2500)};
  write_model(dir_.file("m.safetensors"), m, {{"format", "pt"}});
  const StFile orig(dir_.file("m.safetensors"));
  auto tensor = [&](const std::string& name) -> const StTensor& {
    return *std::find_if(orig.header.tensors.begin(), orig.header.tensors.end(),
                         [&](const StTensor& x) { return x.name == name; });
  };
  // (tensor, unit) of the k best units of some layers (in file order) by a full stable sort
  auto expected = [&](const std::vector<std::string>& names, uint64_t unit_size) {
    std::vector<std::tuple<float, std::string, uint64_t>> s;
    for (const auto& name : names) {
      const StTensor& t = tensor(name);
      for (uint64_t u = 0; u < t.numel() / unit_size; ++u) {
        float sum = 0.0f;
        for (uint64_t e = 0; e < unit_size; ++e)
          sum += abs_value("F32", orig.tensor_data(t), u * unit_size + e);
        s.emplace_back(sum, name, u);
      }
    }
    const uint64_t k = static_cast<uint64_t>(std::llround(0.05 * static_cast<double>(s.size())));
    std::stable_sort(s.begin(), s.end(),
                     [](const auto& a, const auto& b) { return std::get<0>(a) > std::get<0>(b); });
    std::map<std::string, std::vector<uint64_t>> out;
    for (uint64_t i = 0; i < k; ++i) out[std::get<1>(s[i])].push_back(std::get<2>(s[i]));
    for (auto& [name, units] : out) std::sort(units.begin(), units.end());
    return out;
  };
  auto taken = [](const StLockOutcome& r) {
    std::map<std::string, std::vector<uint64_t>> out;
    for (const auto& e : r.key.entries) out[e.tensor] = e.units.to_vector();
    return out;
  };
  for (const Scope scope : {Scope::kLayer, Scope::kGlobal}) {
    SCOPED_TRACE(to_string(scope));
    StLockOptions o;
    o.scope = scope;
    o.include_io = true;  // global scope then ranks across two layers of each kind
    o.threads = 1;
    const StLockOutcome one = lock(o, "one.safetensors");
    const KeyFile one_key = read_key_file(dir_.file("key.clk"));
    o.threads = 2;
    const StLockOutcome two = lock(o, "two.safetensors");
    const KeyFile two_key = read_key_file(dir_.file("key.clk"));

    std::map<std::string, std::vector<uint64_t>> want;
    if (scope == Scope::kLayer) {  // the stem's 8 kernels give 0 units at 0.05: no entry
      for (const char* name : {"stem.weight", "conv.weight"}) {
        for (auto& [n, units] : expected({name}, 9)) want[n] = units;
      }
      for (const char* name : {"big.weight", "head.weight"}) {
        for (auto& [n, units] : expected({name}, 1)) want[n] = units;
      }
    } else {
      want = expected({"stem.weight", "conv.weight"}, 9);
      for (auto& [name, units] : expected({"big.weight", "head.weight"}, 1)) want[name] = units;
    }
    EXPECT_EQ(taken(one), want);
    EXPECT_EQ(taken(two), want);
    ASSERT_EQ(one.key.entries.size(), two.key.entries.size());
    for (size_t i = 0; i < one.key.entries.size(); ++i)
      EXPECT_EQ(one.key.entries[i].values, two.key.entries[i].values);
    EXPECT_EQ(one.key.header.locked_fingerprint, two.key.header.locked_fingerprint);
    EXPECT_EQ(one.key.header.original_fingerprint, st_fingerprint(orig, 1));
    EXPECT_EQ(one.key.header.original_fingerprint, st_fingerprint(orig, 2));
    EXPECT_EQ(
        unlock_safetensors(dir_.file("one.safetensors"), dir_.file("r1.safetensors"), one_key, 2)
            .fingerprint,
        one.key.header.original_fingerprint);
    EXPECT_EQ(
        unlock_safetensors(dir_.file("two.safetensors"), dir_.file("r2.safetensors"), two_key, 1)
            .fingerprint,
        one.key.header.original_fingerprint);
    EXPECT_EQ(read_file(dir_.file("r1.safetensors")), read_file(dir_.file("m.safetensors")));
    EXPECT_EQ(read_file(dir_.file("r2.safetensors")), read_file(dir_.file("m.safetensors")));
  }
}

// The documented draw of --criterion random (docs/key-format.md): SplitMix64's finaliser m, the
// FNV-1a hash of the tensor's name, key(u) = high 32 bits of m(m(seed ^ m(fnv)) + u), 0 read as 1;
// the k units with the highest keys, ties to the earlier unit.
uint64_t doc_mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
std::vector<uint64_t> doc_random_units(const std::string& name, uint64_t n, uint64_t k,
                                       uint64_t seed) {
  uint64_t fnv = 0xcbf29ce484222325ull;
  for (const char c : name) fnv = (fnv ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
  const uint64_t base = doc_mix(seed ^ doc_mix(fnv));
  std::vector<std::pair<uint32_t, uint64_t>> keys;
  for (uint64_t u = 0; u < n; ++u) {
    const auto key = static_cast<uint32_t>(doc_mix(base + u) >> 32);
    keys.emplace_back(key == 0 ? 1u : key, u);
  }
  std::stable_sort(keys.begin(), keys.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<uint64_t> out;
  for (uint64_t i = 0; i < k; ++i) out.push_back(keys[i].second);
  std::sort(out.begin(), out.end());
  return out;
}

TEST_F(StLock, RandomDrawsTheDocumentedUnitsForItsSeedAndRestoresByteExact) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto f32 = [&](size_t n) {
    std::vector<uint8_t> b(n * 4);
    for (size_t i = 0; i < n; ++i) {
      const float x = normal(rng);
      std::memcpy(&b[i * 4], &x, 4);
    }
    return b;
  };
  Model m;  // a large linear layer spans several of pass 2's chunks
  m.specs = {{"stem.weight", "F32", {8, 1, 3, 3}},
             {"conv.weight", "F32", {96, 64, 3, 3}},
             {"big.weight", "F32", {600, 1000}},
             {"head.weight", "F32", {10, 600}}};
  m.data = {f32(72), f32(96 * 64 * 9), f32(600 * 1000), f32(6000)};
  write_model(dir_.file("m.safetensors"), m, {{"format", "pt"}});
  auto taken = [](const StLockOutcome& r) {
    std::map<std::string, std::vector<uint64_t>> out;
    for (const auto& e : r.key.entries) out[e.tensor] = e.units.to_vector();
    return out;
  };
  StLockOptions o;
  o.criterion = Criterion::kRandom;
  o.seed = 11;
  o.ratio = 0.05;
  std::map<std::string, std::vector<uint64_t>> want;  // layer scope, first and last left alone
  want["conv.weight"] = doc_random_units("conv.weight", 96 * 64, 307, 11);
  want["big.weight"] = doc_random_units("big.weight", 600 * 1000, 30000, 11);
  o.threads = 1;
  const StLockOutcome one = lock(o, "one.safetensors");
  const KeyFile one_key = read_key_file(dir_.file("key.clk"));
  EXPECT_EQ(taken(one), want);
  EXPECT_EQ(one.key.header.criterion, Criterion::kRandom);
  EXPECT_EQ(one.key.header.seed, 11u);
  EXPECT_EQ(StFile(dir_.file("one.safetensors")).header.metadata.at("corelocker.criterion"),
            "random");
  o.threads = 2;
  const StLockOutcome two = lock(o, "two.safetensors");
  EXPECT_EQ(taken(two), want);
  EXPECT_EQ(two.key.header.locked_fingerprint, one.key.header.locked_fingerprint);
  // Not l1's units, and another seed draws others.
  StLockOptions l1 = o;
  l1.criterion = Criterion::kL1;
  EXPECT_NE(taken(lock(l1, "l1.safetensors")), want);
  o.seed = 12;
  const StLockOutcome other = lock(o, "other.safetensors");
  EXPECT_NE(taken(other), want);
  EXPECT_EQ(taken(other)["big.weight"], doc_random_units("big.weight", 600 * 1000, 30000, 12));
  // Scope global: one draw over the layers of each kind.
  o.scope = Scope::kGlobal;
  o.include_io = true;
  const StLockOutcome global = lock(o, "global.safetensors");
  EXPECT_EQ(global.units, 308u + 30300u);  // round(0.05 * 6152) kernels, round(0.05 * 606000)
  EXPECT_EQ(unlock_safetensors(dir_.file("one.safetensors"), dir_.file("r.safetensors"), one_key)
                .fingerprint,
            one.key.header.original_fingerprint);
  EXPECT_EQ(read_file(dir_.file("r.safetensors")), read_file(dir_.file("m.safetensors")));
}

// A header of tensors with the given names and shapes (F32), for the BatchNorm finder.
StHeader header_of(const std::vector<std::pair<std::string, std::vector<uint64_t>>>& tensors) {
  StHeader h;
  for (const auto& [name, shape] : tensors) h.tensors.push_back({name, "F32", shape, 0, 0});
  return h;
}
void add_bn(std::vector<std::pair<std::string, std::vector<uint64_t>>>& t, const std::string& path,
            uint64_t c) {
  for (const char* part : {".weight", ".bias", ".running_mean", ".running_var"})
    t.push_back({path + part, {c}});
}
std::map<std::string, std::string> fed_by(const StBatchNorms& norms) {
  std::map<std::string, std::string> out;
  for (const auto& bn : norms.layers) out[bn.path] = bn.producer + "|" + bn.producer_bias;
  return out;
}

TEST(StBatchNorms, PairByNameWithTheChannelsCheckedAndGiveUpWhenTheNamesBreakTheRule) {
  std::vector<std::pair<std::string, std::vector<uint64_t>>> t = {{"conv1.weight", {8, 1, 3, 3}}};
  add_bn(t, "bn1", 8);                                   // conv1 -> bn1
  t.push_back({"layer1.0.conv1.weight", {8, 8, 3, 3}});  // layer1.0.conv1 -> layer1.0.bn1
  add_bn(t, "layer1.0.bn1", 8);
  t.push_back({"layer1.0.downsample.0.weight", {16, 8, 1, 1}});  // a numbered sequence
  add_bn(t, "layer1.0.downsample.1", 16);
  t.push_back({"head.fc2.weight", {6, 16}});  // a linear layer and its bias
  t.push_back({"head.fc2.bias", {6}});
  add_bn(t, "head.bn2", 6);
  add_bn(t, "seq.0", 4);            // first of its sequence: nothing before it
  add_bn(t, "block.norm1", 8);      // not named bnN: no rule pairs it
  t.push_back({"ln.weight", {8}});  // no running statistics: not a BatchNorm
  t.push_back({"ln.bias", {8}});
  t.push_back({"short.weight", {8}});  // running_var of another length: not a BatchNorm
  t.push_back({"short.bias", {8}});
  t.push_back({"short.running_mean", {8}});
  t.push_back({"short.running_var", {7}});
  const StBatchNorms norms = st_batchnorms(header_of(t));
  EXPECT_EQ(norms.unpaired, "");
  EXPECT_EQ(fed_by(norms), (std::map<std::string, std::string>{
                               {"bn1", "conv1.weight|"},
                               {"layer1.0.bn1", "layer1.0.conv1.weight|"},
                               {"layer1.0.downsample.1", "layer1.0.downsample.0.weight|"},
                               {"head.bn2", "head.fc2.weight|head.fc2.bias"},
                               {"seq.0", "|"},
                               {"block.norm1", "|"}}));
  EXPECT_EQ(norms.layers.front().weight, "bn1.weight");
  EXPECT_EQ(norms.layers.front().channels, 8u);

  // Pre-activation: bn1 comes before conv1 and has the block's input channels; the first block
  // that changes the width shows it, and then nothing is paired.
  std::vector<std::pair<std::string, std::vector<uint64_t>>> pre;
  add_bn(pre, "layer1.0.bn1", 16);
  pre.push_back({"layer1.0.conv1.weight", {16, 16, 3, 3}});
  add_bn(pre, "layer1.0.bn2", 16);
  pre.push_back({"layer1.0.conv2.weight", {16, 16, 3, 3}});
  add_bn(pre, "layer2.0.bn1", 16);
  pre.push_back({"layer2.0.conv1.weight", {32, 16, 3, 3}});
  const StBatchNorms preact = st_batchnorms(header_of(pre));
  EXPECT_NE(preact.unpaired.find("BatchNorm 'layer2.0.bn1' has 16 channels but "
                                 "'layer2.0.conv1.weight' (F32 [32x16x3x3])"),
            std::string::npos)
      << preact.unpaired;
  ASSERT_EQ(preact.layers.size(), 3u);
  for (const auto& bn : preact.layers) EXPECT_EQ(bn.producer, "") << bn.path;

  // bnN: the first of convN, fcN, linearN that fits; one that does not fit is passed over when
  // another does.
  std::vector<std::pair<std::string, std::vector<uint64_t>>> two = {{"conv3.weight", {4, 2, 3, 3}},
                                                                    {"fc3.weight", {4, 9}},
                                                                    {"fc4.weight", {10, 9}},
                                                                    {"linear4.weight", {5, 9}}};
  add_bn(two, "bn3", 4);
  add_bn(two, "bn4", 5);
  const StBatchNorms both = st_batchnorms(header_of(two));
  EXPECT_EQ(both.unpaired, "");
  EXPECT_EQ(fed_by(both), (std::map<std::string, std::string>{{"bn3", "conv3.weight|"},
                                                              {"bn4", "linear4.weight|"}}));
}

// The file of the bn tests: a stem conv and its BatchNorm, an inner conv with a bias feeding a
// BatchNorm in BF16, a pre-activation style BatchNorm that nothing feeds, a head.
Model bn_model() {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(0.1f, 1.0f);
  auto f32 = [&](size_t n) {
    std::vector<uint8_t> b(n * 4);
    for (size_t i = 0; i < n; ++i) {
      const float x = (i % 3 == 0 ? -1.0f : 1.0f) * u(rng);
      std::memcpy(&b[i * 4], &x, 4);
    }
    return b;
  };
  auto bf16 = [&](size_t n) {
    std::vector<uint8_t> b(n * 2);
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = to_bf16((i % 2 == 0 ? -1.0f : 1.0f) * u(rng));
      std::memcpy(&b[i * 2], &h, 2);
    }
    return b;
  };
  Model m;
  auto add = [&](const std::string& n, const std::string& dt, std::vector<uint64_t> shape,
                 std::vector<uint8_t> d) {
    m.specs.push_back({n, dt, std::move(shape)});
    m.data.push_back(std::move(d));
  };
  add("conv1.weight", "F32", {4, 1, 3, 3}, f32(36));
  for (const char* p : {"bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"})
    add(p, "F32", {4}, f32(4));
  add("layer.conv2.weight", "F32", {8, 4, 3, 3}, f32(288));
  add("layer.conv2.bias", "F32", {8}, f32(8));
  for (const char* p :
       {"layer.bn2.weight", "layer.bn2.bias", "layer.bn2.running_mean", "layer.bn2.running_var"})
    add(p, "BF16", {8}, bf16(8));
  for (const char* p :
       {"pre.norm.weight", "pre.norm.bias", "pre.norm.running_mean", "pre.norm.running_var"})
    add(p, "F32", {8}, f32(8));
  add("fc.weight", "F32", {10, 8}, f32(80));
  return m;
}

// |gamma| of a BatchNorm channel, as the test wrote it.
float gamma_of(const StFile& f, const std::string& name, uint64_t c) {
  for (const auto& t : f.header.tensors)
    if (t.name == name) return abs_value(t.dtype, f.tensor_data(t), c);
  ADD_FAILURE() << "no " << name;
  return 0.0f;
}

TEST_F(StLock, BnTakesTheLargestGammasWithTheirFiltersAndRestoresByteExact) {
  write_model(dir_.file("m.safetensors"), bn_model(), {{"format", "pt"}});
  const StFile original(dir_.file("m.safetensors"));
  auto taken = [](const StLockOutcome& r) {
    std::map<std::string, std::pair<uint64_t, std::vector<uint64_t>>> out;
    for (const auto& e : r.key.entries) out[e.tensor] = {e.unit_size, e.units.to_vector()};
    return out;
  };
  // Scope global: the 5 of 20 channels with the largest |gamma|, by a full sort.
  std::vector<std::tuple<float, int, uint64_t>> all;  // (-|gamma|, BatchNorm, channel)
  const std::vector<std::pair<std::string, uint64_t>> bns = {
      {"bn1", 4}, {"layer.bn2", 8}, {"pre.norm", 8}};
  for (int b = 0; b < 3; ++b)
    for (uint64_t c = 0; c < bns[static_cast<size_t>(b)].second; ++c)
      all.emplace_back(-gamma_of(original, bns[static_cast<size_t>(b)].first + ".weight", c), b, c);
  std::sort(all.begin(), all.end());
  std::map<std::string, std::vector<uint64_t>> channels;
  for (size_t i = 0; i < 5; ++i)
    channels[bns[static_cast<size_t>(std::get<1>(all[i]))].first].push_back(std::get<2>(all[i]));
  for (auto& [name, list] : channels) std::sort(list.begin(), list.end());

  StLockOptions o;
  o.criterion = Criterion::kBn;
  o.scope = Scope::kGlobal;
  o.ratio = 0.25;
  o.threads = 1;
  const StLockOutcome r = lock(o);
  EXPECT_EQ(r.units, 5u);
  EXPECT_EQ(r.candidates, 20u);
  std::map<std::string, std::pair<uint64_t, std::vector<uint64_t>>> want;
  for (const auto& [bn, list] : channels) {
    want[bn + ".weight"] = {1, list};
    want[bn + ".bias"] = {1, list};
  }
  if (channels.count("layer.bn2")) {  // its filters and bias go along; conv1 is the first layer
    want["layer.conv2.weight"] = {36, channels["layer.bn2"]};
    want["layer.conv2.bias"] = {1, channels["layer.bn2"]};
  }
  ASSERT_TRUE(channels.count("layer.bn2")) << "the fixture should put a top gamma in layer.bn2";
  EXPECT_EQ(taken(r), want);
  EXPECT_EQ(r.values, 5u * 2 + channels["layer.bn2"].size() * 37);
  EXPECT_EQ(r.key.header.criterion, Criterion::kBn);
  // The locked file: the taken values are zero, everything else (running statistics too) as it was.
  const StFile locked(dir_.file("locked.safetensors"));
  for (size_t i = 0; i < original.header.tensors.size(); ++i) {
    const StTensor& a = original.header.tensors[i];
    const StTensor& b = locked.header.tensors[i];
    const size_t es = st_dtype_size(a.dtype);
    auto w = want.find(a.name);
    std::vector<uint8_t> expect(original.tensor_data(a), original.tensor_data(a) + a.nbytes());
    if (w != want.end()) {
      for (const uint64_t u : w->second.second)
        std::fill_n(expect.begin() + static_cast<std::ptrdiff_t>(u * w->second.first * es),
                    w->second.first * es, uint8_t{0});
    }
    EXPECT_EQ(std::vector<uint8_t>(locked.tensor_data(b), locked.tensor_data(b) + b.nbytes()),
              expect)
        << a.name;
  }
  const KeyFile key = read_key_file(dir_.file("key.clk"));
  EXPECT_EQ(unlock_safetensors(dir_.file("locked.safetensors"), dir_.file("r.safetensors"), key)
                .fingerprint,
            r.key.header.original_fingerprint);
  EXPECT_EQ(read_file(dir_.file("r.safetensors")), read_file(dir_.file("m.safetensors")));

  // Two threads: the same lock.
  o.threads = 2;
  EXPECT_EQ(taken(lock(o, "two.safetensors")), want);
  // --keep the conv: gamma and beta still go, the filters stay.
  o.keep = {"layer.conv2.weight"};
  const auto kept = taken(lock(o, "kept.safetensors"));
  EXPECT_EQ(kept.count("layer.conv2.weight"), 0u);
  EXPECT_EQ(kept.at("layer.bn2.weight").second, channels["layer.bn2"]);
  // --keep a BatchNorm by its path: none of its channels compete.
  o.keep = {"layer.bn2"};
  const StLockOutcome without = lock(o, "without.safetensors");
  EXPECT_EQ(without.candidates, 12u);
  EXPECT_EQ(without.kept, std::vector<std::string>{"layer.bn2"});
  for (const auto& e : without.key.entries) EXPECT_EQ(e.tensor.find("layer."), std::string::npos);
}

TEST_F(StLock, RandomBnUnitsDrawTheDocumentedChannelsAndBnNeedsABatchNorm) {
  write_model(dir_.file("m.safetensors"), bn_model(), {{"format", "pt"}});
  StLockOptions o;
  o.criterion = Criterion::kRandom;
  o.bn_units = true;
  o.seed = 21;
  o.ratio = 0.5;
  const StLockOutcome r = lock(o);
  std::map<std::string, std::vector<uint64_t>> got;
  for (const auto& e : r.key.entries) got[e.tensor] = e.units.to_vector();
  const auto bn1 = doc_random_units("bn1.weight", 4, 2, 21);
  const auto bn2 = doc_random_units("layer.bn2.weight", 8, 4, 21);
  const auto pre = doc_random_units("pre.norm.weight", 8, 4, 21);
  EXPECT_EQ(got, (std::map<std::string, std::vector<uint64_t>>{{"bn1.weight", bn1},
                                                               {"bn1.bias", bn1},
                                                               {"layer.conv2.weight", bn2},
                                                               {"layer.conv2.bias", bn2},
                                                               {"layer.bn2.weight", bn2},
                                                               {"layer.bn2.bias", bn2},
                                                               {"pre.norm.weight", pre},
                                                               {"pre.norm.bias", pre}}));
  EXPECT_TRUE(r.key.header.random_bn_units);
  EXPECT_EQ(r.key.header.seed, 21u);
  // A file without BatchNorms: refused, nothing written.
  write_model(dir_.file("m.safetensors"), sample_model(7), {{"format", "pt"}});
  o.criterion = Criterion::kBn;
  try {
    lock(o, "none.safetensors");
    ADD_FAILURE() << "no BatchNorm, yet locked";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("no BatchNorm to take channels of (0 found by name"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(dir_.file("none.safetensors")));
}

// The data region of a safetensors file (its tensors' bytes).
std::vector<uint8_t> data_of(const std::string& path) {
  const StFile f(path);
  return {f.map.data() + f.header.data_start, f.map.data() + f.map.size()};
}

// Tier keys turn the locked file, key by key, into the file each single-ratio lock writes (the
// same tensors' bytes), and the last one into the original, header included.
TEST_F(StLock, TiersUnlockStepByStepThroughTheSingleLocksStates) {
  std::mt19937 rng(13);
  std::uniform_int_distribution<int> level(-6, 6);  // few levels: scores tie
  auto f32 = [&](size_t n) {
    std::vector<uint8_t> b(n * 4);
    for (size_t i = 0; i < n; ++i) {
      const float x = static_cast<float>(level(rng)) / 4.0f;
      std::memcpy(&b[i * 4], &x, 4);
    }
    return b;
  };
  Model m;  // the large layer spans several of pass 2's chunks
  m.specs = {{"stem.weight", "F32", {8, 1, 3, 3}},
             {"conv.weight", "F32", {64, 32, 3, 3}},
             {"big.weight", "F32", {500, 1000}},
             {"head.weight", "F32", {10, 500}}};
  m.data = {f32(72), f32(64 * 32 * 9), f32(500 * 1000), f32(5000)};
  write_model(dir_.file("m.safetensors"), m, {{"format", "pt"}});
  const std::vector<double> ratios = {0.02, 0.05, 0.1};
  for (const Scope scope : {Scope::kLayer, Scope::kGlobal}) {
    for (const Criterion criterion : {Criterion::kL1, Criterion::kRandom}) {
      SCOPED_TRACE(std::string(to_string(scope)) + " " + to_string(criterion));
      StLockOptions o;
      o.criterion = criterion;
      o.scope = scope;
      o.seed = 3;
      o.threads = 1;
      std::vector<std::string> singles;
      for (const double r : ratios) {  // the single locks, state by state
        o.ratio = r;
        singles.push_back("single" + std::to_string(singles.size()) + ".safetensors");
        lock(o, singles.back());
      }
      o.tiers = {0.05, 0.1, 0.02};  // any order
      std::vector<KeyFile> keys;
      const StLockOutcome t =
          lock_safetensors(dir_.file("m.safetensors"), dir_.file("tiered.safetensors"), o,
                           [&](const KeyFile& k) { keys.push_back(k); });
      ASSERT_EQ(keys.size(), 3u);
      ASSERT_EQ(t.tier_keys.size(), 3u);
      EXPECT_EQ(data_of(dir_.file("tiered.safetensors")), data_of(dir_.file(singles[2])));
      for (size_t i = 0; i < 3; ++i) {
        const KeyHeader& kh = keys[i].header;
        EXPECT_EQ(kh.tier, i + 1);
        EXPECT_EQ(kh.tiers, 3u);
        EXPECT_EQ(kh.ratio, ratios[2 - i]);
        EXPECT_EQ(kh.ratio_after, i == 2 ? 0.0 : ratios[1 - i]);
        EXPECT_EQ(kh.key_id, keys[0].header.key_id);
        EXPECT_EQ(t.tier_keys[i].header.locked_fingerprint, kh.locked_fingerprint);
        EXPECT_GT(kh.units, 0u);
      }
      EXPECT_EQ(keys[0].header.locked_fingerprint,
                st_fingerprint(StFile(dir_.file("tiered.safetensors"))));
      // Key by key: each state is the single lock's tensors, fingerprinted as the keys say.
      std::string at = "tiered.safetensors";
      for (size_t i = 0; i < 3; ++i) {
        const std::string next = "step" + std::to_string(i) + ".safetensors";
        const StUnlockOutcome u =
            unlock_safetensors(dir_.file(at), dir_.file(next), keys[i], i % 2 + 1);
        EXPECT_EQ(u.fingerprint, keys[i].header.original_fingerprint);
        EXPECT_EQ(u.ratio_left, i == 2 ? 0.0 : ratios[1 - i]);
        if (i < 2) {
          EXPECT_EQ(data_of(dir_.file(next)), data_of(dir_.file(singles[1 - i])));
          const StFile state(dir_.file(next));
          EXPECT_EQ(st_fingerprint(state), keys[i + 1].header.locked_fingerprint);
          EXPECT_EQ(state.header.metadata.at("corelocker.ratio"),
                    i == 0 ? "0.050000000000000003" : "0.02");
          EXPECT_EQ(state.header.metadata.at("corelocker.original_fingerprint"),
                    to_hex(keys[2].header.original_fingerprint));
        }
        at = next;
      }
      EXPECT_EQ(read_file(dir_.file(at)), read_file(dir_.file("m.safetensors")));
      // All at once, or the last two on the first state.
      unlock_safetensors(dir_.file("tiered.safetensors"), dir_.file("all.safetensors"), keys, 2);
      EXPECT_EQ(read_file(dir_.file("all.safetensors")), read_file(dir_.file("m.safetensors")));
      unlock_safetensors(dir_.file("step0.safetensors"), dir_.file("rest.safetensors"),
                         std::vector<KeyFile>{keys[1], keys[2]});
      EXPECT_EQ(read_file(dir_.file("rest.safetensors")), read_file(dir_.file("m.safetensors")));
      // Out of order, or a tier that does not come next: refused, nothing written.
      EXPECT_THROW(unlock_safetensors(dir_.file("tiered.safetensors"), dir_.file("bad.safetensors"),
                                      std::vector<KeyFile>{keys[1], keys[0]}),
                   MismatchError);
      EXPECT_THROW(unlock_safetensors(dir_.file("tiered.safetensors"), dir_.file("bad.safetensors"),
                                      keys[1]),
                   MismatchError);
      EXPECT_FALSE(std::filesystem::exists(dir_.file("bad.safetensors")));
    }
  }
}

TEST_F(StLock, TiersOfBnUnitsAndTiersThatTakeTheSameUnitsAreRefused) {
  write_model(dir_.file("m.safetensors"), bn_model(), {{"format", "pt"}});
  StLockOptions o;
  o.criterion = Criterion::kBn;
  o.scope = Scope::kGlobal;
  o.tiers = {0.25, 0.5};
  std::vector<KeyFile> keys;
  lock_safetensors(dir_.file("m.safetensors"), dir_.file("tiered.safetensors"), o,
                   [&](const KeyFile& k) { keys.push_back(k); });
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys[0].header.units, 5u);  // 10 of 20 channels, 5 of them in tier 2's key
  EXPECT_EQ(keys[1].header.units, 5u);
  o.tiers.clear();
  o.ratio = 0.25;
  lock(o, "single.safetensors");
  unlock_safetensors(dir_.file("tiered.safetensors"), dir_.file("s1.safetensors"), keys[0]);
  EXPECT_EQ(data_of(dir_.file("s1.safetensors")), data_of(dir_.file("single.safetensors")));
  unlock_safetensors(dir_.file("s1.safetensors"), dir_.file("s2.safetensors"), keys[1]);
  EXPECT_EQ(read_file(dir_.file("s2.safetensors")), read_file(dir_.file("m.safetensors")));

  for (const std::vector<double>& bad :
       {std::vector<double>{0.25, 0.26}, {0.2, 0.2}, {0.0, 0.5}, {0.01, 0.5}, {0.5, 1.5}}) {
    o.tiers = bad;
    EXPECT_THROW(lock(o, "bad.safetensors"), UsageError) << bad[0] << "," << bad[1];
    EXPECT_FALSE(std::filesystem::exists(dir_.file("bad.safetensors")));
  }
}

TEST_F(StLock, FailingKeyWriteLeavesNoLockedFile) {
  EXPECT_THROW(
      lock_safetensors(dir_.file("m.safetensors"), dir_.file("l.safetensors"), StLockOptions{},
                       [](const KeyFile&) { throw IoError("disk full"); }),
      IoError);
  EXPECT_FALSE(file_exists(dir_.file("l.safetensors")));
}

TEST_F(StLock, FingerprintIgnoresLockMetadataButNotOtherMetadata) {
  const Digest a = st_fingerprint(StFile(dir_.file("m.safetensors")));
  write_model(dir_.file("n.safetensors"), sample_model(7), {{"format", "np"}});
  EXPECT_NE(a, st_fingerprint(StFile(dir_.file("n.safetensors"))));
  write_model(dir_.file("o.safetensors"), sample_model(7),
              {{"format", "pt"}, {"corelocker.note", "x"}});
  EXPECT_EQ(a, st_fingerprint(StFile(dir_.file("o.safetensors"))));
}

// Layers of a million weights take a guessed threshold from 65,536 evenly spread weights (every
// 16th here) before they are scored. With ties everywhere the units must still be those of a full
// stable sort; and on a layer built to fool the guess (every 16th weight large, so the guess
// lies above the k-th weight) the lock must notice and select again.
TEST_F(StLock, SampledThresholdSelectsAsAFullSortAndFallsBackWhenFooled) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> level(-4096, 4096);
  auto layer = [&](bool trap) {
    std::vector<uint8_t> b(1024 * 1024 * 4);
    for (size_t i = 0; i < 1024 * 1024; ++i) {
      const float x = trap && i % 16 == 0 ? 1.0f : static_cast<float>(level(rng)) / 8192.0f;
      std::memcpy(&b[i * 4], &x, 4);
    }
    return b;
  };
  Model m;
  m.specs = {{"ties.weight", "F32", {1024, 1024}}, {"trap.weight", "F32", {1024, 1024}}};
  m.data = {layer(false), layer(true)};
  write_model(dir_.file("m.safetensors"), m, {});
  StLockOptions o;
  o.include_io = true;
  o.ratio = 0.1;  // 104,858 units a layer: more than the 65,536 large weights of the trap
  const StLockOutcome r = lock(o);
  const StFile orig(dir_.file("m.safetensors"));
  ASSERT_EQ(r.key.entries.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    SCOPED_TRACE(orig.header.tensors[i].name);
    EXPECT_EQ(r.key.entries[i].tensor, orig.header.tensors[i].name);
    EXPECT_EQ(r.key.entries[i].units.to_vector(),
              expected_units(orig, orig.header.tensors[i], 1, 104858));
  }
  unlock_safetensors(dir_.file("locked.safetensors"), dir_.file("restored.safetensors"),
                     read_key_file(dir_.file("key.clk")));
  EXPECT_EQ(read_file(dir_.file("restored.safetensors")), read_file(dir_.file("m.safetensors")));
}

// Linear F32 weights are keyed sixteen at a time and, in the locked file's pass, in chunks of
// 262,144. Layers whose sizes are no multiple of either, with their largest weights in the last
// partial block, on both sides of a chunk boundary and tied with the k-th, must still give the
// units of a full stable sort, on one or two threads.
TEST_F(StLock, F32WeightsInPartialBlocksAndAcrossChunksSelectAsAFullSort) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> level(-64, 64);
  auto layer = [&](size_t n, const std::vector<size_t>& large) {
    std::vector<uint8_t> b(n * 4);
    for (size_t i = 0; i < n; ++i) {
      const float x = static_cast<float>(level(rng)) / 64.0f;
      std::memcpy(&b[i * 4], &x, 4);
    }
    for (size_t i : large) {
      const float x = i % 2 == 0 ? 2.0f : -2.0f;
      std::memcpy(&b[i * 4], &x, 4);
    }
    return b;
  };
  const size_t n = 1031 * 257;  // 264,967 = 16 * 16,560 + 7, and past one chunk of 262,144
  Model m;
  m.specs = {{"a.weight", "F32", {1031, 257}}, {"b.weight", "F32", {37, 7}}};
  m.data = {layer(n, {n - 1, n - 3, n - 7, 262143, 262144, 0, 15, 16}), layer(37 * 7, {258, 7})};
  write_model(dir_.file("m.safetensors"), m, {});
  const StFile orig(dir_.file("m.safetensors"));
  for (const unsigned threads : {1u, 2u}) {
    SCOPED_TRACE(threads);
    StLockOptions o;
    o.include_io = true;
    o.ratio = 0.05;
    o.threads = threads;
    const StLockOutcome r = lock(o);
    ASSERT_EQ(r.key.entries.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      const StTensor& t = orig.header.tensors[i];
      SCOPED_TRACE(t.name);
      const std::vector<uint64_t> want =
          expected_units(orig, t, 1, std::llround(0.05 * double(t.numel())));
      EXPECT_EQ(r.key.entries[i].units.to_vector(), want);
      for (size_t large :
           i == 0 ? std::vector<size_t>{n - 1, 262143, 262144, 0} : std::vector<size_t>{7, 258}) {
        EXPECT_TRUE(std::binary_search(want.begin(), want.end(), large)) << large;
      }
    }
    unlock_safetensors(dir_.file("locked.safetensors"), dir_.file("restored.safetensors"),
                       read_key_file(dir_.file("key.clk")), threads);
    EXPECT_EQ(read_file(dir_.file("restored.safetensors")), read_file(dir_.file("m.safetensors")));
  }
}

// A write that fails in the middle of the locked file's pass (here: the file size limit, EFBIG)
// unwinds while the helper thread may still have chunks queued: an IoError and nothing left
// behind. (The asan build runs it too; whether a job is still running at the throw is timing.)
TEST_F(StLock, WriteFailureInThePassLeavesNothing) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<uint8_t> big(1024 * 1024 * 4);
  for (size_t i = 0; i < big.size() / 4; ++i) {
    const float x = u(rng);
    std::memcpy(&big[i * 4], &x, 4);
  }
  Model m;
  m.specs = {{"a.weight", "F32", {1024, 1024}}};
  m.data = {big};
  write_model(dir_.file("m.safetensors"), m, {});
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old;
  small.rlim_cur = 3 << 20;  // the file is 4 MiB: the fourth chunk fails
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  for (const unsigned threads : {2u, 1u}) {
    StLockOptions o;
    o.include_io = true;
    o.threads = threads;
    EXPECT_THROW(lock(o), IoError) << threads;
    const auto left = std::distance(std::filesystem::directory_iterator(dir_.path()), {});
    EXPECT_EQ(left, 1) << "only the model, no temporary file";
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  StLockOptions o;
  o.include_io = true;
  EXPECT_EQ(lock(o).key.entries.size(), 1u);  // the same lock, without the limit
}

// The fingerprint as docs/key-format.md describes it, computed here from the file's bytes.
Digest documented_fingerprint(const StFile& f, StFingerprintScheme scheme) {
  std::vector<const StTensor*> order;
  for (const auto& t : f.header.tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const StTensor* a, const StTensor* b) { return a->name < b->name; });
  Hasher h;
  h.update_str(scheme == StFingerprintScheme::kV1 ? "corelocker-safetensors-fingerprint-v1"
                                                  : "corelocker-safetensors-fingerprint-v2");
  h.update_u64(order.size());
  for (const StTensor* t : order) {
    h.update_str(t->name);
    h.update_str(t->dtype);
    h.update_u64(t->shape.size());
    for (auto d : t->shape) h.update_u64(d);
    h.update_u64(t->nbytes());
    Digest d;
    if (scheme == StFingerprintScheme::kV1) {
      d = hash_bytes(f.tensor_data(*t), t->nbytes());
    } else {
      Blake3Hasher b3;
      b3.update(f.tensor_data(*t), t->nbytes());
      d = b3.finish();
    }
    h.update(d.data(), d.size());
  }
  uint64_t entries = 0;
  for (const auto& kv : f.header.metadata) entries += kv.first.rfind("corelocker.", 0) != 0;
  h.update_u64(entries);
  for (const auto& [k, v] : f.header.metadata) {
    if (k.rfind("corelocker.", 0) == 0) continue;
    h.update_str(k);
    h.update_str(v);
  }
  return h.finish();
}

TEST_F(StLock, FingerprintsFollowTheDocumentedSchemes) {
  const StFile orig(dir_.file("m.safetensors"));
  EXPECT_EQ(st_fingerprint_scheme(orig.header), StFingerprintScheme::kV2);
  EXPECT_EQ(st_fingerprint(orig), documented_fingerprint(orig, StFingerprintScheme::kV2));
  EXPECT_EQ(st_fingerprint(orig, 1, StFingerprintScheme::kV1),
            documented_fingerprint(orig, StFingerprintScheme::kV1));
  EXPECT_NE(st_fingerprint(orig, 1, StFingerprintScheme::kV1),
            st_fingerprint(orig, 1, StFingerprintScheme::kV2));

  const StLockOutcome r = lock(StLockOptions{});
  const StFile locked(dir_.file("locked.safetensors"));
  EXPECT_EQ(locked.header.metadata.at("corelocker.fingerprint_scheme"), "2");
  EXPECT_EQ(r.key.header.locked_fingerprint,
            documented_fingerprint(locked, StFingerprintScheme::kV2));
  EXPECT_EQ(r.key.header.original_fingerprint,
            documented_fingerprint(orig, StFingerprintScheme::kV2));
}

TEST_F(StLock, UnknownFingerprintSchemeIsRefused) {
  lock(StLockOptions{});
  std::vector<uint8_t> bytes = read_file(dir_.file("locked.safetensors"));
  const std::string entry = "\"corelocker.fingerprint_scheme\":\"2\"";
  auto at = std::search(bytes.begin(), bytes.end(), entry.begin(), entry.end());
  ASSERT_NE(at, bytes.end());
  *(at + static_cast<std::ptrdiff_t>(entry.size()) - 2) = '7';
  write_file_atomic(dir_.file("odd.safetensors"), bytes);
  try {
    st_fingerprint(StFile(dir_.file("odd.safetensors")));
    FAIL() << "scheme 7 accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("fingerprint_scheme '7'"), std::string::npos) << e.what();
  }
  const KeyFile key = read_key_file(dir_.file("key.clk"));
  EXPECT_THROW(unlock_safetensors(dir_.file("odd.safetensors"), dir_.file("r.safetensors"), key),
               FormatError);
  EXPECT_FALSE(file_exists(dir_.file("r.safetensors")));
}

// tests/fixtures/st-v1: a file locked by the build before scheme 2 (BLAKE2b tensor digests, no
// corelocker.fingerprint_scheme entry; a version 2 key) still unlocks, byte for byte, with its
// fingerprints checked.
TEST(StLockCompat, SchemeOneLockStillUnlocks) {
  const std::string dir = std::string(CORELOCKER_SOURCE_DIR) + "/tests/fixtures/st-v1/";
  testing::TempDir tmp;
  const StFile locked(dir + "locked.safetensors");
  EXPECT_EQ(locked.header.metadata.count("corelocker.fingerprint_scheme"), 0u);
  EXPECT_EQ(st_fingerprint_scheme(locked.header), StFingerprintScheme::kV1);
  const KeyFile key = read_key_file(dir + "locked.clk");
  EXPECT_EQ(key.header.version, 2u);  // u64 unit indices: the key format before version 3
  EXPECT_EQ(to_hex(st_fingerprint(locked)),
            "884ff4ec7fe3822ccc28182d508e29003d6c8bd0cb1bb3733bac063cc21200de");
  EXPECT_EQ(st_fingerprint(locked), key.header.locked_fingerprint);
  const StUnlockOutcome r =
      unlock_safetensors(dir + "locked.safetensors", tmp.file("r.safetensors"), key, 2);
  EXPECT_EQ(read_file(tmp.file("r.safetensors")), read_file(dir + "original.safetensors"));
  EXPECT_EQ(r.fingerprint, key.header.original_fingerprint);
  EXPECT_EQ(to_hex(r.fingerprint),
            "c791f1775196d9ad9e26cfb34fe5bf199b5f8519b5933652f0dc6a1ba72f8911");
  // the original itself is unlocked, so its own fingerprint is scheme 2
  EXPECT_NE(st_fingerprint(StFile(dir + "original.safetensors")), key.header.original_fingerprint);
}

}  // namespace
}  // namespace corelocker
