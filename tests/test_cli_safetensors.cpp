// `lock`, `unlock`, `fingerprint` and `inspect` on safetensors files written by the test itself:
// byte-exact restore, a Python reader of the format loads the locked file, hostile files and
// options that do not apply are refused with nothing written.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "cli_run.h"
#include "formats/safetensors/safetensors.h"
#include "keyfile/key_file.h"
#include "temp_dir.h"
#include "util/atomic_file.h"

namespace corelocker {
namespace {

using testing::CliRun;
using testing::run;

// Runs a shell command: exit code and stdout+stderr together.
CliRun shell(const std::string& cmd) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// A safetensors file of the given tensors, values drawn from N(0, 0.1) by `seed` (I64: 1, 2, ...).
void write_specs(const std::string& path, const std::vector<StSpec>& specs, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> w(0.0f, 0.1f);
  std::vector<uint8_t> data;
  for (const auto& s : specs) {
    uint64_t n = 1;
    for (auto d : s.shape) n *= d;
    for (uint64_t i = 0; i < n; ++i) {
      const float v = w(rng);
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      if (s.dtype == "F32") {
        data.insert(data.end(), reinterpret_cast<const uint8_t*>(&v),
                    reinterpret_cast<const uint8_t*>(&v) + 4);
      } else if (s.dtype == "BF16") {
        data.push_back(static_cast<uint8_t>(bits >> 16));
        data.push_back(static_cast<uint8_t>(bits >> 24));
      } else if (s.dtype == "F16") {  // normal range, truncated mantissa
        const uint32_t sign = (bits >> 16) & 0x8000u;
        const int e = static_cast<int>((bits >> 23) & 0xff) - 112;
        const uint16_t h = e <= 0 ? static_cast<uint16_t>(sign)
                                  : static_cast<uint16_t>(sign | (static_cast<uint32_t>(e) << 10) |
                                                          ((bits >> 13) & 0x3ffu));
        data.push_back(static_cast<uint8_t>(h));
        data.push_back(static_cast<uint8_t>(h >> 8));
      } else {  // I64
        const uint64_t one = i + 1;
        data.insert(data.end(), reinterpret_cast<const uint8_t*>(&one),
                    reinterpret_cast<const uint8_t*>(&one) + 8);
      }
    }
  }
  StWriter writer(path, st_make_header(specs, {{"format", "pt"}}), data.size());
  writer.write(data.data(), data.size());
  writer.commit();
}

// A small CNN in safetensors: stem conv, a norm without BatchNorm's running statistics, two inner
// convs, a hidden linear, a head, buffers.
void write_cnn(const std::string& path, uint32_t seed) {
  write_specs(path,
              {{"conv1.weight", "F32", {8, 1, 3, 3}},
               {"bn1.weight", "F32", {8}},
               {"bn1.running_mean", "F32", {8}},
               {"bn1.num_batches_tracked", "I64", {}},
               {"layer1.conv1.weight", "F32", {16, 8, 3, 3}},
               {"layer1.conv2.weight", "BF16", {16, 16, 3, 3}},
               {"fc1.weight", "F16", {32, 64}},
               {"fc.weight", "F32", {10, 32}},
               {"fc.bias", "F32", {10}}},
              seed);
}

// conv -> BatchNorm pairs as a post-activation network names them; with `preact`, BatchNorms
// before the convs of the same number (the second block widens, which shows it).
void write_bn_cnn(const std::string& path, bool preact) {
  std::vector<StSpec> specs = {{"conv1.weight", "F32", {8, 1, 3, 3}}};
  auto bn = [&](const std::string& p, uint64_t c) {
    for (const char* part : {".weight", ".bias", ".running_mean", ".running_var"})
      specs.push_back({p + part, "F32", {c}});
  };
  if (preact) {
    bn("layer1.bn1", 8);
    specs.push_back({"layer1.conv1.weight", "F32", {16, 8, 3, 3}});
  } else {
    bn("bn1", 8);
    specs.push_back({"layer1.conv1.weight", "F32", {16, 8, 3, 3}});
    bn("layer1.bn1", 16);
  }
  specs.push_back({"fc.weight", "F32", {10, 16}});
  write_specs(path, specs, 3);
}

class CliSt : public ::testing::Test {
 protected:
  void SetUp() override {
    write_cnn(dir_.file("m.safetensors"), 1);
    write_cnn(dir_.file("other.safetensors"), 2);
  }
  CliRun lock(const std::string& in, const std::string& out, const std::string& key,
              const std::string& extra = "") {
    return run("lock --model " + dir_.file(in) + " --ratio 0.1 --out " + dir_.file(out) +
               " --key-out " + dir_.file(key) + " " + extra);
  }
  CliRun unlock(const std::string& in, const std::string& key, const std::string& out,
                const std::string& extra = "") {
    return run("unlock --model " + dir_.file(in) + " --key " + dir_.file(key) + " --out " +
               dir_.file(out) + " " + extra);
  }
  bool same_bytes(const std::string& a, const std::string& b) {
    return std::system(("cmp -s " + dir_.file(a) + " " + dir_.file(b)).c_str()) == 0;
  }
  testing::TempDir dir_;
};

TEST_F(CliSt, LockChangesTheFingerprintAndUnlockRestoresTheFileByteForByte) {
  CliRun l = lock("m.safetensors", "locked.safetensors", "key.clk",
                  "--criterion l1");  // the paper's, per layer
  ASSERT_EQ(l.code, 0) << l.out;
  EXPECT_NE(l.out.find("left alone (first/last layer): conv1.weight"), std::string::npos) << l.out;
  EXPECT_NE(l.out.find("left alone (first/last layer): fc.weight"), std::string::npos) << l.out;
  // 128 + 256 kernels -> 13 + 26; 2048 weights -> 205
  EXPECT_NE(l.out.find("units extracted:      244 of 2432"), std::string::npos) << l.out;
  const CliRun fo = run("fingerprint " + dir_.file("m.safetensors"));
  const CliRun fl = run("fingerprint " + dir_.file("locked.safetensors"));
  ASSERT_EQ(fo.code, 0) << fo.out;
  EXPECT_EQ(fo.out.size(), 65u);
  EXPECT_NE(fo.out, fl.out);
  CliRun u = unlock("locked.safetensors", "key.clk", "restored.safetensors");
  ASSERT_EQ(u.code, 0) << u.out;
  EXPECT_NE(u.out.find(fo.out.substr(0, 64)), std::string::npos) << u.out;
  EXPECT_TRUE(same_bytes("m.safetensors", "restored.safetensors"));
  EXPECT_EQ(run("fingerprint " + dir_.file("restored.safetensors")).out, fo.out);
}

// Preprocessing options describe how to feed a model we run; a safetensors lock never runs one,
// so they are refused rather than silently dropped.
// Two spellings of one file are one file: a key written to "./x" and a locked file renamed onto
// "x" would leave the key destroyed, and an input replaced by its output is lost.
TEST_F(CliSt, OutputsNamingTheSameFileOtherwiseAreRefused) {
  const std::string d = dir_.path();
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases = {
      {"lock --model " + d + "/m.safetensors --out " + d + "/l.safetensors --key-out " + d +
           "/./l.safetensors",
       "name the same file"},
      {"lock --model " + d + "/m.safetensors --out " + d + "/../" +
           d.substr(d.find_last_of('/') + 1) + "/m.safetensors --key-out " + d + "/k.clk",
       "names the input file"},
      // the whole tool's own check (checkpoints, ONNX), reached before the model is read
      {"lock --model " + d + "/none.ckpt --out " + d + "/a.ckpt --key-out " + d + "/./a.ckpt",
       "name the same file"},
  };
  for (const auto& c : cases) {
    const CliRun r = run(c.args);
    EXPECT_EQ(r.code, 2) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.message), std::string::npos) << r.out;
  }
  EXPECT_FALSE(file_exists(dir_.file("l.safetensors")));
  EXPECT_FALSE(file_exists(dir_.file("k.clk")));
  ASSERT_EQ(lock("m.safetensors", "l.safetensors", "k.clk").code, 0);
  const CliRun r = run("unlock --model " + d + "/l.safetensors --key " + d + "/k.clk --out " + d +
                       "/./l.safetensors");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("names the input file"), std::string::npos) << r.out;
}

