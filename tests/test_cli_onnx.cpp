// `corelocker eval / lock / unlock / fingerprint / inspect` on ONNX files, through the built
// binary.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "cli_run.h"
#include "data/dataset.h"
#include "formats/onnx/onnx_model.h"
#include "keyfile/key_file.h"
#include "onnx_fixtures.h"
#include "temp_dir.h"
#include "util/atomic_file.h"

namespace corelocker::cli_onnx_test {
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
  CliRun r = run("lock --model " + f("m.onnx") + " --criterion bn --ratio 0.1 --out " +
                 f("locked.onnx") + " --key-out " + f("k.clk"));
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

  r = run("unlock --model " + f("locked.onnx") + " --key " + f("k.clk") + " --out " +
          f("restored.onnx"));
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
  ASSERT_EQ(run("lock --model " + f("m.onnx") + " --out " + f("locked.onnx") + " --key-out " +
                f("k.clk") + " --passphrase-file " + f("pw.txt") + " --kdf interactive")
                .code,
            0);
  CliRun r = run("unlock --model " + f("locked.onnx") + " --key " + f("k.clk") +
                 " --passphrase-file " + f("bad.txt") + " --out " + f("r.onnx"));
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_FALSE(file_exists(f("r.onnx")));
  r = run("unlock --model " + f("locked.onnx") + " --key " + f("k.clk") + " --passphrase-file " +
          f("pw.txt") + " --out " + f("r.onnx"));
  EXPECT_EQ(r.code, 0) << r.out;
}

