// The CLI on TorchScript files: preprocessing options (stored or given), lock / eval / unlock
// round trip, calibrate and attack on a model trained in PyTorch; files the CLI cannot run.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "cli_run.h"
#include "temp_dir.h"
#include "torchscript_fixture.h"
#include "util/atomic_file.h"

namespace corelocker {
namespace {

using testing::run;
using testing::TempDir;

TEST(CliTorchScript, LockRecordsThePreprocessingAndUnlockRestoresTheFingerprint) {
  const std::string dir = testing::torchscript_fixtures("ts-fresh-s3", "--seed 3");
  TempDir tmp;
  const std::string model = dir + "/scripted.pt", locked = tmp.file("locked.pt"),
                    key = tmp.file("k.clk");
  auto fp = run("fingerprint " + model);
  ASSERT_EQ(fp.code, 0) << fp.out;
  auto r = run("lock --model " + model +
               " --criterion l1 --ratio 0.05 --mean 0.5 --std 0.25 --pad 32 --out " + locked +
               " --key-out " + key + " --eval --test-subset 100");
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

TEST(CliTorchScript, ADatasetGivenForAFileWithoutMetadataSetsItsClassesToo) {
  const std::string dir = testing::torchscript_fixtures("ts-fresh-s3", "--seed 3");
  TempDir tmp;
  const std::string model = dir + "/scripted.pt", locked = tmp.file("locked.pt"),
                    key = tmp.file("k.clk");
  // Locking runs no forward pass: the data set given is recorded as it is, with all its facts.
  auto r = run("lock --model " + model + " --ratio 0.05 --dataset cifar100 --out " + locked +
               " --key-out " + key);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("inspect --json " + locked);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["dataset"], "cifar100");
  EXPECT_EQ(j["classes"], 100);
  EXPECT_EQ(j["mean"].size(), 3u);
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
  // Padding only grows an image: a size below the image's (or below --resize) is refused, not
  // ignored.
  r = run("eval --model " + model + " --pad 2 --test-subset 10");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--pad 2: smaller than the 28x28 images of fashion-mnist"),
            std::string::npos)
      << r.out;
  r = run("eval --model " + model + " --resize 40 --pad 32 --test-subset 10");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--pad 32: smaller than the 40x40 images after --resize"), std::string::npos)
      << r.out;
  // Resizing 28x28 to 40x40 feeds the convolutional network another size; it still runs.
  r = run("eval --model " + model + " --resize 40 --test-subset 10 --json");
  EXPECT_EQ(r.code, 0) << r.out;
  // The padding's value and order need padding.
  r = run("eval --model " + model + " --pad-after-normalise --test-subset 10");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--pad-after-normalise: the images are not padded; give --pad N"),
            std::string::npos)
      << r.out;
  r = run("eval --model " + model + " --pad-value 0.5 --test-subset 10");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--pad-value: the images are not padded"), std::string::npos) << r.out;
}

// A model trained with padding after normalising (torchvision's Normalize, then Pad): the lock
// records the order and the value, later commands feed the model as recorded, and a command that
// asks for the other order is refused.
TEST(CliTorchScript, PaddingAfterNormalisingIsRecordedAndChecked) {
  const std::string dir = testing::torchscript_fixtures("ts-fresh-s3", "--seed 3");
  TempDir tmp;
  const std::string locked = tmp.file("locked.pt"), key = tmp.file("k.clk");
  const std::string data = " --mean 0.286 --std 0.353 --pad 32 --test-subset 50";
  auto e = run("eval --model " + dir + "/scripted.pt --json --pad-after-normalise" + data);
  ASSERT_EQ(e.code, 0) << e.out;
  auto r = run("lock --model " + dir + "/scripted.pt --out " + locked + " --key-out " + key +
               " --pad-after-normalise --pad-value 0.25" + data);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("inspect --json " + locked);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["pad_after_normalise"], true);
  EXPECT_EQ(j["pad_value"], 0.25);
  r = run("eval --model " + locked + " --key " + key + " --pad-after-normalise --test-subset 10");
  EXPECT_EQ(r.code, 0) << r.out;
  r = run("eval --model " + locked + " --key " + key + " --pad-value 0 --test-subset 10");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--pad-value 0.000000: model '" + locked + "' stores pad value 0.250000"),
            std::string::npos)
      << r.out;
}