TEST_F(CliSt, PreprocessingOptionsAreRefused) {
  for (const std::string extra : {"--mean 0.5", "--std 0.3", "--resize 32", "--channels 3"}) {
    CliRun l = lock("m.safetensors", "locked.safetensors", "key.clk", extra);
    EXPECT_EQ(l.code, 2) << extra << ": " << l.out;
    EXPECT_NE(l.out.find(": not for '" + dir_.file("m.safetensors") +
                         "' (safetensors): a safetensors file holds tensors but no network"),
              std::string::npos)
        << l.out;
    EXPECT_FALSE(file_exists(dir_.file("locked.safetensors")));
    EXPECT_FALSE(file_exists(dir_.file("key.clk")));
  }
}

// --keep names layers to leave alone (file order does not say which layer is first): their
// tensors stay byte for byte and the key holds none of their values; a pattern that matches no
// layer is a usage error with nothing written.
TEST_F(CliSt, KeepLeavesTheNamedLayersAlone) {
  CliRun l = lock("m.safetensors", "locked.safetensors", "key.clk",
                  "--scope global --include-io --keep 'layer1.*' --keep fc1.weight");
  ASSERT_EQ(l.code, 0) << l.out;
  const std::set<std::string> kept = {"layer1.conv1.weight", "layer1.conv2.weight", "fc1.weight"};
  for (const auto& name : kept)
    EXPECT_NE(l.out.find("left alone (--keep): " + name), std::string::npos) << l.out;
  const CliRun k = run("inspect --json " + dir_.file("key.clk"));
  ASSERT_EQ(k.code, 0) << k.out;
  const auto entries = nlohmann::json::parse(k.out)["entries"];
  std::set<std::string> keyed;
  for (const auto& e : entries) keyed.insert(e["tensor"].get<std::string>());
  EXPECT_EQ(keyed, (std::set<std::string>{"conv1.weight", "fc.weight"}));
  const StFile before(dir_.file("m.safetensors")), after(dir_.file("locked.safetensors"));
  for (const auto& t : before.header.tensors) {
    const StTensor* u = nullptr;
    for (const auto& x : after.header.tensors)
      if (x.name == t.name) u = &x;
    ASSERT_NE(u, nullptr) << t.name;
    const bool same =
        std::memcmp(before.tensor_data(t), after.tensor_data(*u), t.end - t.begin) == 0;
    EXPECT_EQ(same, t.name != "conv1.weight" && t.name != "fc.weight") << t.name;
  }
  ASSERT_EQ(unlock("locked.safetensors", "key.clk", "restored.safetensors").code, 0);
  EXPECT_TRUE(same_bytes("m.safetensors", "restored.safetensors"));

  const CliRun none = lock("m.safetensors", "l2.safetensors", "k2.clk", "--keep 'nothing*'");
  EXPECT_EQ(none.code, 2) << none.out;
  EXPECT_NE(none.out.find("--keep 'nothing*' matches no layer"), std::string::npos) << none.out;
  EXPECT_FALSE(file_exists(dir_.file("l2.safetensors")));
  EXPECT_FALSE(file_exists(dir_.file("k2.clk")));
}