// --tiers: one key a tier, applied largest ratio first. The first key alone leaves the file
// locked at the smaller ratio; with every key it comes back byte for byte.
TEST_F(CliOnnx, TiersUnlockStepByStepToTheOriginalBytes) {
  const CliRun l = run("lock --model " + f("m.onnx") + " --criterion l1 --tiers 0.05,0.2 --out " +
                       f("l.onnx") + " --key-out " + f("k.clk"));
  ASSERT_EQ(l.code, 0) << l.out;
  EXPECT_NE(l.out.find("tier 1 of 2: " + f("k.tier1.clk") + " takes ratio 0.2000 -> 0.0500"),
            std::string::npos)
      << l.out;
  EXPECT_NE(l.out.find("tier 2 of 2: " + f("k.tier2.clk") + " takes ratio 0.0500 -> original"),
            std::string::npos)
      << l.out;
  const CliRun p =
      run("unlock --model " + f("l.onnx") + " --key " + f("k.tier1.clk") + " --out " + f("p.onnx"));
  ASSERT_EQ(p.code, 0) << p.out;
  EXPECT_NE(p.out.find("still locked at ratio 0.0500 (1 tier key(s) to go)"), std::string::npos)
      << p.out;
  const CliRun wrong =
      run("unlock --model " + f("l.onnx") + " --key " + f("k.tier2.clk") + " --out " + f("w.onnx"));
  EXPECT_EQ(wrong.code, 1) << wrong.out;  // out of order: the key belongs to another state
  EXPECT_FALSE(file_exists(f("w.onnx")));
  const CliRun r =
      run("unlock --model " + f("p.onnx") + " --key " + f("k.tier2.clk") + " --out " + f("r.onnx"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_file(f("r.onnx")), read_file(f("m.onnx")));
  const CliRun both = run("unlock --model " + f("l.onnx") + " --key " + f("k.tier1.clk") +
                          " --key " + f("k.tier2.clk") + " --out " + f("r2.onnx"));
  ASSERT_EQ(both.code, 0) << both.out;
  EXPECT_EQ(read_file(f("r2.onnx")), read_file(f("m.onnx")));
}

// Values of the float initializers that are exactly zero.
int64_t zero_values(const std::string& path) {
  int64_t n = 0;
  const OnnxModel model = load_onnx_model(path);
  for (const auto& t : model.initializers()) {
    if (t.data_type != 1) continue;  // float32
    const auto* v = reinterpret_cast<const float*>(t.bytes.data());
    for (uint64_t i = 0; i < t.numel(); ++i) n += v[i] == 0.0f;
  }
  return n;
}

// --fill decoy: the extracted positions hold decoys, not zeros (the locked file has no more zeros
// than the original), each tier's too; the key restores the original bytes. With --eval, the
// search evaluates its draws on the validation split.
TEST_F(CliOnnx, DecoyFillLeavesNoZerosAndRestoresTheOriginalBytes) {
  const std::string lock = "lock --model " + f("m.onnx") + " --ratio 0.1 --key-out ";
  const CliRun z = run(lock + f("z.clk") + " --out " + f("z.onnx"));
  ASSERT_EQ(z.code, 0) << z.out;
  const CliRun d = run(lock + f("d.clk") + " --out " + f("d.onnx") + " --fill decoy");
  ASSERT_EQ(d.code, 0) << d.out;
  const int64_t original = zero_values(f("m.onnx")), zeroed = zero_values(f("z.onnx"));
  EXPECT_GT(zeroed, original + 100);  // zero fill gives itself away
  EXPECT_LE(zero_values(f("d.onnx")), original);
  EXPECT_EQ(read_key_file(f("d.clk")).header.fill, Fill::kDecoy);
  const CliRun u =
      run("unlock --model " + f("d.onnx") + " --key " + f("d.clk") + " --out " + f("r.onnx"));
  ASSERT_EQ(u.code, 0) << u.out;
  EXPECT_EQ(read_file(f("r.onnx")), read_file(f("m.onnx")));

  const CliRun t = run("lock --model " + f("m.onnx") + " --tiers 0.05,0.1 --fill decoy --key-out " +
                       f("t.clk") + " --out " + f("t.onnx"));
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_LE(zero_values(f("t.onnx")), original);
  const CliRun first = run("unlock --model " + f("t.onnx") + " --key " + f("t.tier1.clk") +
                           " --out " + f("t1.onnx"));
  ASSERT_EQ(first.code, 0) << first.out;
  EXPECT_LE(zero_values(f("t1.onnx")), original);  // locked at 0.05, with decoys
  const CliRun both = run("unlock --model " + f("t.onnx") + " --key " + f("t.tier1.clk") +
                          " --key " + f("t.tier2.clk") + " --out " + f("t2.onnx"));
  ASSERT_EQ(both.code, 0) << both.out;
  EXPECT_EQ(read_file(f("t2.onnx")), read_file(f("m.onnx")));

  const CliRun s =
      run(lock + f("s.clk") + " --out " + f("s.onnx") +
          " --fill decoy --decoy-tries 2 --eval --val-size 100 --test-subset 100 --threads 2");
  ASSERT_EQ(s.code, 0) << s.out;
  EXPECT_NE(s.out.find("decoy fill: kept the"), std::string::npos) << s.out;
  EXPECT_NE(s.out.find("of 2 draws (top-1 on 100 validation images)"), std::string::npos) << s.out;
  EXPECT_LE(zero_values(f("s.onnx")), original);

  // Without --eval the model does not run: a search asked for is refused, not dropped.
  const CliRun n =
      run(lock + f("n.clk") + " --out " + f("n.onnx") + " --fill decoy --decoy-tries 4");
  EXPECT_EQ(n.code, 2) << n.out;
  EXPECT_NE(n.out.find("--decoy-tries and --decoy-target choose a decoy fill by running the model"),
            std::string::npos)
      << n.out;
  EXPECT_FALSE(file_exists(f("n.onnx")));
  EXPECT_FALSE(file_exists(f("n.clk")));
}

// --keep on node or initializer names: the kept layers' initializers are the original bytes and
// the key holds none of them; a pattern that matches nothing is a usage error.
TEST_F(CliOnnx, KeepLeavesTheNamedLayersAlone) {
  const std::string lock = "lock --model " + f("m.onnx") + " --ratio 0.2 --include-io --out " +
                           f("l.onnx") + " --key-out " + f("k.clk");
  const CliRun bad = run(lock + " --keep '/nosuch/*'");
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_NE(bad.out.find("'/nosuch/*': matches no layer"), std::string::npos) << bad.out;
  EXPECT_FALSE(file_exists(f("l.onnx")));
  EXPECT_FALSE(file_exists(f("k.clk")));

  const CliRun r = run(lock + " --keep '/layer1/*' --keep 'fc.weight'");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("left alone (--keep): /layer1/conv2/Conv"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("left alone (--keep): /fc/Gemm"), std::string::npos) << r.out;
  const OnnxModel original = load_onnx_model(f("m.onnx")), locked = load_onnx_model(f("l.onnx"));
  std::set<std::string> in_key;
  for (const auto& e : read_key_file(f("k.clk")).entries) in_key.insert(e.tensor);
  EXPECT_TRUE(in_key.count("conv1.weight")) << "--include-io: the first layer is locked";
  EXPECT_TRUE(in_key.count("layer2.conv1.weight"));
  int kept = 0;
  for (const auto& t : original.initializers()) {
    const bool keep = t.name.rfind("layer1.", 0) == 0 || t.name == "fc.weight";
    if (!keep) continue;
    ++kept;
    EXPECT_FALSE(in_key.count(t.name)) << t.name;
    EXPECT_EQ(locked.find(t.name)->bytes, t.bytes) << t.name;
  }
  EXPECT_GE(kept, 9);  // two convs, two BatchNorms (4 tensors each), the fc weight
  const CliRun u =
      run("unlock --model " + f("l.onnx") + " --key " + f("k.clk") + " --out " + f("r.onnx"));
  ASSERT_EQ(u.code, 0) << u.out;
  EXPECT_EQ(read_file(f("r.onnx")), read_file(f("m.onnx")));
}

TEST_F(CliOnnx, OptionsThatMakeNoSenseForOnnxAreRefused) {
  const std::string base =
      "lock --model " + f("m.onnx") + " --key-out " + f("k.clk") + " --out " + f("l.onnx");
  for (const std::string extra : {" --mean 0.5", " --pad 32", " --dataset cifar10"}) {
    CliRun r = run(base + extra);
    EXPECT_EQ(r.code, 2) << extra << ": " << r.out;
    EXPECT_NE(r.out.find("usage error"), std::string::npos) << r.out;
    EXPECT_FALSE(file_exists(f("l.onnx"))) << extra;
    EXPECT_FALSE(file_exists(f("k.clk"))) << extra;
  }
  CliRun r =
      run("lock --model " + f("m.onnx") + " --key-out " + f("k.clk") + " --out " + f("l.ckpt"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("ending in .onnx"), std::string::npos) << r.out;
}

// `eval` and `lock --eval` run the graph through OpenCV on the test split.
TEST_F(CliOnnx, EvalAndLockEvalRunTheGraph) {
  const std::string data = " --test-subset 300 --threads 2";
  CliRun e = run("eval --model " + f("m.onnx") + " --json" + data);
  ASSERT_EQ(e.code, 0) << e.out;
  EXPECT_NE(e.out.find("\"runtime\":\"OpenCV"), std::string::npos) << e.out;
  EXPECT_NE(e.out.find("\"locked\":false"), std::string::npos) << e.out;
  EXPECT_NE(e.out.find("\"n\":300"), std::string::npos) << e.out;
  CliRun t = run("eval --model " + f("m.onnx") + data);
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("top-1 "), std::string::npos) << t.out;

  CliRun l = run("lock --model " + f("m.onnx") + " --eval --reestimate-images 64 --out " +
                 f("l.onnx") + " --key-out " + f("k.clk") + data);
  ASSERT_EQ(l.code, 0) << l.out;
  EXPECT_NE(l.out.find("locked accuracy:"), std::string::npos) << l.out;
  EXPECT_NE(l.out.find("after BN re-estimation "), std::string::npos) << l.out;
  EXPECT_EQ(l.out.find("n/a"), std::string::npos) << l.out;  // re-estimated, not skipped

  CliRun le = run("eval --model " + f("l.onnx") + " --json --reestimate-images 64" + data);
  ASSERT_EQ(le.code, 0) << le.out;
  EXPECT_NE(le.out.find("\"locked\":true"), std::string::npos) << le.out;
  EXPECT_NE(le.out.find("\"top1_effective\""), std::string::npos) << le.out;
  EXPECT_NE(le.out.find("\"effective_from\""), std::string::npos) << le.out;
  EXPECT_EQ(le.out.find("\"top1_reestimated\":null"), std::string::npos) << le.out;

  // Unlocked in memory with the key: the original's numbers, nothing written.
  CliRun u = run("eval --model " + f("l.onnx") + " --key " + f("k.clk") + " --json" + data);
  ASSERT_EQ(u.code, 0) << u.out;
  auto top1 = [](const std::string& out) { return out.substr(out.find("\"top1\":"), 14); };
  EXPECT_EQ(top1(u.out), top1(e.out)) << u.out << e.out;

  // Preprocessing that does not fit the graph's 1x28x28 input is a usage error.
  CliRun p = run("eval --model " + f("m.onnx") + " --pad 32" + data);
  EXPECT_EQ(p.code, 2) << p.out;
  EXPECT_NE(p.out.find("--pad"), std::string::npos) << p.out;
}

// The predictions of `predict --json` without the "model" field.
nlohmann::json predictions(const CliRun& r) {
  nlohmann::json j = nlohmann::json::parse(r.out);
  j.erase("model");
  return j;
}

TEST_F(CliOnnx, PredictRunsTheGraphAndUnlocksInMemory) {
  // The first 24 Fashion-MNIST test images as an IDX file.
  const Dataset test = load_dataset("fashion-mnist", "", Split::kTest);
  const int64_t n = 24;
  std::vector<uint8_t> idx = {0, 0, 8, 3,  0, 0, 0, static_cast<uint8_t>(n),
                              0, 0, 0, 28, 0, 0, 0, 28};
  const torch::Tensor first = test.images.narrow(0, 0, n).contiguous();
  idx.insert(idx.end(), first.data_ptr<uint8_t>(), first.data_ptr<uint8_t>() + n * 28 * 28);
  write_file_atomic(f("x.idx"), idx);
  const std::string in = " --input " + f("x.idx") + " --json --top 3 --threads 2";

  const CliRun o = run("predict --model " + f("m.onnx") + in);
  ASSERT_EQ(o.code, 0) << o.out;
  const nlohmann::json original = predictions(o);
  EXPECT_FALSE(original["locked"].get<bool>());
  ASSERT_EQ(original["predictions"].size(), size_t(n)) << o.out;
  for (const auto& row : original["predictions"]) {
    ASSERT_EQ(row["classes"].size(), 3u);
    const std::vector<double> p = row["probabilities"];  // softmax: best first, at most 1 in all
    EXPECT_GE(p[0], p[1]);
    EXPECT_GE(p[1], p[2]);
    EXPECT_LE(p[0] + p[1] + p[2], 1.0 + 1e-6);
  }

  ASSERT_EQ(
      run("lock --model " + f("m.onnx") + " --out " + f("l.onnx") + " --key-out " + f("k.clk"))
          .code,
      0);
  const CliRun l = run("predict --model " + f("l.onnx") + in);
  ASSERT_EQ(l.code, 0) << l.out;
  const nlohmann::json locked = predictions(l);
  EXPECT_TRUE(locked["locked"].get<bool>());
  EXPECT_NE(locked["predictions"], original["predictions"]);

  // With the key, in memory: the original's predictions, probabilities included; nothing written.
  const auto files = [&] {
    std::set<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(f("")))
      names.insert(e.path().string());
    return names;
  };
  const std::set<std::string> before = files();
  const std::vector<uint8_t> locked_bytes = read_file(f("l.onnx"));
  const CliRun u = run("predict --model " + f("l.onnx") + " --key " + f("k.clk") + in);
  ASSERT_EQ(u.code, 0) << u.out;
  EXPECT_EQ(predictions(u), original) << u.out;
  EXPECT_EQ(files(), before);
  EXPECT_EQ(read_file(f("l.onnx")), locked_bytes);

  // Images the graph's 1x28x28 input cannot take are a usage error naming the option.
  const CliRun p = run("predict --model " + f("m.onnx") + " --pad 32" + in);
  EXPECT_EQ(p.code, 2) << p.out;
  EXPECT_NE(p.out.find("--pad"), std::string::npos) << p.out;
}