// Every command that evaluates or trains a model declares the same options; against a file that
// stores its preprocessing, a value that disagrees is a usage error naming option, value given
// and value stored.
TEST(CliTorchScript, EveryCommandChecksGivenPreprocessingAgainstTheStoredOne) {
  const std::string dir = testing::torchscript_fixtures("ts-fresh-s3", "--seed 3");
  TempDir tmp;
  const std::string locked = tmp.file("locked.pt"), key = tmp.file("k.clk");
  auto r =
      run("lock --model " + dir + "/scripted.pt --pad 32 --out " + locked + " --key-out " + key);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string m = " --model " + locked;
  const std::vector<std::string> commands = {
      "eval" + m,
      "lock" + m + " --out " + tmp.file("x.pt") + " --key-out " + tmp.file("x.clk"),
      "sweep" + m + " --ratios 0.01",
      "calibrate" + m + " --target 50-55",
      "bands" + m,
      "attack finetune" + m,
      "analyze" + m + " --key " + key,
      "predict" + m + " --input " + tmp.file("none.idx")};
  for (const auto& c : commands) {
    r = run(c + " --pad 28");
    EXPECT_EQ(r.code, 2) << c << ": " << r.out;
    EXPECT_NE(r.out.find("--pad 28: model '" + locked +
                         "' stores pad 32; leave the option out or give the stored value"),
              std::string::npos)
        << c << ": " << r.out;
  }
  for (const auto& [option, expected] : std::vector<std::pair<std::string, std::string>>{
           {"--mean 0.5", "--mean 0.5: model '" + locked + "' stores mean 0.286"},
           {"--std 0.3,0.3", "--std 0.3,0.3: model '" + locked + "' stores std 0.353"},
           {"--dataset cifar10",
            "--dataset cifar10: model '" + locked + "' stores dataset fashion-mnist"},
           {"--resize 32", "--resize 32: model '" + locked + "' stores resize 0"},
           {"--channels 3", "--channels 3: model '" + locked + "' stores channels 0"}}) {
    r = run("sweep" + m + " --ratios 0.01 " + option);
    EXPECT_EQ(r.code, 2) << option << ": " << r.out;
    EXPECT_NE(r.out.find(expected), std::string::npos) << option << ": " << r.out;
  }
  // Values that agree with the stored ones are accepted (one value stands for every channel).
  r = run("eval" + m +
          " --pad 32 --mean 0.2860 --std 0.353 --dataset fashion-mnist --test-subset 20 --json");
  EXPECT_EQ(r.code, 0) << r.out;
  write_file_atomic(tmp.file("two.raw"), std::string(2 * 28 * 28, '\x40'));
  r = run("predict" + m + " --key " + key + " --pad 32 --raw --input " + tmp.file("two.raw"));
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("1:"), std::string::npos) << r.out;
  // A built-in checkpoint always stores its preprocessing.
  ASSERT_EQ(run("train --arch tinycnn --epochs 0 --out " + tmp.file("m.ckpt")).code, 0);
  r = run("eval --model " + tmp.file("m.ckpt") + " --pad 32 --test-subset 20");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--pad 32: model '" + tmp.file("m.ckpt") + "' stores pad 0"),
            std::string::npos)
      << r.out;
}