TEST_F(CliSt, DetectsTheFormatByContentWithoutTheExtension) {
  ASSERT_EQ(
      std::system(("cp " + dir_.file("m.safetensors") + " " + dir_.file("model.bin")).c_str()), 0);
  CliRun l = lock("model.bin", "locked.bin", "key.clk", "--scope global --include-io");
  ASSERT_EQ(l.code, 0) << l.out;
  EXPECT_EQ(l.out.find("left alone"), std::string::npos) << l.out;
  ASSERT_EQ(unlock("locked.bin", "key.clk", "restored.bin").code, 0);
  EXPECT_TRUE(same_bytes("model.bin", "restored.bin"));
}

// A 20-line reader of the published format in Python (the `safetensors` package is not in
// Debian): the locked file must load as tensors of the right shapes, with the lock metadata.
TEST_F(CliSt, LockedFileLoadsInAPythonReaderOfTheFormat) {
  if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "no /usr/bin/python3 torch";
  ASSERT_EQ(lock("m.safetensors", "locked.safetensors", "key.clk").code, 0);
  const std::string script = R"(
import json, struct, sys, torch
raw = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
header = json.loads(raw[8:8 + n])
meta = header.pop('__metadata__', {})
types = {'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16, 'I64': torch.int64}
zeros = 0
for name, info in header.items():
    b, e = info['data_offsets']
    t = torch.frombuffer(bytearray(raw[8 + n + b:8 + n + e]), dtype=types[info['dtype']]).reshape(info['shape'])
    assert list(t.shape) == info['shape'], name
    zeros += int((t == 0).sum())
try:
    from safetensors.torch import load_file
    assert len(load_file(sys.argv[1])) == len(header)
    print('stock safetensors: loaded')
except ImportError:
    pass
print('tensors', len(header), 'zeros', zeros, 'key_id', meta['corelocker.key_id'], 'format', meta['format'])
)";
  write_file_atomic(dir_.file("reader.py"), script);
  const CliRun p =
      shell("/usr/bin/python3 " + dir_.file("reader.py") + " " + dir_.file("locked.safetensors"));
  ASSERT_EQ(p.code, 0) << p.out;
  EXPECT_NE(p.out.find("tensors 9 "), std::string::npos) << p.out;
  EXPECT_NE(p.out.find(" format pt"), std::string::npos) << p.out;
  const size_t z = p.out.find("zeros ");
  ASSERT_NE(z, std::string::npos);
  EXPECT_GE(std::stoi(p.out.substr(z + 6)), 13 * 9 + 26 * 9 + 205) << p.out;
}

TEST_F(CliSt, EncryptedKeyNeedsTheRightPassphrase) {
  ::setenv("CL_ST_PASS", "correct horse", 1);
  ::setenv("CL_ST_WRONG", "wrong horse", 1);
  ASSERT_EQ(lock("m.safetensors", "locked.safetensors", "key.clk",
                 "--passphrase-env CL_ST_PASS --kdf min")
                .code,
            0);
  CliRun none = unlock("locked.safetensors", "key.clk", "r.safetensors");
  EXPECT_EQ(none.code, 2) << none.out;
  CliRun wrong =
      unlock("locked.safetensors", "key.clk", "r.safetensors", "--passphrase-env CL_ST_WRONG");
  EXPECT_EQ(wrong.code, 3) << wrong.out;
  EXPECT_FALSE(file_exists(dir_.file("r.safetensors")));
  CliRun right =
      unlock("locked.safetensors", "key.clk", "r.safetensors", "--passphrase-env CL_ST_PASS");
  ASSERT_EQ(right.code, 0) << right.out;
  EXPECT_TRUE(same_bytes("m.safetensors", "r.safetensors"));
}

TEST_F(CliSt, KeyOfAnotherModelIsRefusedAndWritesNothing) {
  ASSERT_EQ(lock("m.safetensors", "locked.safetensors", "key.clk").code, 0);
  ASSERT_EQ(lock("other.safetensors", "olocked.safetensors", "other.clk").code, 0);
  CliRun u = unlock("locked.safetensors", "other.clk", "r.safetensors");
  EXPECT_EQ(u.code, 1) << u.out;
  EXPECT_NE(u.out.find("key belongs to another model"), std::string::npos) << u.out;
  EXPECT_FALSE(file_exists(dir_.file("r.safetensors")));
}

