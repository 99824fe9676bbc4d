// The command-line contract of `sweep` and `calibrate`: files written, partial results kept
// when a sweep is stopped, nothing written when calibration fails.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli_run.h"
#include "report/csv_log.h"
#include "temp_dir.h"
#include "util/atomic_file.h"

namespace corelocker {
namespace {

using testing::CliRun;
using testing::run;

std::string text_of(const std::string& path) {
  auto b = read_file(path);
  return std::string(b.begin(), b.end());
}

size_t lines_in(const std::string& path) {
  if (!file_exists(path)) return 0;
  size_t n = 0;
  for (char c : text_of(path)) n += c == '\n';
  return n;
}

// Starts a long sweep in the background, waits for `rows` rows in its CSV, sends `sig` and
// returns the exit status; -1 (and a test failure) when the rows are not there within 120 s.
int interrupt_sweep(const testing::TempDir& dir, size_t rows, int sig) {
  const std::string model = dir.file("m.ckpt"), out = dir.file("out");
  const pid_t pid = fork();
  if (pid == 0) {
    const int null_fd = ::open("/dev/null", O_WRONLY);
    ::dup2(null_fd, 1);
    ::dup2(null_fd, 2);
    ::execl(CORELOCKER_BIN, CORELOCKER_BIN, "sweep", "--model", model.c_str(), "--from", "0.001",
            "--to", "0.9", "--steps", "400", "--log", "--criteria", "l1,bn,random", "--seeds", "5",
            "--test-subset", "300", "--threads", "1", "--out-dir", out.c_str(),
            static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (lines_in(out + "/sweep.csv") < rows + 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const bool reached = lines_in(out + "/sweep.csv") >= rows + 1;
  ::kill(pid, reached ? sig : SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!reached) {
    ADD_FAILURE() << "the sweep wrote fewer than " << rows << " rows within 120 s";
    return -1;
  }
  return status;
}

void expect_readable_partial_csv(const std::string& path, size_t at_least) {
  auto rows = parse_csv(text_of(path), path);  // throws on a cut-off or ragged line
  ASSERT_GE(rows.size(), at_least + 1);
  EXPECT_EQ(rows[0][0], "criterion");
  ASSERT_EQ(rows[0].size(), 15u);
  EXPECT_EQ(rows[0][13], "top1_reestimated");
  EXPECT_EQ(rows[0][14], "top1_effective");
  for (size_t i = 1; i < rows.size(); ++i) {
    EXPECT_GT(std::stod(rows[i][2]), 0.0);  // ratio
    EXPECT_GE(std::stod(rows[i][7]), 0.0);  // top1
    EXPECT_LE(std::stod(rows[i][7]), 100.0);
    // The effective top-1 is the worst case over plain and the free attacks (random: per seed,
    // then averaged, so at least the mean plain top-1).
    ASSERT_FALSE(rows[i][14].empty()) << i;
    EXPECT_GE(std::stod(rows[i][14]) + 1e-9, std::stod(rows[i][7])) << i;
  }
}

class CliControl : public ::testing::Test {
 protected:
  void SetUp() override {
    CliRun r = run("train --arch tinycnn --epochs 0 --seed 1 --out " + dir_.file("m.ckpt"));
    ASSERT_EQ(r.code, 0) << r.out;
  }
  testing::TempDir dir_;
};

TEST_F(CliControl, SweepWritesCsvJsonAndPlots) {
  CliRun r = run("sweep --model " + dir_.file("m.ckpt") +
                 " --ratios 0.01,0.1 --criteria l1,random --seeds 2 " +
                 "--test-subset 100 --out-dir " + dir_.file("out"));
  ASSERT_EQ(r.code, 0) << r.out;
  auto rows = parse_csv(text_of(dir_.file("out/sweep.csv")), "sweep.csv");
  ASSERT_EQ(rows.size(), 5u);  // header + 2 ratios x 2 criteria
  EXPECT_EQ(rows[1][0], "l1");
  EXPECT_EQ(rows[2][0], "random");
  EXPECT_EQ(rows[2][6], "2");  // seeds
  const std::string json = text_of(dir_.file("out/sweep.json"));
  EXPECT_NE(json.find("\"complete\": true"), std::string::npos) << json;
  EXPECT_NE(json.find("\"top1_runs\""), std::string::npos);
  EXPECT_GT(read_file(dir_.file("out/sweep.png")).size(), 1000u);
  EXPECT_NE(text_of(dir_.file("out/sweep.svg")).find("<svg"), std::string::npos);
  EXPECT_TRUE(file_exists(dir_.file("out/sweep.gp")));
}

TEST_F(CliControl, SweepNeedsRatios) {
  CliRun r = run("sweep --model " + dir_.file("m.ckpt") + " --criteria l1");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--ratios"), std::string::npos) << r.out;
  r = run("sweep --model " + dir_.file("m.ckpt") + " --ratios 0.1,abc");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("'abc'"), std::string::npos) << r.out;
}

TEST_F(CliControl, KilledSweepLeavesAReadablePartialCsv) {
  const int status = interrupt_sweep(dir_, 3, SIGKILL);
  ASSERT_NE(status, -1);
  ASSERT_TRUE(WIFSIGNALED(status));
  expect_readable_partial_csv(dir_.file("out/sweep.csv"), 3);
  // sweep.json is rewritten whole after each point (the kill may fall between the CSV's row and
  // the JSON's point): never half-written, never complete.
  const auto json = nlohmann::json::parse(text_of(dir_.file("out/sweep.json")));
  EXPECT_FALSE(json.at("complete").get<bool>());
  const size_t csv_rows = parse_csv(text_of(dir_.file("out/sweep.csv")), "csv").size() - 1;
  EXPECT_GE(json.at("points").size() + 1, csv_rows);
  EXPECT_LE(json.at("points").size(), csv_rows);
}

// An interrupted sweep (its sweep.json cut to the first points, as a kill leaves it) goes on with
// --resume: only the missing points are measured, and the files end as a whole run's.
TEST_F(CliControl, ResumedSweepMeasuresOnlyTheMissingPoints) {
  const std::string args = "sweep --model " + dir_.file("m.ckpt") +
                           " --ratios 0.01,0.05,0.1 --criteria l1,random --seeds 2 "
                           "--test-subset 100 --reestimate-images 32 --threads 1 --no-plot ";
  CliRun r = run(args + "--out-dir " + dir_.file("whole"));
  ASSERT_EQ(r.code, 0) << r.out;
  r = run(args + "--out-dir " + dir_.file("cut"));
  ASSERT_EQ(r.code, 0) << r.out;
  auto cut = nlohmann::json::parse(text_of(dir_.file("cut/sweep.json")));
  cut["points"].erase(cut["points"].begin() + 3, cut["points"].end());
  cut["complete"] = false;
  write_file_atomic(dir_.file("cut/sweep.json"), cut.dump(2));
  r = run(args + "--out-dir " + dir_.file("cut") + " --resume");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("resuming: 3 points are in"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("6 of 6 points"), std::string::npos) << r.out;
  // The first three points were not measured again: the table shows rows for the last three.
  EXPECT_EQ(r.out.find("0.010000"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("0.100000"), std::string::npos) << r.out;
  auto without_times = [&](const std::string& path) {
    auto j = nlohmann::json::parse(text_of(path));
    j.erase("seconds");
    for (auto& p : j["points"]) p.erase("seconds");
    return j;
  };
  EXPECT_EQ(without_times(dir_.file("whole/sweep.json")),
            without_times(dir_.file("cut/sweep.json")));
  const auto whole_csv = parse_csv(text_of(dir_.file("whole/sweep.csv")), "csv");
  const auto cut_csv = parse_csv(text_of(dir_.file("cut/sweep.csv")), "csv");
  ASSERT_EQ(whole_csv.size(), cut_csv.size());
  for (size_t i = 0; i < whole_csv.size(); ++i) {
    for (size_t c = 0; c < whole_csv[i].size(); ++c) {
      if (c == 12) continue;  // seconds
      EXPECT_EQ(whole_csv[i][c], cut_csv[i][c]) << i << "," << c;
    }
  }
  // A finished sweep is not replaced by a new run; another sweep resumed in its folder is
  // refused, naming what differs; nothing is changed.
  const std::string before = text_of(dir_.file("cut/sweep.json"));
  r = run(args + "--out-dir " + dir_.file("cut"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("holds a finished sweep"), std::string::npos) << r.out;
  EXPECT_EQ(text_of(dir_.file("cut/sweep.json")), before);
  r = run("sweep --model " + dir_.file("m.ckpt") +
          " --ratios 0.01,0.2 --criteria l1,random --seeds 2 --test-subset 100 "
          "--reestimate-images 32 --no-plot --out-dir " +
          dir_.file("cut") + " --resume");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("cannot resume the sweep in '" + dir_.file("cut") + "': its ratios"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(text_of(dir_.file("cut/sweep.json")), before);
  // Without an earlier run, --resume starts.
  r = run(args + "--out-dir " + dir_.file("fresh") + " --resume");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("nothing to resume in"), std::string::npos) << r.out;
}

TEST_F(CliControl, CtrlCStopsTheSweepAndKeepsWhatWasMeasured) {
  const int status = interrupt_sweep(dir_, 2, SIGINT);
  ASSERT_NE(status, -1);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  expect_readable_partial_csv(dir_.file("out/sweep.csv"), 2);
  const std::string json = text_of(dir_.file("out/sweep.json"));
  EXPECT_NE(json.find("\"complete\": false"), std::string::npos);
  const size_t csv_rows = parse_csv(text_of(dir_.file("out/sweep.csv")), "csv").size() - 1;
  size_t json_points = 0;
  for (size_t at = json.find("\"criterion\""); at != std::string::npos;
       at = json.find("\"criterion\"", at + 1)) {
    ++json_points;
  }
  EXPECT_EQ(json_points, csv_rows);  // the JSON holds exactly the rows of the CSV
}

TEST_F(CliControl, CalibrateWritesTheLockedModelAndAKeyThatRestoresIt) {
  // An untrained model sits near 10%: the band 0-100 is met by the first probe.
  CliRun r = run("calibrate --model " + dir_.file("m.ckpt") +
                 " --target 0-100 --val-size 200 --test-subset 100 " + "--out " +
                 dir_.file("locked.ckpt") + " --key-out " + dir_.file("key.clk"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("eval  1: ratio 0.005000"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("test       top-1"), std::string::npos) << r.out;
  r = run("unlock --model " + dir_.file("locked.ckpt") + " --key " + dir_.file("key.clk") +
          " --out " + dir_.file("restored.ckpt"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(run("fingerprint " + dir_.file("restored.ckpt")).out,
            run("fingerprint " + dir_.file("m.ckpt")).out);
}

// A band is searched over the default ranking without the first and last layers (their units
// move a model trained elsewhere 30-40 points each); --include-io and a named criterion say
// otherwise, and a plain `lock` keeps the default lock's units.
TEST_F(CliControl, BandSearchesLeaveTheFirstAndLastLayersOutUnlessAsked) {
  auto key_includes_io = [&](const std::string& key) {
    CliRun k = run("inspect --json " + key);
    EXPECT_EQ(k.code, 0) << k.out;
    return nlohmann::json::parse(k.out).at("include_io").get<bool>();
  };
  const std::string common = " --val-size 200 --test-subset 100 --reestimate-images 32 --out " +
                             dir_.file("l.ckpt") + " --key-out ";
  CliRun r = run("calibrate --model " + dir_.file("m.ckpt") + " --target 0-100" + common +
                 dir_.file("a.clk"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("default without first/last (l1, global)"), std::string::npos) << r.out;
  EXPECT_FALSE(key_includes_io(dir_.file("a.clk")));
  r = run("calibrate --model " + dir_.file("m.ckpt") + " --target 0-100 --include-io" + common +
          dir_.file("b.clk"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("default (l1, global, first/last included)"), std::string::npos) << r.out;
  EXPECT_TRUE(key_includes_io(dir_.file("b.clk")));
  r = run("lock --model " + dir_.file("m.ckpt") + " --tier-bands 0-100" + common +
          dir_.file("c.clk"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(key_includes_io(dir_.file("c.tier1.clk")));
  r = run("lock --model " + dir_.file("m.ckpt") + " --ratio 0.01 --out " + dir_.file("l.ckpt") +
          " --key-out " + dir_.file("d.clk"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(key_includes_io(dir_.file("d.clk")));
  r = run("bands --model " + dir_.file("m.ckpt") +
          " --width 50 --max-evals 2 --no-test --val-size 200 "
          "--reestimate-images 32");
  EXPECT_NE(r.out.find("default without first/last (l1, global)"), std::string::npos) << r.out;
}

TEST_F(CliControl, CalibrateRemovesItsKeyWhenTheLockedModelCannotBeWritten) {
  CliRun r = run("calibrate --model " + dir_.file("m.ckpt") +
                 " --target 0-100 --val-size 200 --test-subset 100 --reestimate-images 32 --out " +
                 dir_.file("no-such-folder/l.ckpt") + " --key-out " + dir_.file("k.clk"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("no-such-folder"), std::string::npos) << r.out;
  EXPECT_FALSE(file_exists(dir_.file("k.clk"))) << r.out;
}

TEST_F(CliControl, UnreachableBandSaysSoAndWritesNothing) {
  CliRun r = run("calibrate --model " + dir_.file("m.ckpt") +
                 " --target 95-99 --val-size 200 --test-subset 100 " + "--max-evals 12 --out " +
                 dir_.file("locked.ckpt") + " --key-out " + dir_.file("key.clk"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("above reach"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("validation top-1 seen"), std::string::npos) << r.out;
  EXPECT_FALSE(file_exists(dir_.file("locked.ckpt")));
  EXPECT_FALSE(file_exists(dir_.file("key.clk")));
  r = run("calibrate --model " + dir_.file("m.ckpt") + " --target 55-50");
  EXPECT_EQ(r.code, 2) << r.out;
}

}  // namespace
}  // namespace corelocker
