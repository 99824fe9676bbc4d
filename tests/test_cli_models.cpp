// The command line for the paper's networks: every architecture trains (0 epochs) and
// describes itself, options reach the checkpoint, and training stops on Ctrl-C and resumes.
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
#include "temp_dir.h"
#include "util/atomic_file.h"

namespace corelocker {
namespace {

using testing::CliRun;
using testing::run;

nlohmann::json inspect(const std::string& path) {
  CliRun r = run("inspect --json " + path);
  EXPECT_EQ(r.code, 0) << r.out;
  return nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
}

const char* kArchs[] = {"resnet20", "vgg19", "preresnet", "densenet",
                        "fcn",      "vit",   "cnnlstm",   "tinycnn"};

TEST(CliModels, ModelsListsEveryArchitectureForADataSet) {
  CliRun r = run("models --dataset cifar100");
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* a : kArchs) EXPECT_NE(r.out.find(std::string(a) + " "), std::string::npos) << a;
  EXPECT_NE(r.out.find("20081188 parameters"), std::string::npos) << r.out;  // vgg19, 100 classes
  EXPECT_EQ(run("models --dataset mnist-3d").code, 2);
}

TEST(CliModels, EveryArchitectureTrainsZeroEpochs) {
  testing::TempDir dir;
  for (const char* a : kArchs) {
    const std::string out = dir.file(std::string(a) + ".ckpt");
    CliRun r = run(std::string("train --arch ") + a + " --epochs 0 --out " + out);
    ASSERT_EQ(r.code, 0) << a << ": " << r.out;
    auto j = inspect(out);
    EXPECT_EQ(j.value("arch", ""), a);
    EXPECT_GT(j.value("parameters", 0), 0);
  }
}

TEST(CliModels, OptionsReachTheCheckpoint) {
  testing::TempDir dir;
  CliRun r = run(
      "train --arch preresnet --depth 14 --set bottleneck=0 --dataset cifar10 --epochs 0 --out " +
      dir.file("p.ckpt"));
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = inspect(dir.file("p.ckpt"));
  EXPECT_EQ(j["options"]["depth"], 14);
  EXPECT_EQ(j["options"]["bottleneck"], 0);
  EXPECT_EQ(j["input"], nlohmann::json::array({3, 32, 32}));
  EXPECT_EQ(j["pad_to"], 32);
  r = run("train --arch vit --set dim=32 --set heads=2 --set depth=1 --epochs 0 --out " +
          dir.file("v.ckpt"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(inspect(dir.file("v.ckpt"))["options"]["dim"], 32);
}

TEST(CliModels, BadArchitectureOptionsExitWith2AndWriteNothing) {
  testing::TempDir dir;
  const std::string out = " --epochs 0 --out " + dir.file("x.ckpt");
  for (const char* args :
       {"--arch densenet --width 3", "--arch densenet --depth 41", "--arch fcn --set depth",
        "--arch fcn --set depth=x", "--arch fcn --set colour=2", "--arch alexnet"}) {
    CliRun r = run(std::string("train ") + args + out);
    EXPECT_EQ(r.code, 2) << args << ": " << r.out;
    EXPECT_FALSE(file_exists(dir.file("x.ckpt"))) << args;
  }
}

TEST(CliModels, ResumeOfAFinishedRunIsRefused) {
  testing::TempDir dir;
  const std::string ckpt = dir.file("t.ckpt");
  CliRun r = run("train --arch tinycnn --epochs 1 --train-subset 256 --no-eval --out " + ckpt);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(file_exists(ckpt + ".optim"));  // removed once training is complete
  r = run("train --epochs 1 --resume --out " + ckpt);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("nothing to resume"), std::string::npos) << r.out;
}

// Ctrl-C after the first checkpoint: exit 130, the checkpoint of the last full epoch stays and
// `--resume` finishes the run.
TEST(CliModels, CtrlCKeepsTheLastCheckpointAndResumeFinishes) {
  testing::TempDir dir;
  const std::string ckpt = dir.file("r.ckpt");
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Quiet child: the output goes nowhere.
    freopen("/dev/null", "w", stdout);
    execl(CORELOCKER_BIN, CORELOCKER_BIN, "train", "--arch", "tinycnn", "--epochs", "60",
          "--train-subset", "256", "--threads", "1", "--no-eval", "--out", ckpt.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!file_exists(ckpt) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  int status = 0;
  if (!file_exists(ckpt)) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    FAIL() << "no checkpoint within 60 s of starting training";
  }
  kill(pid, SIGINT);
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 130);
  ASSERT_TRUE(file_exists(ckpt));
  EXPECT_TRUE(file_exists(ckpt + ".optim"));
  auto j = inspect(ckpt);
  const int done = j["training"].value("epochs_done", 0);
  EXPECT_GE(done, 1);
  EXPECT_LT(done, 60);

  CliRun r = run("train --resume --no-eval --threads 1 --out " + ckpt);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("resuming"), std::string::npos) << r.out;
  j = inspect(ckpt);
  EXPECT_FALSE(j["training"].contains("epochs_done"));
  EXPECT_EQ(j["training"]["epochs"], 60);
  EXPECT_FALSE(file_exists(ckpt + ".optim"));
}

}  // namespace
}  // namespace corelocker
