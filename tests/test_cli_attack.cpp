// `corelocker attack`: the command runs the harness and prints the table or JSON it promises.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "temp_dir.h"
#include "util/atomic_file.h"

namespace corelocker {
namespace {

using testing::CliRun;
using testing::run;

class CliAttack : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(run("train --arch tinycnn --epochs 1 --train-subset 2000 --seed 1 --out " +
                      dir_.file("m.ckpt"))
                  .code,
              0);
    CliRun r =
        run("lock --model " + dir_.file("m.ckpt") + " --criterion l1 --ratio 0.1 --out " +
                dir_.file("locked.ckpt") + " --key-out " + dir_.file("key.clk"));
    ASSERT_EQ(r.code, 0) << r.out;
  }
  testing::TempDir dir_;
};

TEST_F(CliAttack, AllPrintsOneTableWithTheAdvantageOverScratch) {
  CliRun r = run(
      "attack all --model " + dir_.file("locked.ckpt") + " --original " + dir_.file("m.ckpt") +
      " --data-fraction 0.005 --trials 2 --epochs 1 --test-subset 300 --threads 1 --report " +
      dir_.file("report.json"));
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* row :
       {"finetune", "prune 0.20", "prune 0.40", "zero-retrain", "bn-recalibrate + affine",
        "scratch", "(baseline)", "vs scratch", "original top-1"}) {
    EXPECT_NE(r.out.find(row), std::string::npos) << row << " missing in\n" << r.out;
  }
  auto j = nlohmann::json::parse(read_file(dir_.file("report.json")));
  ASSERT_EQ(j["attacks"].size(), 7u);
  for (const auto& a : j["attacks"]) {
    if (a["attack"] == "scratch") {
      EXPECT_TRUE(a["advantage_over_scratch"].is_null());
      EXPECT_EQ(a["trials"].size(), 2u);
    } else {
      EXPECT_TRUE(a["advantage_over_scratch"].is_number()) << a.dump();
    }
    if (a["attack"] == "prune") {
      EXPECT_EQ(a["trials"].size(), 1u);
    }
  }
}

TEST_F(CliAttack, JsonOutputAndUsageErrors) {
  CliRun r = run("attack prune --ratio 0.3 --json --model " + dir_.file("locked.ckpt") +
                        " --test-subset 100");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["attacks"][0]["label"], "prune 0.30");
  EXPECT_EQ(j["lock"]["criterion"], "l1");
  EXPECT_EQ(run("attack brute-force --model " + dir_.file("locked.ckpt")).code, 2);
  EXPECT_EQ(run("attack finetune --epochs 0 --model " + dir_.file("locked.ckpt") +
                    " --test-subset 50")
                .code,
            2);
  EXPECT_EQ(run("attack finetune --data-fraction 0 --model " + dir_.file("locked.ckpt") +
                    " --test-subset 50")
                .code,
            2);
  EXPECT_EQ(run("attack finetune --model " + dir_.file("missing.ckpt")).code, 1);
}

}  // namespace
}  // namespace corelocker
