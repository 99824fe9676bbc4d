// `corelocker formats`: every cell of the capability matrix is run. For each registered format, a
// model file of that format and, for each feature, the command that asks for it: a "yes" cell's
// command succeeds, a "no" cell's is refused as a usage error whose message is the cell's note,
// with nothing written. The matrix cannot claim what the tool does not do, nor hide what it does.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "cli_run.h"
#include "onnx_fixtures.h"
#include "temp_dir.h"
#include "util/atomic_file.h"

namespace corelocker::cli_formats_test {
namespace {

using testing::CliRun;
using testing::run;

// A safetensors file by hand: a 3x3 conv, an inner conv with its BatchNorm and a linear head,
// seeded values.
void write_safetensors(const std::string& path) {
  struct T {
    std::string name;
    std::vector<uint64_t> shape;
  };
  const std::vector<T> tensors = {{"conv1.weight", {4, 1, 3, 3}},
                                  {"conv2.weight", {8, 4, 3, 3}},
                                  {"bn2.weight", {8}},
                                  {"bn2.bias", {8}},
                                  {"bn2.running_mean", {8}},
                                  {"bn2.running_var", {8}},
                                  {"fc.weight", {10, 32}}};
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::vector<uint8_t> data;
  uint32_t state = 7;
  for (const auto& t : tensors) {
    uint64_t n = 1;
    for (auto d : t.shape) n *= d;
    const uint64_t begin = data.size();
    for (uint64_t i = 0; i < n; ++i) {
      state = state * 1664525u + 1013904223u;
      const float v = (static_cast<float>(state >> 8) / 16777216.0f - 0.5f) * 0.2f;
      uint8_t b[4];
      std::memcpy(b, &v, 4);
      data.insert(data.end(), b, b + 4);
    }
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h += ' ';
  std::string bytes(8, '\0');
  const uint64_t n = h.size();
  std::memcpy(&bytes[0], &n, 8);
  bytes += h;
  bytes.append(reinterpret_cast<const char*>(data.data()), data.size());
  write_file_atomic(path, bytes);
}

class CliFormatMatrix : public ::testing::Test {
 protected:
  std::string f(const std::string& name) const { return dir_.file(name); }
  testing::TempDir dir_;
};

TEST_F(CliFormatMatrix, EveryCellOfTheMatrixIsWhatTheToolDoes) {
  std::string why;
  const std::string fx = testing::onnx_fixture_dir(&why);
  if (fx.empty()) GTEST_SKIP() << why;
  const CliRun m = run("formats --json");
  ASSERT_EQ(m.code, 0) << m.out;
  const auto matrix = nlohmann::json::parse(m.out);
  const CliRun table = run("formats");
  ASSERT_EQ(table.code, 0) << table.out;

  // One model file a format, with the file name each command writes.
  ASSERT_EQ(run("train --arch tinycnn --epochs 0 --seed 1 --out " + f("m.ckpt")).code, 0);
  write_safetensors(f("m.safetensors"));
  write_file_atomic(f("m.onnx"), read_file(fx + "/resnet_bn.onnx"));
  const std::map<std::string, std::pair<std::string, std::string>> files = {
      {"libtorch", {"m.ckpt", ".ckpt"}},
      {"safetensors", {"m.safetensors", ".safetensors"}},
      {"onnx", {"m.onnx", ".onnx"}}};
  std::vector<uint8_t> idx = {0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28};
  idx.resize(idx.size() + 2 * 28 * 28, 0);
  write_file_atomic(f("x.idx"), idx);
  ::setenv("CORELOCKER_TEST_PW", "matrix", 1);

  std::set<std::string> seen;
  for (const auto& row : matrix) {
    const std::string format = row["format"];
    ASSERT_TRUE(files.count(format)) << "no fixture for format " << format;
    seen.insert(format);
    EXPECT_NE(table.out.find(format), std::string::npos) << table.out;
    const std::string model = f(files.at(format).first), ext = files.at(format).second;
    int n = 0;
    for (const auto& [feature, cell] : row["features"].items()) {
      const std::string o = f("o" + std::to_string(++n) + ext);
      const std::string stem = format + "-k" + std::to_string(n);
      const std::string k = f(stem + ".clk");
      const std::string lock = "lock --model " + model + " --out " + o + " --key-out " + k;
      const std::string data = " --test-subset 100 --reestimate-images 32";
      std::string args;
      if (feature == "lock" || feature == "default lock") args = lock;
      if (feature == "unlock") {
        ASSERT_EQ(run(lock).code, 0) << lock;
        args = "unlock --model " + o + " --key " + k + " --out " + f("r" + ext);
      }
      if (feature == "fingerprint") args = "fingerprint " + model;
      if (feature == "inspect") args = "inspect " + model;
      if (feature == "l1") args = lock + " --criterion l1 --scope global";
      if (feature == "bn") args = lock + " --criterion bn --ratio 0.2";
      if (feature == "random") args = lock + " --criterion random --seed 3";
      if (feature == "keep") args = lock + " --keep '*conv2*'";
      if (feature == "decoy fill") args = lock + " --fill decoy --decoy-tries 1";
      if (feature == "tiers") args = lock + " --tiers 0.02,0.05";
      if (feature == "tier bands")
        args = lock + " --tier-bands 0-100 --target-plain --val-size 100 --test-subset 100";
      if (feature == "encrypted keys")
        args = lock + " --passphrase-env CORELOCKER_TEST_PW --kdf min";
      if (feature == "eval") args = "eval --model " + model + data;
      if (feature == "calibrate")
        args =
            "calibrate --model " + model + " --target 0-100 --target-plain --val-size 100" + data;
      if (feature == "detect") {
        ASSERT_EQ(run(lock).code, 0) << lock;
        args = "detect --model " + o + " --key " + k + " --permutations 20 --learned-locks 1";
      }
      if (feature == "attack")
        args = "analyze --model " + model + " --criterion l1 --ratio 0.05 --samples 5";
      if (feature == "predict") args = "predict --model " + model + " --input " + f("x.idx");
      ASSERT_FALSE(args.empty()) << "no command for feature '" << feature << "'";
      const bool threads = feature != "fingerprint" && feature != "inspect";
      const CliRun r = run(args + (threads ? " --threads 2" : ""));
      if (cell["works"].get<bool>()) {
        EXPECT_EQ(r.code, 0) << format << " / " << feature << ": " << args << "\n" << r.out;
        if (args.rfind("lock ", 0) == 0) {  // the locked file and its key(s) are there
          EXPECT_TRUE(file_exists(o)) << format << " / " << feature;
          EXPECT_TRUE(file_exists(k) || file_exists(f(stem + ".tier1.clk")))
              << format << " / " << feature;
        }
        continue;
      }
      EXPECT_EQ(r.code, 2) << format << " / " << feature << ": " << args << "\n" << r.out;
      const std::string note = cell["note"];
      ASSERT_FALSE(note.empty()) << format << " / " << feature << ": a 'no' must say why";
      EXPECT_NE(r.out.find(note), std::string::npos) << format << " / " << feature << "\n" << r.out;
      EXPECT_NE(table.out.find(note), std::string::npos) << table.out;
      EXPECT_FALSE(file_exists(o)) << format << " / " << feature;
      EXPECT_FALSE(file_exists(k)) << format << " / " << feature;
    }
  }
  EXPECT_EQ(seen, (std::set<std::string>{"libtorch", "safetensors", "onnx"}));
}

}  // namespace
}  // namespace corelocker::cli_formats_test