TEST_F(CliSt, InspectShowsLayersAndTheLock) {
  ASSERT_EQ(lock("m.safetensors", "locked.safetensors", "key.clk").code, 0);
  CliRun i = run("inspect --json " + dir_.file("locked.safetensors"));
  ASSERT_EQ(i.code, 0) << i.out;
  EXPECT_NE(i.out.find("\"type\":\"locked safetensors model\""), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("\"key_id\":"), std::string::npos) << i.out;
  CliRun t = run("inspect " + dir_.file("m.safetensors"));
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("type: safetensors model"), std::string::npos) << t.out;
  EXPECT_NE(
      t.out.find("name=layer1.conv2.weight  kind=conv  units=256  unit_size=9  eligible=true"),
      std::string::npos)
      << t.out;
}

TEST_F(CliSt, OptionsThatDoNotApplyAreRefused) {
  // --criterion bn: the file's bn1 has no running statistics, so it has no BatchNorm
  for (const std::string extra :
       {"--tier-bands 10-50", "--eval", "--criterion bn", "--fill decoy --decoy-tries 2",
        "--fill decoy --decoy-target lowest", "--criterion random --units bn", "--units kernels"}) {
    CliRun l = lock("m.safetensors", "locked.safetensors", "key.clk", extra);
    EXPECT_EQ(l.code, 2) << extra << ": " << l.out;
    EXPECT_FALSE(file_exists(dir_.file("locked.safetensors"))) << extra;
    EXPECT_FALSE(file_exists(dir_.file("key.clk"))) << extra;
  }
}

// Hostile files, one defect each: refused with the defect named, no locked file, no key.
TEST_F(CliSt, HostileFilesAreRefusedAndNothingIsWritten) {
  auto put = [&](const std::string& name, const std::string& header, uint64_t data,
                 uint64_t length) {
    std::vector<uint8_t> b(8 + header.size() + data, 0);
    std::memcpy(b.data(), &length, 8);
    std::memcpy(b.data() + 8, header.data(), header.size());
    write_file_atomic(dir_.file(name), b);
  };
  const std::string two = R"({"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                          R"("b.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]}})";
  put("overlap.safetensors", two, 24, two.size());
  const std::string one = R"({"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  put("past.safetensors", one, 16, 4096);
  const std::string beyond = R"({"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]}})";
  put("beyond.safetensors", beyond, 16, beyond.size());
  const std::string dtype = R"({"a.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})";
  put("dtype.safetensors", dtype, 16, dtype.size());
  const std::string json = R"({"a.weight":{"dtype":"F32",)";
  put("json.safetensors", json, 16, json.size());
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"overlap.safetensors", "overlaps tensor 'a.weight'"},
      {"past.safetensors", "header length 4096 runs past the end of the file"},
      {"beyond.safetensors", "past the data region"},
      {"dtype.safetensors", "need 24"},
      {"json.safetensors", "not valid JSON"}};
  for (const auto& [file, message] : cases) {
    CliRun l = lock(file, "locked.safetensors", "key.clk");
    EXPECT_EQ(l.code, 1) << file << ": " << l.out;
    EXPECT_NE(l.out.find(message), std::string::npos) << file << ": " << l.out;
    EXPECT_FALSE(file_exists(dir_.file("locked.safetensors"))) << file;
    EXPECT_FALSE(file_exists(dir_.file("key.clk"))) << file;
    EXPECT_EQ(run("fingerprint " + dir_.file(file)).code, 1) << file;
  }
}

// `corelocker` serves safetensors files itself (front_main.cpp) and hands everything else to
// `corelocker-torch` beside it. Both must answer the same for these files.
std::string torch_binary() {
  const std::string front = CORELOCKER_BIN;
  return front.substr(0, front.find_last_of('/') + 1) + "corelocker-torch";
}

TEST_F(CliSt, DefaultLockRanksGloballyWithTheFirstAndLastLayerAsEveryFormatDoes) {
  const CliRun l = lock("m.safetensors", "locked.safetensors", "key.clk");
  ASSERT_EQ(l.code, 0) << l.out;
  EXPECT_EQ(l.out.find("left alone"), std::string::npos) << l.out;
  EXPECT_NE(l.out.find("with default (l1, global, first/last included)"), std::string::npos)
      << l.out;
  const CliRun k = run("inspect --json " + dir_.file("key.clk"));
  ASSERT_EQ(k.code, 0) << k.out;
  const auto j = nlohmann::json::parse(k.out);
  EXPECT_EQ(j["criterion"], "l1");
  EXPECT_EQ(j["scope"], "global");
  EXPECT_EQ(j["include_io"], true);
  // The first/last-layer rule of a named criterion can be turned around either way.
  const CliRun x = lock("m.safetensors", "x.safetensors", "x.clk", "--exclude-io");
  ASSERT_EQ(x.code, 0) << x.out;
  EXPECT_NE(x.out.find("left alone (first/last layer): conv1.weight"), std::string::npos) << x.out;
  EXPECT_EQ(run("lock --model " + dir_.file("m.safetensors") + " --include-io --exclude-io --out " +
                dir_.file("y.safetensors") + " --key-out " + dir_.file("y.clk"))
                .code,
            2);
  ASSERT_EQ(unlock("locked.safetensors", "key.clk", "restored.safetensors").code, 0);
  EXPECT_TRUE(same_bytes("restored.safetensors", "m.safetensors"));
}

