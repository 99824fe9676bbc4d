// The command-line contract of `analyze`: a locked model with its key and an in-memory lock of
// the unlocked model give the same report; JSON on request; wrong combinations are usage errors.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "temp_dir.h"
#include "util/atomic_file.h"

namespace corelocker {
namespace {

using testing::CliRun;
using testing::run;

nlohmann::json json_of(const std::string& path) {
  auto b = read_file(path);
  return nlohmann::json::parse(std::string(b.begin(), b.end()));
}

class CliAnalyze : public ::testing::Test {
 protected:
  void SetUp() override {
    CliRun r = run("train --arch fcn --depth 3 --width 32 --epochs 0 --seed 2 --out " +
                   dir_.file("m.ckpt"));
    ASSERT_EQ(r.code, 0) << r.out;
  }
  testing::TempDir dir_;
};

TEST_F(CliAnalyze, KeyAndInMemoryLockGiveTheSameReport) {
  CliRun lock = run("lock --model " + dir_.file("m.ckpt") + " --criterion l1 --ratio 0.05 --out " +
                    dir_.file("l.ckpt") + " --key-out " + dir_.file("k.clk"));
  ASSERT_EQ(lock.code, 0) << lock.out;
  CliRun a = run("analyze --model " + dir_.file("l.ckpt") + " --key " + dir_.file("k.clk") +
                 " --samples 20 --json " + dir_.file("a.json"));
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_NE(a.out.find("Theorem 2"), std::string::npos) << a.out;
  EXPECT_NE(a.out.find("Theorem 1"), std::string::npos) << a.out;
  CliRun b = run("analyze --model " + dir_.file("m.ckpt") +
                 " --criterion l1 --ratio 0.05 --samples 20 --json " + dir_.file("b.json"));
  ASSERT_EQ(b.code, 0) << b.out;
  auto ja = json_of(dir_.file("a.json"));
  auto jb = json_of(dir_.file("b.json"));
  EXPECT_EQ(ja["mode"], "chain");
  ASSERT_EQ(ja["layers"].size(), 4u);
  ASSERT_EQ(jb["layers"].size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(ja["layers"][i]["changed"], jb["layers"][i]["changed"]);
    EXPECT_DOUBLE_EQ(ja["layers"][i]["observed"].get<double>(),
                     jb["layers"][i]["observed"].get<double>());
  }
  EXPECT_GT(ja["layers"][1]["changed"].get<int64_t>(), 0);
  EXPECT_TRUE(ja["theorem1"]["applicable"].get<bool>());
}

TEST_F(CliAnalyze, UsageErrors) {
  // Neither a key nor a ratio.
  EXPECT_EQ(run("analyze --model " + dir_.file("m.ckpt")).code, 2);
  // A criterion without a ratio.
  EXPECT_EQ(run("analyze --model " + dir_.file("m.ckpt") + " --criterion l1").code, 2);
  // An unlocked model with a key is refused before the key is read.
  CliRun r = run("analyze --model " + dir_.file("m.ckpt") + " --key " + dir_.file("none.clk"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("not locked"), std::string::npos) << r.out;
  EXPECT_EQ(
      run("analyze --model " + dir_.file("m.ckpt") + " --criterion l1 --ratio 0.1 --samples 0")
          .code,
      2);
}

}  // namespace
}  // namespace corelocker
