// `corelocker lock / unlock / fingerprint / inspect` on ONNX files, through the built binary.
#include <gtest/gtest.h>

#include "cli_run.h"
#include "onnx_fixtures.h"
#include "temp_dir.h"
#include "util/atomic_file.h"

namespace corelocker {
namespace {

using testing::CliRun;
using testing::run;

class CliOnnx : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    fx_ = testing::onnx_fixture_dir(&why);
    if (fx_.empty()) GTEST_SKIP() << why;
    write_file_atomic(dir_.file("m.onnx"), read_file(fx_ + "/resnet_bn.onnx"));
  }
  std::string f(const std::string& name) const { return dir_.file(name); }
  testing::TempDir dir_;
  std::string fx_;
};

TEST_F(CliOnnx, LockUnlockFingerprintInspect) {
  CliRun r = run("lock --model " + f("m.onnx") + " --criterion bn --ratio 0.1 --out " + f("locked.onnx") +
                 " --key-out " + f("k.clk"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("units extracted:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("passes the ONNX checker"), std::string::npos) << r.out;
  if (testing::python_onnx_available()) {
    EXPECT_EQ(testing::python_onnx_check(f("locked.onnx")), 0);
  }

  CliRun i = run("inspect --json " + f("locked.onnx"));
  ASSERT_EQ(i.code, 0) << i.out;
  EXPECT_NE(i.out.find("\"type\":\"locked onnx model\""), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("\"producer\":\"/layer2/short/short.0/Conv\""), std::string::npos) << i.out;
  CliRun it = run("inspect " + f("m.onnx"));
  ASSERT_EQ(it.code, 0) << it.out;
  EXPECT_NE(it.out.find("type: onnx model"), std::string::npos) << it.out;

  r = run("unlock --model " + f("locked.onnx") + " --key " + f("k.clk") + " --out " + f("restored.onnx"));
  ASSERT_EQ(r.code, 0) << r.out;
  CliRun a = run("fingerprint " + f("m.onnx"));
  CliRun b = run("fingerprint " + f("restored.onnx"));
  CliRun l = run("fingerprint " + f("locked.onnx"));
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_EQ(a.out.size(), 65u);
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, l.out);
  EXPECT_EQ(read_file(f("restored.onnx")), read_file(f("m.onnx")));
}

TEST_F(CliOnnx, EncryptedKeyNeedsItsPassphrase) {
  write_file_atomic(f("pw.txt"), std::string("correct horse\n"));
  write_file_atomic(f("bad.txt"), std::string("wrong horse\n"));
  ASSERT_EQ(run("lock --model " + f("m.onnx") + " --out " + f("locked.onnx") + " --key-out " + f("k.clk") +
                " --passphrase-file " + f("pw.txt") + " --kdf interactive")
                .code,
            0);
  CliRun r = run("unlock --model " + f("locked.onnx") + " --key " + f("k.clk") + " --passphrase-file " + f("bad.txt") +
                 " --out " + f("r.onnx"));
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_FALSE(file_exists(f("r.onnx")));
  r = run("unlock --model " + f("locked.onnx") + " --key " + f("k.clk") + " --passphrase-file " + f("pw.txt") +
          " --out " + f("r.onnx"));
  EXPECT_EQ(r.code, 0) << r.out;
}

TEST_F(CliOnnx, OptionsThatMakeNoSenseForOnnxAreRefused) {
  const std::string base = "lock --model " + f("m.onnx") + " --key-out " + f("k.clk") + " --out " + f("l.onnx");
  for (const std::string extra : {" --eval", " --tiers 0.01,0.05", " --tier-bands 30-35", " --fill decoy",
                                  " --mean 0.5", " --pad 32", " --dataset cifar10"}) {
    CliRun r = run(base + extra);
    EXPECT_EQ(r.code, 2) << extra << ": " << r.out;
    EXPECT_NE(r.out.find("usage error"), std::string::npos) << r.out;
    EXPECT_FALSE(file_exists(f("l.onnx"))) << extra;
    EXPECT_FALSE(file_exists(f("k.clk"))) << extra;
  }
  CliRun r = run("lock --model " + f("m.onnx") + " --key-out " + f("k.clk") + " --out " + f("l.ckpt"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("ending in .onnx"), std::string::npos) << r.out;
}

TEST_F(CliOnnx, HostileExternalDataIsRefusedAndNothingIsWritten) {
  std::system(("mkdir -p '" + f("model") + "'").c_str());
  onnx::ModelProto m = testing::to_external(testing::read_proto(f("m.onnx")), f("model"), "w.bin");
  write_file_atomic(f("w.bin"), read_file(f("model/w.bin")));
  testing::set_external_key(m, "layer1.conv1.weight", "location", "../w.bin");
  testing::write_proto(f("model/evil.onnx"), m);
  CliRun r = run("lock --model " + f("model/evil.onnx") + " --out " + f("l.onnx") + " --key-out " + f("k.clk"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("'../w.bin' has a '..' component"), std::string::npos) << r.out;
  EXPECT_FALSE(file_exists(f("l.onnx")));
  EXPECT_FALSE(file_exists(f("k.clk")));
  r = run("fingerprint " + f("model/evil.onnx"));
  EXPECT_EQ(r.code, 1) << r.out;
}

TEST_F(CliOnnx, EveryHostileFileIsRefusedByEveryCommandAndNothingIsWritten) {
  for (int d = 0; d <= static_cast<int>(testing::Defect::kNotProtobuf); ++d) {
    testing::TempDir dir;
    const std::string path = testing::make_hostile(fx_, dir, static_cast<testing::Defect>(d));
    CliRun r = run("lock --model " + path + " --out " + dir.file("l.onnx") + " --key-out " + dir.file("k.clk"));
    EXPECT_EQ(r.code, 1) << "defect " << d << ": " << r.out;
    EXPECT_NE(r.out.find("m.onnx"), std::string::npos) << "defect " << d << ": " << r.out;
    EXPECT_FALSE(file_exists(dir.file("l.onnx"))) << "defect " << d;
    EXPECT_FALSE(file_exists(dir.file("l.onnx.data"))) << "defect " << d;
    EXPECT_FALSE(file_exists(dir.file("k.clk"))) << "defect " << d;
    EXPECT_EQ(run("fingerprint " + path).code, 1) << "defect " << d;
    EXPECT_EQ(run("inspect " + path).code, 1) << "defect " << d;
  }
}

TEST_F(CliOnnx, KeyOfAnotherModelIsRefused) {
  write_file_atomic(f("other.onnx"), read_file(fx_ + "/resnet_folded.onnx"));
  ASSERT_EQ(run("lock --model " + f("m.onnx") + " --out " + f("l1.onnx") + " --key-out " + f("k1.clk")).code, 0);
  ASSERT_EQ(run("lock --model " + f("other.onnx") + " --out " + f("l2.onnx") + " --key-out " + f("k2.clk")).code, 0);
  CliRun r = run("unlock --model " + f("l1.onnx") + " --key " + f("k2.clk") + " --out " + f("r.onnx"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("key belongs to another model"), std::string::npos) << r.out;
  EXPECT_FALSE(file_exists(f("r.onnx")));
}

}  // namespace
}  // namespace corelocker
