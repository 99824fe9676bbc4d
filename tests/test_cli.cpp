// The command-line contract: exit codes, messages, and no output file on failure.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>

#include "temp_dir.h"
#include "util/atomic_file.h"

namespace corelocker {
namespace {

struct CliRun {
  int code;
  std::string out;  // stdout and stderr
};

CliRun run(const std::string& args) {
  std::string cmd = std::string(CORELOCKER_BIN) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(run("train --arch tinycnn --epochs 0 --seed 1 --out " + dir_.file("m.ckpt")).code, 0);
    ASSERT_EQ(run("train --arch tinycnn --epochs 0 --seed 2 --out " + dir_.file("other.ckpt")).code, 0);
    CliRun r = run("lock --model " + dir_.file("m.ckpt") + " --criterion l1 --ratio 0.05 --out " + dir_.file("locked.ckpt") +
                " --key-out " + dir_.file("key.clk"));
    ASSERT_EQ(r.code, 0) << r.out;
    lock_output_ = r.out;
  }
  std::string unlock_to(const std::string& key, const std::string& out, int* code) {
    CliRun r = run("unlock --model " + dir_.file("locked.ckpt") + " --key " + key + " --out " + out);
    *code = r.code;
    return r.out;
  }
  testing::TempDir dir_;
  std::string lock_output_;
};

TEST_F(Cli, LockReportsWhatWentIntoTheKey) {
  EXPECT_NE(lock_output_.find("units extracted:"), std::string::npos) << lock_output_;
  EXPECT_NE(lock_output_.find("parameters extracted:"), std::string::npos);
  EXPECT_NE(lock_output_.find("key size:"), std::string::npos);
}

TEST_F(Cli, UnlockRestoresTheFingerprint) {
  int code = 0;
  std::string out = unlock_to(dir_.file("key.clk"), dir_.file("restored.ckpt"), &code);
  ASSERT_EQ(code, 0) << out;
  CliRun a = run("fingerprint " + dir_.file("m.ckpt"));
  CliRun b = run("fingerprint " + dir_.file("restored.ckpt"));
  CliRun l = run("fingerprint " + dir_.file("locked.ckpt"));
  EXPECT_EQ(a.out.size(), 65u);
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, l.out);
}

TEST_F(Cli, TruncatedKeyIsRefusedAndWritesNothing) {
  auto bytes = read_file(dir_.file("key.clk"));
  bytes.resize(bytes.size() - 100);
  write_file_atomic(dir_.file("cut.clk"), bytes);
  int code = 0;
  std::string out = unlock_to(dir_.file("cut.clk"), dir_.file("r.ckpt"), &code);
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("truncated"), std::string::npos) << out;
  EXPECT_FALSE(file_exists(dir_.file("r.ckpt")));
}

TEST_F(Cli, AlteredKeyIsRefusedAndWritesNothing) {
  auto bytes = read_file(dir_.file("key.clk"));
  bytes[bytes.size() / 2] ^= 0x01;
  write_file_atomic(dir_.file("alt.clk"), bytes);
  int code = 0;
  std::string out = unlock_to(dir_.file("alt.clk"), dir_.file("r.ckpt"), &code);
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("checksum mismatch"), std::string::npos) << out;
  EXPECT_FALSE(file_exists(dir_.file("r.ckpt")));
}

TEST_F(Cli, KeyOfAnotherModelIsRefusedAndWritesNothing) {
  ASSERT_EQ(run("lock --model " + dir_.file("other.ckpt") + " --out " + dir_.file("ol.ckpt") + " --key-out " +
                dir_.file("other.clk")).code, 0);
  int code = 0;
  std::string out = unlock_to(dir_.file("other.clk"), dir_.file("r.ckpt"), &code);
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("another model"), std::string::npos) << out;
  EXPECT_FALSE(file_exists(dir_.file("r.ckpt")));
}

TEST_F(Cli, NotAKeyIsRefused) {
  int code = 0;
  std::string out = unlock_to(dir_.file("m.ckpt"), dir_.file("r.ckpt"), &code);
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("bad magic"), std::string::npos) << out;
  EXPECT_FALSE(file_exists(dir_.file("r.ckpt")));
}

TEST_F(Cli, UsageErrorsExitWith2) {
  EXPECT_EQ(run("lock --model " + dir_.file("m.ckpt") + " --ratio 2 --out a --key-out b").code, 2);
  EXPECT_EQ(run("lock --model " + dir_.file("m.ckpt") + " --criterion l7 --out " + dir_.file("a") + " --key-out " + dir_.file("b")).code, 2);
  EXPECT_EQ(run("frobnicate").code, 2);
  EXPECT_EQ(run("").code, 2);
  EXPECT_FALSE(file_exists(dir_.file("a")));
}

TEST_F(Cli, InspectDescribesKeysAndModels) {
  CliRun k = run("inspect --json " + dir_.file("key.clk"));
  ASSERT_EQ(k.code, 0) << k.out;
  EXPECT_NE(k.out.find("\"criterion\":\"l1\""), std::string::npos) << k.out;
  EXPECT_NE(k.out.find("\"type\":\"key\""), std::string::npos);
  CliRun m = run("inspect " + dir_.file("locked.ckpt"));
  ASSERT_EQ(m.code, 0) << m.out;
  EXPECT_NE(m.out.find("locked model"), std::string::npos) << m.out;
  EXPECT_NE(m.out.find("key_id"), std::string::npos);
}

TEST_F(Cli, EvalJsonHasTheContractFields) {
  CliRun r = run("eval --json --test-subset 200 --model " + dir_.file("m.ckpt"));
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* field : {"\"top1\":", "\"top3\":", "\"n\":200"}) EXPECT_NE(r.out.find(field), std::string::npos) << r.out;
}

}  // namespace
}  // namespace corelocker