TEST_F(CliOnnx, AGraphOpenCvCannotImportIsRefusedNamingTheNodeAndNothingIsWritten) {
  onnx::ModelProto m = testing::read_proto(f("m.onnx"));
  onnx::GraphProto& g = *m.mutable_graph();
  // logits -> Hardmax (an ONNX op OpenCV 4.6 lacks) -> the graph's output
  for (auto& n : *g.mutable_node()) {
    for (auto& o : *n.mutable_output()) {
      if (o == "logits") o = "scores";
    }
  }
  onnx::NodeProto* h = g.add_node();
  h->set_op_type("Hardmax");
  h->set_name("hardmax_head");
  h->add_input("scores");
  h->add_output("logits");
  testing::write_proto(f("hard.onnx"), m);
  CliRun r = run("eval --model " + f("hard.onnx") + " --test-subset 10");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("hard.onnx"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("node 'hardmax_head' (op Hardmax)"), std::string::npos) << r.out;
  r = run("lock --model " + f("hard.onnx") + " --eval --test-subset 10 --out " + f("l.onnx") +
          " --key-out " + f("k.clk"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("node 'hardmax_head' (op Hardmax)"), std::string::npos) << r.out;
  EXPECT_FALSE(file_exists(f("l.onnx")));
  EXPECT_FALSE(file_exists(f("k.clk")));
  // Without --eval it locks: nothing runs the graph.
  EXPECT_EQ(
      run("lock --model " + f("hard.onnx") + " --out " + f("l.onnx") + " --key-out " + f("k.clk"))
          .code,
      0);
}

// `detect` reads the initializers: a zero fill is found by every detector that reads the values,
// the learned detector trains on relocks of the graph's layers, a key of another file is refused.
TEST_F(CliOnnx, DetectAuditsTheLockedFileAgainstItsKey) {
  const std::string lock = "lock --model " + f("m.onnx") + " --ratio 0.1 --key-out ";
  ASSERT_EQ(run(lock + f("z.clk") + " --out " + f("z.onnx")).code, 0);
  ASSERT_EQ(run(lock + f("d.clk") + " --out " + f("d.onnx") + " --fill decoy").code, 0);
  const std::string opts = " --permutations 20 --learned-locks 1 --json";
  const CliRun z = run("detect --model " + f("z.onnx") + " --key " + f("z.clk") + opts);
  ASSERT_EQ(z.code, 0) << z.out;
  const auto zj = nlohmann::json::parse(z.out);
  EXPECT_FALSE(zj["at_chance"].get<bool>()) << z.out;
  for (const auto& d : zj["detectors"]) {
    if (d["name"] == "position") continue;  // the criterion, not the fill
    EXPECT_GE(d["precision"].get<double>(), 0.99) << d.dump();
  }
  EXPECT_EQ(zj["layers"].size(), read_key_file(f("z.clk")).entries.size());
  const CliRun d = run("detect --model " + f("d.onnx") + " --key " + f("d.clk") + opts);
  ASSERT_EQ(d.code, 0) << d.out;
  EXPECT_GT(nlohmann::json::parse(d.out)["learned"]["training_kernels"].get<int64_t>(), 0) << d.out;
  const CliRun wrong = run("detect --model " + f("d.onnx") + " --key " + f("z.clk") + opts);
  EXPECT_EQ(wrong.code, 1) << wrong.out;
  EXPECT_NE(wrong.out.find("does not apply"), std::string::npos) << wrong.out;
}

TEST_F(CliOnnx, CommandsThatCannotRunOnnxSaySo) {
  CliRun r = run("attack all --model " + f("m.onnx"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("needs gradients"), std::string::npos) << r.out;
  // calibrate writes the locked model in the model's own format.
  r = run("calibrate --model " + f("m.onnx") + " --target 0-100 --target-plain --val-size 50 " +
          "--out " + f("l.ckpt") + " --key-out " + f("k.clk"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("written as onnx"), std::string::npos) << r.out;
  EXPECT_FALSE(file_exists(f("l.ckpt")));
  EXPECT_FALSE(file_exists(f("k.clk")));
}

std::string text_of(const std::string& path) {
  const auto bytes = read_file(path);
  return std::string(bytes.begin(), bytes.end());
}

// The number after "top1": in a JSON line.
double json_top1(const std::string& out) {
  const size_t at = out.find("\"top1\":");
  if (at == std::string::npos) {
    ADD_FAILURE() << "no top1 in " << out;
    return -1.0;
  }
  return std::stod(out.substr(at + 7));
}

// `calibrate`, `bands`, `sweep` and `lock --tier-bands` on a trained ONNX model: each probe locks
// the initializers in memory and runs the graph through OpenCV; the model file is never changed,
// and what calibrate and the tiers write unlocks to the original bytes.
class CliOnnxSearch : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    bool skip = false;
    const std::string trained = testing::trained_onnx_fixture(&why, &skip);
    if (trained.empty() && skip) GTEST_SKIP() << why;
    ASSERT_FALSE(trained.empty()) << why;
    write_file_atomic(f("m.onnx"), read_file(trained));
    const CliRun e = run("eval --model " + f("m.onnx") + " --json" + kTest);
    ASSERT_EQ(e.code, 0) << e.out;
    unlocked_ = json_top1(e.out);
    ASSERT_GT(unlocked_, 40.0) << "the fixture is not trained: " << e.out;
  }
  std::string f(const std::string& name) const { return dir_.file(name); }
  static constexpr const char* kTest = " --test-subset 500 --threads 2";
  testing::TempDir dir_;
  double unlocked_ = 0.0;
};

TEST_F(CliOnnxSearch, CalibrateFindsTheBandAndWritesALockThatRestores) {
  const auto before = read_file(f("m.onnx"));
  const CliRun c = run("calibrate --model " + f("m.onnx") +
                       " --target 15-40 --target-plain --val-size 500 --max-evals 12 --out " +
                       f("l.onnx") + " --key-out " + f("k.clk") + kTest);
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_NE(c.out.find("found after"), std::string::npos) << c.out;
  EXPECT_EQ(read_file(f("m.onnx")), before);
  // The locked file, run by OpenCV on the test split, lands near the validation band.
  const CliRun l = run("eval --model " + f("l.onnx") + " --json --reestimate-images 32" + kTest);
  ASSERT_EQ(l.code, 0) << l.out;
  EXPECT_NE(l.out.find("\"locked\":true"), std::string::npos) << l.out;
  const double locked = json_top1(l.out);
  EXPECT_GT(locked, 9.0) << l.out;
  EXPECT_LT(locked, 46.0) << l.out;
  ASSERT_EQ(
      run("unlock --model " + f("l.onnx") + " --key " + f("k.clk") + " --out " + f("r.onnx")).code,
      0);
  EXPECT_EQ(read_file(f("r.onnx")), before);

  // With the effective target (BatchNorm re-estimation and pruning at each probe).
  const CliRun ce =
      run("calibrate --model " + f("m.onnx") +
          " --target 10-40 --val-size 300 --reestimate-images 64 --max-evals 12" + kTest);
  ASSERT_EQ(ce.code, 0) << ce.out;
  EXPECT_NE(ce.out.find("effective"), std::string::npos) << ce.out;
  EXPECT_EQ(read_file(f("m.onnx")), before);
}

TEST_F(CliOnnxSearch, BandsAndSweepMeasureTheGraph) {
  const auto before = read_file(f("m.onnx"));
  const CliRun b =
      run("bands --model " + f("m.onnx") +
          " --target-plain --width 20 --val-size 300 --no-test --json " + f("b.json") + kTest);
  ASSERT_EQ(b.code, 0) << b.out;
  const nlohmann::json table = nlohmann::json::parse(text_of(f("b.json")));
  ASSERT_FALSE(table["rows"].empty()) << b.out;
  double last_ratio = 0.0;
  int reached = 0;
  for (const auto& row : table["rows"]) {
    if (!row["reached"].get<bool>()) continue;
    ++reached;
    const double acc = row["val_top1"];
    EXPECT_GE(acc, row["low"].get<double>()) << row;
    EXPECT_LT(acc, row["high"].get<double>()) << row;
    EXPECT_GT(row["ratio"].get<double>(), last_ratio) << row;  // lower bands, larger ratios
    last_ratio = row["ratio"];
  }
  EXPECT_GE(reached, 2) << b.out;

  const CliRun s = run("sweep --model " + f("m.onnx") +
                       " --ratios 0,0.3 --criteria l1,bn --plain-only --no-plot --out-dir " +
                       f("sweep") + kTest);
  ASSERT_EQ(s.code, 0) << s.out;
  const nlohmann::json sw = nlohmann::json::parse(text_of(f("sweep/sweep.json")));
  ASSERT_EQ(sw["points"].size(), 4u) << s.out;
  for (const auto& p : sw["points"]) {
    if (p["ratio"].get<double>() == 0.0)
      EXPECT_DOUBLE_EQ(p["top1"].get<double>(), unlocked_) << p;  // nothing extracted
    else
      EXPECT_LT(p["top1"].get<double>(), unlocked_ - 10.0) << p;
  }
  EXPECT_EQ(read_file(f("m.onnx")), before);
}

TEST_F(CliOnnxSearch, TierBandsLockTiersThatUnlockStepByStep) {
  const auto before = read_file(f("m.onnx"));
  const CliRun t = run("lock --model " + f("m.onnx") +
                       " --tier-bands 18-40,4-15 --target-plain --val-size 500 --out " +
                       f("t.onnx") + " --key-out " + f("k.clk") + " --threads 2");
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("band 18.0-40.0%: ratio"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("band 4.0-15.0%: ratio"), std::string::npos) << t.out;
  // Tier 1 (the larger ratio) first, then tier 2, back to the original bytes.
  ASSERT_EQ(
      run("unlock --model " + f("t.onnx") + " --key " + f("k.tier1.clk") + " --out " + f("t2.onnx"))
          .code,
      0);
  const CliRun mid = run("eval --model " + f("t2.onnx") + " --json --reestimate-images 32" + kTest);
  ASSERT_EQ(mid.code, 0) << mid.out;
  const double mid_top1 = json_top1(mid.out);  // the upper band's state, near 18-40
  EXPECT_GT(mid_top1, 12.0) << mid.out;
  EXPECT_LT(mid_top1, 46.0) << mid.out;
  ASSERT_EQ(
      run("unlock --model " + f("t2.onnx") + " --key " + f("k.tier2.clk") + " --out " + f("r.onnx"))
          .code,
      0);
  EXPECT_EQ(read_file(f("r.onnx")), before);
}

TEST_F(CliOnnx, HostileExternalDataIsRefusedAndNothingIsWritten) {
  std::system(("mkdir -p '" + f("model") + "'").c_str());
  onnx::ModelProto m = testing::to_external(testing::read_proto(f("m.onnx")), f("model"), "w.bin");
  write_file_atomic(f("w.bin"), read_file(f("model/w.bin")));
  testing::set_external_key(m, "layer1.conv1.weight", "location", "../w.bin");
  testing::write_proto(f("model/evil.onnx"), m);
  CliRun r = run("lock --model " + f("model/evil.onnx") + " --out " + f("l.onnx") + " --key-out " +
                 f("k.clk"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("'../w.bin' has a '..' component"), std::string::npos) << r.out;
  EXPECT_FALSE(file_exists(f("l.onnx")));
  EXPECT_FALSE(file_exists(f("k.clk")));
  r = run("fingerprint " + f("model/evil.onnx"));
  EXPECT_EQ(r.code, 1) << r.out;
}

TEST_F(CliOnnx, EveryHostileFileIsRefusedByEveryCommandAndNothingIsWritten) {
  std::vector<uint8_t> idx = {0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 28, 0, 0, 0, 28};  // one image
  idx.resize(idx.size() + 28 * 28, 0);
  write_file_atomic(f("x.idx"), idx);
  for (int d = 0; d <= static_cast<int>(testing::Defect::kNotProtobuf); ++d) {
    testing::TempDir dir;
    const std::string path = testing::make_hostile(fx_, dir, static_cast<testing::Defect>(d));
    CliRun r = run("lock --model " + path + " --out " + dir.file("l.onnx") + " --key-out " +
                   dir.file("k.clk"));
    EXPECT_EQ(r.code, 1) << "defect " << d << ": " << r.out;
    EXPECT_NE(r.out.find("m.onnx"), std::string::npos) << "defect " << d << ": " << r.out;
    EXPECT_FALSE(file_exists(dir.file("l.onnx"))) << "defect " << d;
    EXPECT_FALSE(file_exists(dir.file("l.onnx.data"))) << "defect " << d;
    EXPECT_FALSE(file_exists(dir.file("k.clk"))) << "defect " << d;
    EXPECT_EQ(run("fingerprint " + path).code, 1) << "defect " << d;
    EXPECT_EQ(run("inspect " + path).code, 1) << "defect " << d;
    CliRun e = run("eval --model " + path + " --test-subset 10");
    EXPECT_EQ(e.code, 1) << "defect " << d << ": " << e.out;
    EXPECT_NE(e.out.find("m.onnx"), std::string::npos) << "defect " << d << ": " << e.out;
    CliRun p = run("predict --model " + path + " --input " + f("x.idx"));
    EXPECT_EQ(p.code, 1) << "defect " << d << ": " << p.out;
    EXPECT_NE(p.out.find("m.onnx"), std::string::npos) << "defect " << d << ": " << p.out;
  }
}

TEST_F(CliOnnx, KeyOfAnotherModelIsRefused) {
  write_file_atomic(f("other.onnx"), read_file(fx_ + "/resnet_folded.onnx"));
  ASSERT_EQ(
      run("lock --model " + f("m.onnx") + " --out " + f("l1.onnx") + " --key-out " + f("k1.clk"))
          .code,
      0);
  ASSERT_EQ(run("lock --model " + f("other.onnx") + " --out " + f("l2.onnx") + " --key-out " +
                f("k2.clk"))
                .code,
            0);
  CliRun r =
      run("unlock --model " + f("l1.onnx") + " --key " + f("k2.clk") + " --out " + f("r.onnx"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("key belongs to another model"), std::string::npos) << r.out;
  EXPECT_FALSE(file_exists(f("r.onnx")));
}

}  // namespace
}  // namespace corelocker::cli_onnx_test
