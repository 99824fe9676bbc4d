// The command-line contract: exit codes, messages, and no output file on failure.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "cli_run.h"
#include "temp_dir.h"
#include "util/atomic_file.h"

namespace corelocker {
namespace {

using testing::CliRun;
using testing::run;

std::string pct2(double v) {  // as the CLI prints accuracies
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(run("train --arch tinycnn --epochs 0 --seed 1 --out " + dir_.file("m.ckpt")).code, 0);
    ASSERT_EQ(run("train --arch tinycnn --epochs 0 --seed 2 --out " + dir_.file("other.ckpt")).code,
              0);
    CliRun r = run("lock --model " + dir_.file("m.ckpt") + " --criterion l1 --ratio 0.05 --out " +
                   dir_.file("locked.ckpt") + " --key-out " + dir_.file("key.clk"));
    ASSERT_EQ(r.code, 0) << r.out;
    lock_output_ = r.out;
  }
  std::string unlock_to(const std::string& key, const std::string& out, int* code) {
    CliRun r =
        run("unlock --model " + dir_.file("locked.ckpt") + " --key " + key + " --out " + out);
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

TEST_F(Cli, DefaultLockIsGlobalWithFirstAndLastLayersAndNamedCriteriaAreThePapers) {
  CliRun d = run("lock --model " + dir_.file("m.ckpt") + " --ratio 0.05 --out " +
                 dir_.file("d.ckpt") + " --key-out " + dir_.file("d.clk"));
  ASSERT_EQ(d.code, 0) << d.out;
  EXPECT_NE(d.out.find("with default (l1, global, first/last included)"), std::string::npos)
      << d.out;
  CliRun k = run("inspect --json " + dir_.file("d.clk"));
  ASSERT_EQ(k.code, 0) << k.out;
  auto j = nlohmann::json::parse(k.out);
  EXPECT_EQ(j["criterion"], "l1");
  EXPECT_EQ(j["scope"], "global");
  EXPECT_EQ(j["include_io"], true);
  // The fixture's --criterion l1 is the paper's lock: per layer, first and last layers left alone.
  j = nlohmann::json::parse(run("inspect --json " + dir_.file("key.clk")).out);
  EXPECT_EQ(j["scope"], "layer");
  EXPECT_EQ(j["include_io"], false);
  for (const auto& e : j["entries"]) {
    EXPECT_NE(e["tensor"], "conv1.weight");  // tinycnn's first layer
  }
  EXPECT_EQ(run("lock --model " + dir_.file("m.ckpt") + " --include-io --exclude-io --out " +
                dir_.file("x.ckpt") + " --key-out " + dir_.file("x.clk"))
                .code,
            2);
}

TEST_F(Cli, LockedAccuracyComesWithTheEffectiveOne) {
  CliRun l =
      run("lock --model " + dir_.file("m.ckpt") + " --ratio 0.05 --out " + dir_.file("d.ckpt") +
          " --key-out " + dir_.file("d.clk") + " --eval --test-subset 200 --reestimate-images 64");
  ASSERT_EQ(l.code, 0) << l.out;
  for (const char* part : {"after BN re-estimation ", "pruned 0.20 / 0.40: ", "effective "}) {
    EXPECT_NE(l.out.find(part), std::string::npos) << part << " missing in\n" << l.out;
  }
  CliRun e = run("eval --json --model " + dir_.file("d.ckpt") +
                 " --test-subset 200 --reestimate-images 64");
  ASSERT_EQ(e.code, 0) << e.out;
  auto j = nlohmann::json::parse(e.out);
  EXPECT_EQ(j["locked"], true);
  ASSERT_TRUE(j["top1_reestimated"].is_number()) << e.out;
  EXPECT_EQ(j["reestimate_images"], 64);
  EXPECT_GE(j["top1_effective"].get<double>(), j["top1"].get<double>());
  EXPECT_GE(j["top1_effective"].get<double>(), j["top1_reestimated"].get<double>());
  EXPECT_EQ(j["top1_pruned"].size(), 2u);
  // The same numbers in the text of `lock --eval` (same images, same seed).
  EXPECT_NE(l.out.find("effective " + pct2(j["top1_effective"].get<double>()) + "%"),
            std::string::npos)
      << l.out << "\n"
      << e.out;
  // Unlocked models have no effective accuracy to report.
  auto u = nlohmann::json::parse(
      run("eval --json --model " + dir_.file("m.ckpt") + " --test-subset 200").out);
  EXPECT_EQ(u["locked"], false);
  EXPECT_FALSE(u.contains("top1_effective"));
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
  ASSERT_EQ(run("lock --model " + dir_.file("other.ckpt") + " --out " + dir_.file("ol.ckpt") +
                " --key-out " + dir_.file("other.clk"))
                .code,
            0);
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
  EXPECT_EQ(run("lock --model " + dir_.file("m.ckpt") + " --criterion l7 --out " + dir_.file("a") +
                " --key-out " + dir_.file("b"))
                .code,
            2);
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
  for (const char* field : {"\"top1\":", "\"top3\":", "\"n\":200"})
    EXPECT_NE(r.out.find(field), std::string::npos) << r.out;
}

}  // namespace
}  // namespace corelocker

namespace corelocker {
namespace {

class CliKeys : public Cli {
 protected:
  void SetUp() override {
    Cli::SetUp();
    write_file_atomic(dir_.file("pw"), std::string("correct horse battery staple\n"));
    write_file_atomic(dir_.file("wrong"), std::string("correct horse battery stapler\n"));
  }
  std::string model() { return " --model " + dir_.file("m.ckpt"); }
  std::string pw(const char* file = "pw") { return " --passphrase-file " + dir_.file(file); }
};

TEST_F(CliKeys, EncryptedKeyUnlocksOnlyWithThePassphrase) {
  CliRun l = run("lock" + model() + " --out " + dir_.file("el.ckpt") + " --key-out " +
                 dir_.file("e.clk") + pw() + " --kdf interactive");
  ASSERT_EQ(l.code, 0) << l.out;
  EXPECT_NE(l.out.find("encrypted"), std::string::npos) << l.out;
  const std::string unlock = "unlock --model " + dir_.file("el.ckpt") + " --key " +
                             dir_.file("e.clk") + " --out " + dir_.file("r.ckpt");
  CliRun wrong = run(unlock + pw("wrong"));
  EXPECT_EQ(wrong.code, 3) << wrong.out;
  EXPECT_NE(wrong.out.find("wrong passphrase or key file altered"), std::string::npos) << wrong.out;
  EXPECT_FALSE(file_exists(dir_.file("r.ckpt")));
  CliRun none = run(unlock);
  EXPECT_EQ(none.code, 2) << none.out;
  EXPECT_NE(none.out.find("encrypted with a passphrase"), std::string::npos) << none.out;
  EXPECT_FALSE(file_exists(dir_.file("r.ckpt")));
  auto bytes = read_file(dir_.file("e.clk"));
  bytes[bytes.size() - 40] ^= 0x04;  // a ciphertext byte
  write_file_atomic(dir_.file("flipped.clk"), bytes);
  CliRun flipped = run("unlock --model " + dir_.file("el.ckpt") + " --key " +
                       dir_.file("flipped.clk") + " --out " + dir_.file("r.ckpt") + pw());
  EXPECT_EQ(flipped.code, 3) << flipped.out;
  EXPECT_FALSE(file_exists(dir_.file("r.ckpt")));
  setenv("CORELOCKER_TEST_PW", "correct horse battery staple", 1);
  CliRun ok = run(unlock + " --passphrase-env CORELOCKER_TEST_PW");
  ASSERT_EQ(ok.code, 0) << ok.out;
  EXPECT_EQ(run("fingerprint " + dir_.file("r.ckpt")).out,
            run("fingerprint " + dir_.file("m.ckpt")).out);
}

TEST_F(CliKeys, InspectShowsTheHeaderOfAnEncryptedKeyButNotItsContents) {
  ASSERT_EQ(run("lock" + model() + " --out " + dir_.file("el.ckpt") + " --key-out " +
                dir_.file("e.clk") + pw() + " --kdf interactive")
                .code,
            0);
  CliRun h = run("inspect --json " + dir_.file("e.clk"));
  ASSERT_EQ(h.code, 0) << h.out;
  EXPECT_NE(h.out.find("\"criterion\":\"l1\""), std::string::npos) << h.out;
  EXPECT_NE(h.out.find("\"authenticated\":false"), std::string::npos) << h.out;
  EXPECT_EQ(h.out.find("fc1.weight"), std::string::npos) << h.out;
  CliRun full = run("inspect --json " + dir_.file("e.clk") + pw());
  ASSERT_EQ(full.code, 0) << full.out;
  EXPECT_NE(full.out.find("fc1.weight"), std::string::npos) << full.out;
}

TEST_F(CliKeys, EvalWithAnEncryptedKeyWritesNothing) {
  ASSERT_EQ(run("lock" + model() + " --out " + dir_.file("el.ckpt") + " --key-out " +
                dir_.file("e.clk") + pw() + " --kdf interactive")
                .code,
            0);
  // The library writes only through atomic_file, beside the target: nothing may appear in the
  // folder of the model and key. (A count of /tmp entries raced with the tests running beside it.)
  const auto listing = [this] {
    std::set<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir_.path()))
      names.insert(e.path().filename());
    return names;
  };
  const std::set<std::string> before = listing();
  ASSERT_EQ(before.count("el.ckpt") + before.count("e.clk"), 2u);  // the listing sees the files
  CliRun e = run("eval --test-subset 100 --model " + dir_.file("el.ckpt") + " --key " +
                 dir_.file("e.clk") + pw() + " --json");
  ASSERT_EQ(e.code, 0) << e.out;
  EXPECT_NE(e.out.find("\"locked\":false"), std::string::npos) << e.out;
  EXPECT_EQ(listing(), before);
}

TEST_F(CliKeys, TiersNestAndUnlockInOrderOnly) {
  CliRun l = run("lock" + model() + " --tiers 0.2,0.05,0.1 --out " + dir_.file("tl.ckpt") +
                 " --key-out " + dir_.file("t.clk"));
  ASSERT_EQ(l.code, 0) << l.out;
  for (int i = 1; i <= 3; ++i)
    EXPECT_TRUE(file_exists(dir_.file("t.tier" + std::to_string(i) + ".clk"))) << l.out;
  const std::string base =
      "unlock --model " + dir_.file("tl.ckpt") + " --out " + dir_.file("r.ckpt");
  CliRun wrong = run(base + " --key " + dir_.file("t.tier2.clk"));
  EXPECT_EQ(wrong.code, 1);
  EXPECT_NE(wrong.out.find("in order"), std::string::npos) << wrong.out;
  EXPECT_FALSE(file_exists(dir_.file("r.ckpt")));
  CliRun partial = run(base + " --key " + dir_.file("t.tier1.clk"));
  ASSERT_EQ(partial.code, 0) << partial.out;
  EXPECT_NE(partial.out.find("still locked at ratio 0.1"), std::string::npos) << partial.out;
  CliRun all = run(base + " --key " + dir_.file("t.tier1.clk") + " --key " +
                   dir_.file("t.tier2.clk") + " --key " + dir_.file("t.tier3.clk"));
  ASSERT_EQ(all.code, 0) << all.out;
  EXPECT_EQ(run("fingerprint " + dir_.file("r.ckpt")).out,
            run("fingerprint " + dir_.file("m.ckpt")).out);
}

TEST_F(CliKeys, PredictUnlocksInMemory) {
  // Three all-black 28x28 images as an IDX file.
  std::vector<uint8_t> idx = {0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 28, 0, 0, 0, 28};
  idx.resize(idx.size() + 3 * 28 * 28, 0);
  write_file_atomic(dir_.file("x.idx"), idx);
  CliRun p = run("predict --model " + dir_.file("locked.ckpt") + " --key " + dir_.file("key.clk") +
                 " --input " + dir_.file("x.idx") + " --json");
  ASSERT_EQ(p.code, 0) << p.out;
  EXPECT_NE(p.out.find("\"locked\":false"), std::string::npos) << p.out;
  EXPECT_NE(p.out.find("\"index\":2"), std::string::npos) << p.out;
  write_file_atomic(dir_.file("bad.raw"), std::string(100, 'x'));
  CliRun bad =
      run("predict --model " + dir_.file("m.ckpt") + " --raw --input " + dir_.file("bad.raw"));
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("not a positive multiple"), std::string::npos) << bad.out;
}

TEST_F(CliKeys, SecretFileMustHold32Bytes) {
  write_file_atomic(dir_.file("short.key"), std::string(31, 's'));
  CliRun r = run("lock" + model() + " --out " + dir_.file("x.ckpt") + " --key-out " +
                 dir_.file("x.clk") + " --secret-file " + dir_.file("short.key"));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("has 31 bytes, expected 32"), std::string::npos) << r.out;
  EXPECT_FALSE(file_exists(dir_.file("x.ckpt")));
  EXPECT_FALSE(file_exists(dir_.file("x.clk")));
}

}  // namespace
}  // namespace corelocker