// --criterion random: the seed decides the units (the same in both binaries), the key records it,
// and the key restores the file.
TEST_F(CliSt, RandomDrawsBySeedInBothBinaries) {
  const std::string whole = torch_binary();
  const std::string m = dir_.file("m.safetensors");
  const CliRun a = lock("m.safetensors", "a.safetensors", "a.clk", "--criterion random --seed 4");
  ASSERT_EQ(a.code, 0) << a.out;
  const CliRun b =
      shell(whole + " lock --model " + m + " --ratio 0.1 --out " + dir_.file("b.safetensors") +
            " --key-out " + dir_.file("b.clk") + " --criterion random --seed 4");
  ASSERT_EQ(b.code, 0) << b.out;
  const CliRun c = lock("m.safetensors", "c.safetensors", "c.clk", "--criterion random --seed 5");
  ASSERT_EQ(c.code, 0) << c.out;
  const std::string fa = run("fingerprint " + dir_.file("a.safetensors")).out;
  EXPECT_EQ(fa, run("fingerprint " + dir_.file("b.safetensors")).out);
  EXPECT_NE(fa, run("fingerprint " + dir_.file("c.safetensors")).out);
  const CliRun k = run("inspect --json " + dir_.file("a.clk"));
  ASSERT_EQ(k.code, 0) << k.out;
  const auto j = nlohmann::json::parse(k.out);
  EXPECT_EQ(j["criterion"], "random");
  EXPECT_EQ(j["seed"], 4);
  ASSERT_EQ(unlock("a.safetensors", "a.clk", "ra.safetensors").code, 0);
  EXPECT_TRUE(same_bytes("ra.safetensors", "m.safetensors"));
}

TEST_F(CliSt, BnPairsByNameInBothBinariesAndInspectShowsThePairs) {
  const std::string whole = torch_binary();
  write_bn_cnn(dir_.file("bn.safetensors"), false);
  write_bn_cnn(dir_.file("pre.safetensors"), true);
  const std::string m = dir_.file("bn.safetensors");
  const std::string opts = " --criterion bn --scope layer --threads 1";  // lock(): --ratio 0.1
  const CliRun a = lock("bn.safetensors", "a.safetensors", "a.clk", opts);
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_NE(a.out.find("units extracted:      3 of 24"), std::string::npos) << a.out;
  const CliRun b = shell(whole + " lock --model " + m + " --ratio 0.1 --out " +
                         dir_.file("b.safetensors") + " --key-out " + dir_.file("b.clk") + opts);
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_EQ(run("fingerprint " + dir_.file("a.safetensors")).out,
            run("fingerprint " + dir_.file("b.safetensors")).out);
  const auto key = nlohmann::json::parse(run("inspect --json " + dir_.file("a.clk")).out);
  EXPECT_EQ(key["criterion"], "bn");
  // 1 of bn1's 8 channels (conv1 is the first layer: its filters stay), 2 of layer1.bn1's 16 with
  // their filters
  std::map<std::string, std::pair<int, int>> entries;  // tensor -> (unit size, units)
  for (const auto& e : key["entries"]) entries[e["tensor"]] = {e["unit_size"], e["units"]};
  EXPECT_EQ(entries, (std::map<std::string, std::pair<int, int>>{{"bn1.weight", {1, 1}},
                                                                 {"bn1.bias", {1, 1}},
                                                                 {"layer1.conv1.weight", {72, 2}},
                                                                 {"layer1.bn1.weight", {1, 2}},
                                                                 {"layer1.bn1.bias", {1, 2}}}));
  ASSERT_EQ(unlock("a.safetensors", "a.clk", "ra.safetensors").code, 0);
  EXPECT_TRUE(same_bytes("ra.safetensors", "bn.safetensors"));
  // random bn units
  const CliRun r = lock("bn.safetensors", "r.safetensors", "r.clk",
                        "--criterion random --units bn --seed 3 --threads 1");
  ASSERT_EQ(r.code, 0) << r.out;
  ASSERT_EQ(unlock("r.safetensors", "r.clk", "rr.safetensors").code, 0);
  EXPECT_TRUE(same_bytes("rr.safetensors", "bn.safetensors"));

  const auto j = nlohmann::json::parse(run("inspect --json " + m).out);
  ASSERT_EQ(j["batchnorms"].size(), 2u) << j.dump();
  EXPECT_EQ(j["batchnorms"][1]["name"], "layer1.bn1");
  EXPECT_EQ(j["batchnorms"][1]["fed_by"], "layer1.conv1.weight");
  EXPECT_FALSE(j.contains("batchnorm_pairing"));
  const CliRun pre = run("inspect " + dir_.file("pre.safetensors"));
  ASSERT_EQ(pre.code, 0) << pre.out;
  EXPECT_NE(pre.out.find("batchnorm_pairing: BatchNorm 'layer1.bn1' has 8 channels but "
                         "'layer1.conv1.weight'"),
            std::string::npos)
      << pre.out;
  const CliRun lp = lock("pre.safetensors", "p.safetensors", "p.clk", opts);
  ASSERT_EQ(lp.code, 0) << lp.out;
  const auto pk = nlohmann::json::parse(run("inspect --json " + dir_.file("p.clk")).out);
  ASSERT_EQ(pk["entries"].size(), 2u) << pk.dump();  // gamma and beta of layer1.bn1 alone
  EXPECT_EQ(pk["entries"][0]["tensor"], "layer1.bn1.weight");
}