// calibrate on a file from PyTorch with preprocessing options: the locked file it writes stores
// them, `eval` reads them back without options, PyTorch still runs the file, unlock restores it.
TEST(CliTorchScript, CalibrateStoresThePreprocessingItWasGiven) {
  const std::string dir =
      testing::torchscript_fixtures("ts-trained-3k-s1", "--train-images 3000 --epochs 1 --seed 1");
  TempDir tmp;
  const std::string model = dir + "/scripted.pt", locked = tmp.file("locked.pt"),
                    key = tmp.file("k.clk");
  // --pad 28 and --resize 28 change nothing on 28x28 images, but they are not the defaults (0).
  auto r = run("calibrate --model " + model +
               " --target 30-50 --pad 28 --resize 28 --mean 0.286 --std 0.353 "
               "--val-size 500 --test-subset 200 --reestimate-images 64 --out " +
               locked + " --key-out " + key);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("inside 30.0-50.0%"), std::string::npos) << r.out;
  r = run("inspect --json " + locked);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["pad_to"], 28);
  EXPECT_EQ(j["resize_to"], 28);
  EXPECT_EQ(j["type"], "locked model");
  r = run("eval --model " + locked + " --test-subset 100 --reestimate-images 0 --json");
  EXPECT_EQ(r.code, 0) << r.out;
  r = run("eval --model " + locked + " --resize 0 --test-subset 100");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("stores resize 28"), std::string::npos) << r.out;
  const std::string python = std::string(testing::kPython) + " '" + testing::fixture_script() +
                             "' run '" + locked + "' --test-images 100 > /dev/null 2>&1";
  EXPECT_EQ(std::system(python.c_str()), 0) << python;
  r = run("unlock --model " + locked + " --key " + key + " --out " + tmp.file("restored.pt"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(run("fingerprint " + tmp.file("restored.pt")).out, run("fingerprint " + model).out);
}

// attack on scripted and traced files: every attack runs on a copy, scratch re-initialises the
// module, and on the traced graph BatchNorm re-estimation is skipped with the reason.
TEST(CliTorchScript, AttackRunsOnScriptedAndTracedFilesAndNeverWritesThem) {
  const std::string dir = testing::torchscript_fixtures("ts-fresh-s3", "--seed 3");
  TempDir tmp;
  for (const std::string file : {"scripted", "traced"}) {
    auto r = run("lock --model " + dir + "/" + file + ".pt --out " + tmp.file(file + ".pt") +
                 " --key-out " + tmp.file(file + ".clk"));
    ASSERT_EQ(r.code, 0) << r.out;
  }
  const auto scripted_bytes = read_file(tmp.file("scripted.pt")),
             traced_bytes = read_file(tmp.file("traced.pt"));
  const std::string budget =
      " --data-fraction 0.005 --trials 1 --epochs 1 --test-subset 100 --reestimate-images 64";
  auto r = run("attack finetune,bn-recalibrate,scratch --json --model " + tmp.file("scripted.pt") +
               budget);
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["attacks"].size(), 3u);
  EXPECT_TRUE(j["attacks"][0]["advantage_over_scratch"].is_number()) << j.dump();
  EXPECT_EQ(j["attacks"][1]["trials"].size(), 1u)
      << "a scripted module re-estimates its BatchNorms";
  EXPECT_NE(j["attacks"][2]["trials"][0]["detail"].get<std::string>().find(
                "re-initialised as PyTorch's layers do"),
            std::string::npos)
      << j.dump();
  EXPECT_FALSE(j.contains("note"));

  r = run("attack all --model " + tmp.file("traced.pt") + budget + " --report " +
          tmp.file("report.json"));
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string why =
      "the traced TorchScript graph fixes evaluation mode in BatchNorm layer 'bn1'";
  EXPECT_NE(r.out.find("bn-recalibrate: not run: " + why), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("bn-recalibrate + affine: not run: " + why), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("verdict: "), std::string::npos) << r.out;
  j = nlohmann::json::parse(read_file(tmp.file("report.json")));
  EXPECT_TRUE(j["note"].is_string()) << j.dump();
  int skipped = 0, ran = 0;
  for (const auto& a : j["attacks"]) {
    if (a["attack"] == "bn-recalibrate") {
      ++skipped;
      EXPECT_NE(a["skipped"].get<std::string>().find(why), std::string::npos) << a.dump();
      EXPECT_TRUE(a["trials"].empty());
    } else {
      ++ran;
      EXPECT_FALSE(a.contains("skipped")) << a.dump();
      EXPECT_EQ(a["trials"].size(), 1u) << a.dump();
    }
  }
  EXPECT_EQ(skipped, 2);
  EXPECT_EQ(ran, 6);
  // Asked for alone, it cannot run: a usage error with the reason.
  r = run("attack bn-recalibrate --model " + tmp.file("traced.pt") + budget);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find(why), std::string::npos) << r.out;
  EXPECT_EQ(read_file(tmp.file("scripted.pt")), scripted_bytes);
  EXPECT_EQ(read_file(tmp.file("traced.pt")), traced_bytes);
}

// Every command that runs a model opens an ONNX file through OpenCV's path (this one is no ONNX
// file) except those that train or read LibTorch networks, which say why; none runs a safetensors
// file.
TEST(CliFormats, CommandsThatRunAModelRefuseOnnxAndSafetensorsFiles) {
  TempDir tmp;
  for (const std::string name : {"m.onnx", "m.safetensors"}) {
    write_file_atomic(tmp.file(name), std::string("not read"));
    const std::string m = " --model " + tmp.file(name);
    const std::vector<std::pair<std::string, std::string>> commands = {
        {"eval", "eval" + m},
        {"sweep", "sweep" + m + " --ratios 0.01"},
        {"calibrate", "calibrate" + m + " --target 50-55"},
        {"bands", "bands" + m},
        {"attack", "attack all" + m},
        {"analyze", "analyze" + m + " --ratio 0.01"},
        {"predict", "predict" + m + " --input " + tmp.file("x.idx")}};
    for (const auto& [command, line] : commands) {
      const auto r = run(line);
      if (name == "m.onnx" && command != "attack" && command != "analyze") {
        // run: this one is not ONNX at all
        EXPECT_EQ(r.code, 1) << line << ": " << r.out;
        EXPECT_NE(r.out.find("not a valid ONNX ModelProto"), std::string::npos)
            << line << ": " << r.out;
        continue;
      }
      EXPECT_EQ(r.code, 2) << line << ": " << r.out;
      const std::string expected =
          "`" + command + "` cannot run model '" + tmp.file(name) + "' (" +
          (name == "m.onnx" ? "onnx): `attack` fine-tunes, which needs gradients"
                            : "safetensors): a safetensors file holds tensors but no network");
      EXPECT_NE(r.out.find(expected), std::string::npos) << line << ": " << r.out;
    }
  }
}

}  // namespace
}  // namespace corelocker
