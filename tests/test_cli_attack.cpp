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
    CliRun r = run("lock --model " + dir_.file("m.ckpt") + " --criterion l1 --ratio 0.1 --out " +
                   dir_.file("locked.ckpt") + " --key-out " + dir_.file("key.clk"));
    ASSERT_EQ(r.code, 0) << r.out;
  }
  testing::TempDir dir_;
};

TEST_F(CliAttack, AllPrintsOneTableWithTheAdvantageOverScratch) {
  CliRun r =
      run("attack all --model " + dir_.file("locked.ckpt") + " --original " + dir_.file("m.ckpt") +
          " --data-fraction 0.005 --trials 2 --epochs 1 --test-subset 300 --threads 1 --report " +
          dir_.file("report.json"));
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* row : {"finetune", "reinit + finetune", "prune 0.20", "prune 0.40",
                          "zero-retrain", "bn-recalibrate + affine", "scratch", "(baseline)",
                          "vs scratch", "original top-1", "values re-initialised"}) {
    EXPECT_NE(r.out.find(row), std::string::npos) << row << " missing in\n" << r.out;
  }
  auto j = nlohmann::json::parse(read_file(dir_.file("report.json")));
  ASSERT_EQ(j["attacks"].size(), 8u);
  std::string best_label;
  double best = -1e9;
  for (const auto& a : j["attacks"]) {
    if (a["attack"] == "scratch") {
      EXPECT_TRUE(a["advantage_over_scratch"].is_null());
      EXPECT_EQ(a["trials"].size(), 2u);
      continue;
    }
    ASSERT_TRUE(a["advantage_over_scratch"].is_number()) << a.dump();
    if (a["attack"] == "prune") {
      EXPECT_EQ(a["trials"].size(), 1u);
    }
    // One summary line per attack, with its data.
    const std::string label = a["label"].get<std::string>();
    const std::string line =
        "advantage over scratch: " + label +
        (a["attack"] == "prune" ? " (no data, vs scratch on 0.5%) " : " (0.5% data) ");
    EXPECT_NE(r.out.find(line), std::string::npos) << line << " missing in\n" << r.out;
    const double adv = a["advantage_over_scratch"].get<double>();
    if (adv > best) {
      best = adv;
      best_label = label;
    }
  }
  size_t lines = 0;
  for (size_t p = r.out.find("advantage over scratch: "); p != std::string::npos;
       p = r.out.find("advantage over scratch: ", p + 1)) {
    ++lines;
  }
  EXPECT_EQ(lines, 7u) << r.out;
  // The verdict names the largest advantage, in the text and in the report.
  EXPECT_EQ(j["verdict"]["attack"], best_label) << j["verdict"].dump();
  EXPECT_DOUBLE_EQ(j["verdict"]["advantage"].get<double>(), best);
  const auto verdict = r.out.find("\nverdict: ");
  ASSERT_NE(verdict, std::string::npos) << r.out;
  const std::string verdict_line =
      r.out.substr(verdict + 1, r.out.find('\n', verdict + 1) - verdict - 1);
  EXPECT_NE(verdict_line.find(best > 0 ? "the largest advantage over scratch is +"
                                       : "no attack beats training from scratch (best: "),
            std::string::npos)
      << verdict_line;
  EXPECT_NE(verdict_line.find((best > 0 ? "(" : "points, ") + best_label + ", "), std::string::npos)
      << verdict_line;
}

TEST_F(CliAttack, JsonOutputAndUsageErrors) {
  CliRun r = run("attack prune --ratio 0.3 --json --model " + dir_.file("locked.ckpt") +
                 " --test-subset 100");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["attacks"][0]["label"], "prune 0.30");
  EXPECT_EQ(j["lock"]["criterion"], "l1");
  // The locked model's effective top-1 beside its plain one: the highest of plain, re-estimated
  // and pruned.
  const auto& locked = j["locked"];
  ASSERT_TRUE(locked["top1_reestimated"].is_number()) << locked.dump();
  EXPECT_EQ(locked["reestimate_images"], 512);
  double worst = std::max(locked["top1"].get<double>(), locked["top1_reestimated"].get<double>());
  for (const auto& [ratio, top1] : locked["top1_pruned"].items())
    worst = std::max(worst, top1.get<double>());
  EXPECT_DOUBLE_EQ(locked["top1_effective"].get<double>(), worst);
  EXPECT_DOUBLE_EQ(locked["top1"].get<double>(), j["locked_top1"].get<double>());

  // A list of attacks runs those, in that order, with the verdict over them.
  CliRun list =
      run("attack prune,scratch --json --epochs 1 --trials 1 --data-fraction 0.005 "
          "--reestimate-images 0 "
          "--model " +
          dir_.file("locked.ckpt") + " --test-subset 100");
  ASSERT_EQ(list.code, 0) << list.out;
  auto lj = nlohmann::json::parse(list.out);
  ASSERT_EQ(lj["attacks"].size(), 2u);
  EXPECT_EQ(lj["attacks"][0]["attack"], "prune");
  EXPECT_EQ(lj["attacks"][1]["attack"], "scratch");
  EXPECT_TRUE(lj["verdict"].is_object()) << lj.dump();
  EXPECT_TRUE(lj["locked"]["top1_reestimated"].is_null());
  EXPECT_EQ(run("attack finetune,finetune --model " + dir_.file("locked.ckpt")).code, 2);
  EXPECT_EQ(run("attack finetune,,scratch --model " + dir_.file("locked.ckpt")).code, 2);
  EXPECT_EQ(run("attack brute-force --model " + dir_.file("locked.ckpt")).code, 2);
  EXPECT_EQ(
      run("attack finetune --epochs 0 --model " + dir_.file("locked.ckpt") + " --test-subset 50")
          .code,
      2);
  EXPECT_EQ(
      run("attack reinit --epochs 0 --model " + dir_.file("locked.ckpt") + " --test-subset 50")
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