TEST_F(CliSt, TierKeysUnlockStepByStepInBothBinaries) {
  const std::string whole = torch_binary();
  const CliRun l =
      run("lock --model " + dir_.file("m.safetensors") + " --tiers 0.02,0.1 --out " +
          dir_.file("t.safetensors") + " --key-out " + dir_.file("k.clk") + " --criterion l1");
  ASSERT_EQ(l.code, 0) << l.out;
  EXPECT_NE(
      l.out.find("tier 1 of 2: " + dir_.file("k.tier1.clk") + " takes ratio 0.1000 -> 0.0200"),
      std::string::npos)
      << l.out;
  EXPECT_TRUE(file_exists(dir_.file("k.tier2.clk")));
  // tier 1 with the front: still locked at 0.02; tier 2 with the whole tool: the original
  const CliRun u1 = unlock("t.safetensors", "k.tier1.clk", "s.safetensors");
  ASSERT_EQ(u1.code, 0) << u1.out;
  EXPECT_NE(u1.out.find("still locked at ratio 0.0200 (1 tier key(s) to go)"), std::string::npos)
      << u1.out;
  const CliRun u2 = shell(whole + " unlock --model " + dir_.file("s.safetensors") + " --key " +
                          dir_.file("k.tier2.clk") + " --out " + dir_.file("r.safetensors"));
  ASSERT_EQ(u2.code, 0) << u2.out;
  EXPECT_TRUE(same_bytes("r.safetensors", "m.safetensors"));
  // both keys at once; the second key alone does not apply to the locked file
  ASSERT_EQ(
      run("unlock --model " + dir_.file("t.safetensors") + " --key " + dir_.file("k.tier1.clk") +
          " --key " + dir_.file("k.tier2.clk") + " --out " + dir_.file("r2.safetensors"))
          .code,
      0);
  EXPECT_TRUE(same_bytes("r2.safetensors", "m.safetensors"));
  const CliRun wrong = unlock("t.safetensors", "k.tier2.clk", "w.safetensors");
  EXPECT_EQ(wrong.code, 1) << wrong.out;
  EXPECT_NE(wrong.out.find("tier 2 is not the next to apply"), std::string::npos) << wrong.out;
  EXPECT_FALSE(file_exists(dir_.file("w.safetensors")));
}

// The front cannot draw decoys (LibTorch does): it hands `--fill decoy` to the whole tool, whose
// file holds no all-zero unit where the key took one (F32, BF16 and F16 tensors alike), and which
// the front unlocks byte for byte.
TEST_F(CliSt, DecoyFillIsHandedToTheWholeToolAndTheFrontUnlocksIt) {
  const CliRun l = lock("m.safetensors", "d.safetensors", "d.clk",
                        "--fill decoy --scope global --include-io --threads 1");
  ASSERT_EQ(l.code, 0) << l.out;
  const KeyFile key = read_key_file(dir_.file("d.clk"));
  EXPECT_EQ(key.header.fill, Fill::kDecoy);
  const StFile locked(dir_.file("d.safetensors"));
  std::set<std::string> dtypes;
  size_t units = 0, zero_units = 0;
  for (const auto& e : key.entries) {
    for (const auto& t : locked.header.tensors) {
      if (t.name != e.tensor) continue;
      dtypes.insert(t.dtype);
      const uint64_t unit_bytes = e.unit_size * (t.dtype == "F32" ? 4 : 2);
      const uint8_t* data = locked.tensor_data(t);
      for (uint64_t u : e.units) {
        ++units;
        const uint8_t* b = data + u * unit_bytes;
        // +0.0 or -0.0 in every element: all bytes zero but the sign bits
        bool zero = true;
        for (uint64_t i = 0; i < unit_bytes; ++i) {
          const bool high = (i + 1) % (t.dtype == "F32" ? 4 : 2) == 0;
          zero = zero && (b[i] & (high ? 0x7f : 0xff)) == 0;
        }
        zero_units += zero;
      }
    }
  }
  EXPECT_EQ(dtypes, (std::set<std::string>{"F32", "BF16", "F16"}));
  EXPECT_GT(units, 0u);
  EXPECT_EQ(zero_units, 0u) << "of " << units;
  const CliRun u = unlock("d.safetensors", "d.clk", "r.safetensors");
  ASSERT_EQ(u.code, 0) << u.out;
  EXPECT_TRUE(same_bytes("r.safetensors", "m.safetensors"));
  // Two decoy locks differ (a random draw each); a zero lock of the same units differs from both.
  ASSERT_EQ(lock("m.safetensors", "d2.safetensors", "d2.clk",
                 "--fill decoy --scope global --include-io --threads 1")
                .code,
            0);
  ASSERT_EQ(
      lock("m.safetensors", "z.safetensors", "z.clk", "--scope global --include-io --threads 1")
          .code,
      0);
  // (fingerprints leave the random key id out)
  const std::string fd = run("fingerprint " + dir_.file("d.safetensors")).out;
  EXPECT_NE(fd, run("fingerprint " + dir_.file("d2.safetensors")).out);
  EXPECT_NE(fd, run("fingerprint " + dir_.file("z.safetensors")).out);
  EXPECT_EQ(read_key_file(dir_.file("z.clk")).entries.size(), key.entries.size());
}

