// The CLI on TorchScript files: preprocessing options, lock / eval / unlock round trip.
#include <gtest/gtest.h>

#include "cli_run.h"
#include "temp_dir.h"
#include "torchscript_fixture.h"

namespace corelocker {
namespace {

using testing::run;
using testing::TempDir;

TEST(CliTorchScript, LockRecordsThePreprocessingAndUnlockRestoresTheFingerprint) {
  const std::string dir = testing::torchscript_fixtures("ts-fresh-s3", "--seed 3");
  TempDir tmp;
  const std::string model = dir + "/scripted.pt", locked = tmp.file("locked.pt"), key = tmp.file("k.clk");
  auto fp = run("fingerprint " + model);
  ASSERT_EQ(fp.code, 0) << fp.out;
  auto r = run("lock --model " + model + " --criterion l1 --ratio 0.05 --mean 0.5 --std 0.25 --pad 32 --out " +
               locked + " --key-out " + key + " --eval --test-subset 100");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("locked accuracy"), std::string::npos) << r.out;
  r = run("inspect --json " + locked);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("\"arch\":\"torchscript\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"pad_to\":32"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"mean\":[0.5]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"std\":[0.25]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"type\":\"locked model\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"fill\":\"zero\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"tiers\":1"), std::string::npos) << r.out;
  // Later commands read the stored preprocessing: no options needed.
  r = run("eval --model " + locked + " --key " + key + " --test-subset 100 --json");
  EXPECT_EQ(r.code, 0) << r.out;
  r = run("unlock --model " + locked + " --key " + key + " --out " + tmp.file("restored.pt"));
  ASSERT_EQ(r.code, 0) << r.out;
  auto back = run("fingerprint " + tmp.file("restored.pt"));
  EXPECT_EQ(back.out, fp.out);
}

TEST(CliTorchScript, PreprocessingOptionsAreChecked) {
  const std::string model = testing::torchscript_fixtures("ts-fresh-s3", "--seed 3") + "/traced.pt";
  auto r = run("eval --model " + model + " --mean 0.1,0.2 --test-subset 10");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--mean: 2 values for 1 channels"), std::string::npos) << r.out;
  r = run("eval --model " + model + " --std 0 --test-subset 10");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--std"), std::string::npos) << r.out;
  r = run("eval --model " + model + " --dataset mnist --test-subset 10");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("mnist"), std::string::npos) << r.out;
  // Resizing 28x28 to 40x40 feeds the convolutional network another size; it still runs.
  r = run("eval --model " + model + " --resize 40 --test-subset 10 --json");
  EXPECT_EQ(r.code, 0) << r.out;
}

}  // namespace
}  // namespace corelocker