// `detect` audits a locked safetensors file against its key (the front hands it to the whole
// tool): zeros give every unit away, decoys train the learned detector on relocks of the file,
// and a key of another file is refused.
TEST_F(CliSt, DetectAuditsTheLockedFileAgainstItsKey) {
  const std::string opts = "--scope global --include-io --threads 1";
  ASSERT_EQ(lock("m.safetensors", "z.safetensors", "z.clk", opts).code, 0);
  ASSERT_EQ(lock("m.safetensors", "d.safetensors", "d.clk", "--fill decoy " + opts).code, 0);
  ASSERT_EQ(lock("other.safetensors", "o.safetensors", "o.clk", opts).code, 0);
  auto detect = [&](const std::string& model, const std::string& key) {
    return run("detect --model " + dir_.file(model) + " --key " + dir_.file(key) +
               " --permutations 20 --learned-locks 1 --json");
  };
  const CliRun z = detect("z.safetensors", "z.clk");
  ASSERT_EQ(z.code, 0) << z.out;
  const auto zj = nlohmann::json::parse(z.out);
  EXPECT_EQ(zj["fill"], "zero");
  EXPECT_FALSE(zj["at_chance"].get<bool>()) << z.out;
  for (const auto& d : zj["detectors"]) {
    if (d["name"] == "position") continue;  // the criterion, not the fill
    EXPECT_GE(d["precision"].get<double>(), 0.99) << d.dump();
  }
  // every tensor the key took units of is scored (F32, BF16 and F16)
  EXPECT_EQ(zj["layers"].size(), read_key_file(dir_.file("z.clk")).entries.size());
  const CliRun d = detect("d.safetensors", "d.clk");
  ASSERT_EQ(d.code, 0) << d.out;
  const auto dj = nlohmann::json::parse(d.out);
  EXPECT_EQ(dj["fill"], "decoy");
  EXPECT_GT(dj["learned"]["training_kernels"].get<int64_t>(), 0) << d.out;
  const CliRun wrong = detect("z.safetensors", "o.clk");
  EXPECT_EQ(wrong.code, 1) << wrong.out;
  EXPECT_NE(wrong.out.find("does not apply to '" + dir_.file("z.safetensors") + "'"),
            std::string::npos)
      << wrong.out;
}

TEST_F(CliSt, FrontAndWholeToolGiveTheSameAnswers) {
  const std::string whole = torch_binary();
  const std::string m = dir_.file("m.safetensors");
  for (const std::string& args : {"fingerprint " + m, "inspect " + m, "inspect --json " + m}) {
    const CliRun a = run(args), b = shell(whole + " " + args);
    EXPECT_EQ(a.code, 0) << a.out;
    EXPECT_EQ(a.out, b.out) << args;
  }
  const std::string opts = " --scope global --include-io --threads 1";
  const CliRun la = lock("m.safetensors", "a.safetensors", "a.clk", opts);  // --ratio 0.1
  ASSERT_EQ(la.code, 0) << la.out;
  const CliRun lb = shell(whole + " lock --model " + m + " --ratio 0.1 --out " +
                          dir_.file("b.safetensors") + " --key-out " + dir_.file("b.clk") + opts);
  ASSERT_EQ(lb.code, 0) << lb.out;
  // the same units and values (only the random key id differs; fingerprints leave it out)
  EXPECT_EQ(run("fingerprint " + dir_.file("a.safetensors")).out,
            shell(whole + " fingerprint " + dir_.file("b.safetensors")).out);
  EXPECT_EQ(std::filesystem::file_size(dir_.file("a.clk")),
            std::filesystem::file_size(dir_.file("b.clk")));
  auto stats = [](const std::string& out) {  // "units extracted ... key size" as printed
    const auto a = out.find("units extracted"), b = out.find("locked model:");
    return a == std::string::npos || b == std::string::npos ? std::string() : out.substr(a, b - a);
  };
  EXPECT_FALSE(stats(la.out).empty()) << la.out;
  EXPECT_EQ(stats(la.out), stats(lb.out));
  // each key unlocks the other binary's output
  ASSERT_EQ(unlock("a.safetensors", "a.clk", "ra.safetensors", "--threads 2").code, 0);
  const CliRun ub = shell(whole + " unlock --model " + dir_.file("b.safetensors") + " --key " +
                          dir_.file("b.clk") + " --out " + dir_.file("rb.safetensors"));
  ASSERT_EQ(ub.code, 0) << ub.out;
  EXPECT_TRUE(same_bytes("ra.safetensors", "m.safetensors"));
  EXPECT_TRUE(same_bytes("rb.safetensors", "m.safetensors"));
}

TEST_F(CliSt, FrontHandsOverHelpOtherOptionsAndOtherCommands) {
  const CliRun help = run("lock --help");
  EXPECT_EQ(help.code, 0) << help.out;
  EXPECT_NE(help.out.find("--tier-bands"), std::string::npos)
      << "the whole tool's help: " << help.out;
  const CliRun tiers = lock("m.safetensors", "l.safetensors", "l.clk", "--tier-bands 10-50");
  EXPECT_EQ(tiers.code, 2) << tiers.out;
  EXPECT_NE(tiers.out.find("(safetensors): tier bands are calibrated by evaluating the model"),
            std::string::npos)
      << tiers.out;
  EXPECT_FALSE(std::filesystem::exists(dir_.file("l.safetensors")));
  const CliRun typo = run("fingerprint --jsn " + dir_.file("m.safetensors"));
  EXPECT_EQ(typo.code, 2) << typo.out;
  const CliRun version = run("--version");
  EXPECT_EQ(version.code, 0) << version.out;
  EXPECT_NE(version.out.find("corelocker "), std::string::npos) << version.out;
}

// Without corelocker-torch beside it, the front still serves safetensors files (so it never
// needed LibTorch for them) and says clearly what is missing for the rest.
TEST_F(CliSt, FrontServesSafetensorsWithoutTheWholeTool) {
  ASSERT_EQ(
      std::system(("cp " + std::string(CORELOCKER_BIN) + " " + dir_.file("corelocker")).c_str()),
      0);
  const std::string alone = dir_.file("corelocker");
  const CliRun fp = shell(alone + " fingerprint " + dir_.file("m.safetensors"));
  EXPECT_EQ(fp.code, 0) << fp.out;
  EXPECT_EQ(fp.out, run("fingerprint " + dir_.file("m.safetensors")).out);
  const CliRun l = shell(alone + " lock --model " + dir_.file("m.safetensors") + " --out " +
                         dir_.file("l.safetensors") + " --key-out " + dir_.file("l.clk"));
  EXPECT_EQ(l.code, 0) << l.out;
  const CliRun other = shell(alone + " models");
  EXPECT_EQ(other.code, 1) << other.out;
  EXPECT_NE(other.out.find("cannot run '" + dir_.path() + "/corelocker-torch'"), std::string::npos)
      << other.out;
}

// `cmake --install` gives users the two binaries side by side; the installed front serves
// safetensors files itself and hands everything else to the installed whole tool.
TEST_F(CliSt, InstalledBinariesWorkTogether) {
  const std::string prefix = dir_.file("prefix");
  const CliRun install = shell(std::string(CORELOCKER_CMAKE) + " --install " +
                               CORELOCKER_BUILD_DIR + " --prefix " + prefix);
  ASSERT_EQ(install.code, 0) << install.out;
  const std::string front = prefix + "/bin/corelocker";
  ASSERT_TRUE(file_exists(prefix + "/bin/corelocker-torch"));
  const CliRun fp = shell(front + " fingerprint " + dir_.file("m.safetensors"));
  EXPECT_EQ(fp.code, 0) << fp.out;
  EXPECT_EQ(fp.out, run("fingerprint " + dir_.file("m.safetensors")).out);
  const CliRun models = shell(front + " models");
  EXPECT_EQ(models.code, 0) << models.out;
  EXPECT_EQ(models.out, run("models").out);
}

// `bench-safetensors` at a few MiB: every step timed, the table and the bars printed, the restored
// file byte-identical, and the files removed afterwards (kept with --keep).
TEST(CliStBench, TimesEveryStepAndRemovesItsFiles) {
  testing::TempDir dir;
  const CliRun r = run("bench-safetensors --size-gib 0.004 --repeat 1 --dir " + dir.file(""));
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* step :
       {"| cp |", "| cp + sync FILE |", "| lock |", "| unlock |", "| fingerprint |"})
    EXPECT_NE(r.out.find(step), std::string::npos) << step << "\n" << r.out;
  EXPECT_NE(r.out.find("restored file identical to the original: yes"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("bar lock <= 2x cp: "), std::string::npos) << r.out;
  EXPECT_TRUE(std::filesystem::is_empty(dir.file(""))) << r.out;

  const CliRun k = run(
      "bench-safetensors --size-gib 0.004 --repeat 1 --keep --criterion l1 --dir " + dir.file(""));
  ASSERT_EQ(k.code, 0) << k.out;
  EXPECT_NE(k.out.find("lock timed: --criterion l1"), std::string::npos) << k.out;
  EXPECT_TRUE(file_exists(dir.file("bench.safetensors")));
  EXPECT_TRUE(file_exists(dir.file("bench.clk")));
  EXPECT_EQ(read_file(dir.file("bench.safetensors")),
            read_file(dir.file("bench-restored.safetensors")));
}

}  // namespace
}  // namespace corelocker
