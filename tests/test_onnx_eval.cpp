// ONNX evaluation through OpenCV's dnn module: a hand-made graph with seeded weights gives the
// logits the same computation gives in torch, evaluation counts top-1 / top-3 as for our own
// networks, BatchNorm re-estimation and pruning write the values torch computes, and graphs
// OpenCV cannot import are refused naming the node.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <optional>

#include "control/calibrate.h"
#include "formats/format.h"
#include "formats/onnx/onnx_curve.h"
#include "formats/onnx/onnx_eval.h"
#include "formats/onnx/onnx_lock.h"
#include "formats/onnx/onnx_model.h"
#include "formats/onnx/onnx_runtime.h"
#include "onnx/onnx_pb.h"
#include "onnx_fixtures.h"
#include "temp_dir.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::onnx_eval_test {
namespace {

namespace F = torch::nn::functional;

constexpr double kEps = 1e-5;

onnx::TensorProto tensor_proto(const std::string& name, const torch::Tensor& t) {
  onnx::TensorProto p;
  p.set_name(name);
  p.set_data_type(onnx::TensorProto::FLOAT);
  for (int64_t d : t.sizes()) p.add_dims(d);
  const torch::Tensor c = t.to(torch::kFloat32).contiguous();
  p.set_raw_data(c.data_ptr<float>(), static_cast<size_t>(c.numel()) * sizeof(float));
  return p;
}

onnx::NodeProto* add_node(onnx::GraphProto& g, const std::string& op, const std::string& name,
                          const std::vector<std::string>& in, const std::vector<std::string>& out) {
  onnx::NodeProto* n = g.add_node();
  n->set_op_type(op);
  n->set_name(name);
  for (const auto& s : in) n->add_input(s);
  for (const auto& s : out) n->add_output(s);
  return n;
}

void set_ints(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
}

void set_int(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

void set_float(onnx::NodeProto* n, const std::string& name, float v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(v);
}

void value_info(onnx::ValueInfoProto* v, const std::string& name,
                const std::vector<int64_t>& dims) {
  v->set_name(name);
  auto* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx::TensorProto::FLOAT);
  for (int64_t d : dims) t->mutable_shape()->add_dim()->set_dim_value(d);
}

struct GraphOptions {
  bool identity_fc =
      false;            // the Gemm's weight through Identity(initializer), as PyTorch deduplicates
  std::string tail_op;  // an op appended after the Gemm ("Hardmax", ...)
  std::string tail_domain;
};

GraphOptions with_identity(bool on) {
  GraphOptions o;
  o.identity_fc = on;
  return o;
}

GraphOptions with_tail(const std::string& op, const std::string& domain) {
  GraphOptions o;
  o.tail_op = op;
  o.tail_domain = domain;
  return o;
}

struct BnStats {
  torch::Tensor mean1, var1, mean2, var2;
};

// Conv(2->4, 3x3, bias) -> BatchNormalization -> Relu -> Conv(4->5, 3x3, stride 2) ->
// BatchNormalization -> Relu -> GlobalAveragePool -> Flatten -> Gemm(5->3), on [N, 2, 6, 6],
// with seeded weights; the graph as ONNX and the same computation in torch.
struct SmallNet {
  torch::Tensor w1, b1, g1, be1, m1, v1, w2, g2, be2, m2, v2, wf, bf;

  explicit SmallNet(uint64_t seed) {
    torch::manual_seed(seed);
    w1 = torch::randn({4, 2, 3, 3}) * 0.5;
    b1 = torch::randn({4}) * 0.1;
    g1 = torch::rand({4}) + 0.5;
    be1 = torch::randn({4}) * 0.2;
    m1 = torch::randn({4}) * 0.1;
    v1 = torch::rand({4}) + 0.5;
    w2 = torch::randn({5, 4, 3, 3}) * 0.3;
    g2 = torch::rand({5}) + 0.5;
    be2 = torch::randn({5}) * 0.2;
    m2 = torch::randn({5}) * 0.1;
    v2 = torch::rand({5}) + 0.5;
    wf = torch::randn({3, 5});
    bf = torch::randn({3}) * 0.1;
  }

  // The graph up to each BatchNormalization's input, as torch computes it.
  torch::Tensor bn1_input(const torch::Tensor& x) const { return torch::conv2d(x, w1, b1, 1, 1); }
  torch::Tensor bn2_input(const torch::Tensor& x, const torch::Tensor& mean1,
                          const torch::Tensor& var1) const {
    auto y =
        torch::relu(torch::batch_norm(bn1_input(x), g1, be1, mean1, var1, false, 0.0, kEps, false));
    return torch::conv2d(y, w2, {}, 2, 1);
  }
  torch::Tensor forward(const torch::Tensor& x, const BnStats* s = nullptr) const {
    const BnStats st = s ? *s : BnStats{m1, v1, m2, v2};
    auto y = torch::relu(torch::batch_norm(bn2_input(x, st.mean1, st.var1), g2, be2, st.mean2,
                                           st.var2, false, 0.0, kEps, false));
    y = F::adaptive_avg_pool2d(y, F::AdaptiveAvgPool2dFuncOptions(1)).flatten(1);
    return torch::linear(y, wf, bf);
  }

  onnx::ModelProto proto(const GraphOptions& o) const {
    onnx::ModelProto m;
    m.set_ir_version(onnx::IR_VERSION);
    m.set_producer_name("test_onnx_eval");
    auto* opset = m.add_opset_import();
    opset->set_domain("");
    opset->set_version(13);
    if (!o.tail_domain.empty()) {
      auto* custom = m.add_opset_import();
      custom->set_domain(o.tail_domain);
      custom->set_version(1);
    }
    onnx::GraphProto& g = *m.mutable_graph();
    g.set_name("small");
    value_info(g.add_input(), "x", {1, 2, 6, 6});  // batch 1, as torch.onnx.export writes it
    const std::vector<std::pair<std::string, torch::Tensor>> inits = {
        {"w1", w1}, {"b1", b1},   {"g1", g1}, {"be1", be1}, {"m1", m1}, {"v1", v1}, {"w2", w2},
        {"g2", g2}, {"be2", be2}, {"m2", m2}, {"v2", v2},   {"wf", wf}, {"bf", bf}};
    for (const auto& [name, t] : inits) *g.add_initializer() = tensor_proto(name, t);
    std::string fc_weight = "wf";
    if (o.identity_fc) {
      add_node(g, "Identity", "dedup", {"wf"}, {"wf_copy"});
      fc_weight = "wf_copy";
    }
    auto* c1 = add_node(g, "Conv", "conv1", {"x", "w1", "b1"}, {"c1"});
    set_ints(c1, "kernel_shape", {3, 3});
    set_ints(c1, "pads", {1, 1, 1, 1});
    set_float(add_node(g, "BatchNormalization", "bn1", {"c1", "g1", "be1", "m1", "v1"}, {"n1"}),
              "epsilon", kEps);
    add_node(g, "Relu", "relu1", {"n1"}, {"r1"});
    auto* c2 = add_node(g, "Conv", "conv2", {"r1", "w2"}, {"c2"});
    set_ints(c2, "kernel_shape", {3, 3});
    set_ints(c2, "pads", {1, 1, 1, 1});
    set_ints(c2, "strides", {2, 2});
    set_float(add_node(g, "BatchNormalization", "bn2", {"c2", "g2", "be2", "m2", "v2"}, {"n2"}),
              "epsilon", kEps);
    add_node(g, "Relu", "relu2", {"n2"}, {"r2"});
    add_node(g, "GlobalAveragePool", "pool", {"r2"}, {"p"});
    add_node(g, "Flatten", "flatten", {"p"}, {"f"});
    const std::string gemm_out = o.tail_op.empty() ? "y" : "z";
    set_int(add_node(g, "Gemm", "fc", {"f", fc_weight, "bf"}, {gemm_out}), "transB", 1);
    if (!o.tail_op.empty())
      add_node(g, o.tail_op, "odd_node", {"z"}, {"y"})->set_domain(o.tail_domain);
    value_info(g.add_output(), "y", {1, 3});
    return m;
  }
  OnnxModel model(const GraphOptions& o = GraphOptions()) const {
    std::string bytes;
    EXPECT_TRUE(proto(o).SerializeToString(&bytes));
    return parse_onnx_model(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), ".",
                            "small graph");
  }
};

// Seeded uint8 images [n, 2, 6, 6] with labels in 0..2.
Dataset small_images(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  Dataset d;
  d.images = torch::randint(0, 256, {n, 2, 6, 6}, torch::kUInt8);
  d.labels = torch::randint(0, 3, {n}, torch::kInt64);
  d.classes = 3;
  d.name = "small";
  return d;
}

Preprocess small_preprocess() {
  Preprocess pp;
  pp.mean = {0.5, 0.4};
  pp.std = {0.25, 0.3};
  return pp;
}

std::vector<float> floats(const std::vector<uint8_t>& bytes) {
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

void expect_close(const std::vector<uint8_t>& bytes, const torch::Tensor& expected, double tol,
                  const std::string& what) {
  const std::vector<float> got = floats(bytes);
  ASSERT_EQ(static_cast<int64_t>(got.size()), expected.numel()) << what;
  const torch::Tensor e = expected.to(torch::kFloat32).contiguous();
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], e.data_ptr<float>()[i],
                tol * std::max(1.0f, std::fabs(e.data_ptr<float>()[i])))
        << what << "[" << i << "]";
  }
}

TEST(OnnxEval, SmallGraphGivesTheLogitsTorchComputes) {
  const SmallNet net(11);
  torch::manual_seed(12);
  const torch::Tensor x =
      torch::randn({7, 2, 6, 6});  // batch 7 through a graph exported with batch 1
  const torch::Tensor expected = net.forward(x);
  for (bool identity : {false, true}) {
    const torch::Tensor got = onnx_logits(net.model(with_identity(identity)), x, "small graph");
    ASSERT_EQ(got.sizes(), expected.sizes()) << "identity " << identity;
    EXPECT_LT((got - expected).abs().max().item<double>(), 1e-4) << "identity " << identity;
  }
  // The logits are not trivially equal: other weights give others.
  EXPECT_GT(
      (onnx_logits(SmallNet(13).model(), x, "other graph") - expected).abs().max().item<double>(),
      1e-2);
}

TEST(OnnxEval, EvaluateCountsTopOneAndTopThreeAsTorchDoes) {
  const SmallNet net(21);
  const Dataset data = small_images(37, 22);
  const Preprocess pp = small_preprocess();
  HitCounter expected;
  torch::NoGradGuard no_grad;
  expected.add(net.forward(preprocess_batch(data.images, pp, /*augment=*/false)), data.labels);
  const EvalResult want = expected.result();
  const EvalResult got = evaluate_onnx(net.model(), data, pp, "small graph", /*batch_size=*/10);
  EXPECT_EQ(got.n, 37);
  EXPECT_DOUBLE_EQ(got.top1, want.top1);
  EXPECT_DOUBLE_EQ(got.top3, want.top3);  // 3 classes: every label is in the top 3
  EXPECT_DOUBLE_EQ(got.top3, 100.0);
  EXPECT_GT(got.top1, 0.0);
}

TEST(OnnxEval, ReestimationWritesTheStatisticsTorchComputesLayerByLayer) {
  const SmallNet net(31);
  const Dataset images = small_images(24, 32);
  const Preprocess pp = small_preprocess();
  const OnnxModel model = net.model();
  const OnnxReestimation r =
      reestimate_onnx_batchnorm(model, images, pp, "small graph", /*batch_size=*/8);
  EXPECT_EQ(r.result.layers, 2);
  EXPECT_EQ(r.result.images, 24);
  EXPECT_EQ(r.result.batches, 3);
  ASSERT_EQ(r.stats.size(), 4u);

  // torch: per-batch mean and unbiased variance, averaged; bn2's input comes from the network
  // with bn1's re-estimated statistics.
  torch::NoGradGuard no_grad;
  auto per_channel = [](const torch::Tensor& a) {
    return a.transpose(0, 1).reshape({a.size(1), -1});
  };
  BnStats s{torch::zeros({4}), torch::zeros({4}), torch::zeros({5}), torch::zeros({5})};
  std::vector<torch::Tensor> batches;
  for (int64_t i = 0; i < 24; i += 8)
    batches.push_back(preprocess_batch(images.images.narrow(0, i, 8), pp, false));
  for (const auto& x : batches) {
    s.mean1 += per_channel(net.bn1_input(x)).mean(1) / 3.0;
    s.var1 += per_channel(net.bn1_input(x)).var(1, /*unbiased=*/true) / 3.0;
  }
  for (const auto& x : batches) {
    s.mean2 += per_channel(net.bn2_input(x, s.mean1, s.var1)).mean(1) / 3.0;
    s.var2 += per_channel(net.bn2_input(x, s.mean1, s.var1)).var(1, /*unbiased=*/true) / 3.0;
  }
  expect_close(r.stats.at("m1"), s.mean1, 1e-4, "m1");
  expect_close(r.stats.at("v1"), s.var1, 1e-4, "v1");
  expect_close(r.stats.at("m2"), s.mean2, 1e-4, "m2");
  expect_close(r.stats.at("v2"), s.var2, 1e-4, "v2");
  // The stored statistics were different: the test sees the new ones.
  EXPECT_GT((s.mean1 - net.m1).abs().max().item<double>(), 0.05);

  // The network with them gives torch's logits with them.
  OnnxRuntime runtime(model.runtime_bytes(r.stats), "re-estimated");
  const torch::Tensor x = batches[0].contiguous();
  const FloatBlob out = runtime.forward(x.data_ptr<float>(), x.sizes().vec()).front();
  const torch::Tensor want = net.forward(x, &s);
  ASSERT_EQ(static_cast<int64_t>(out.values.size()), want.numel());
  for (size_t i = 0; i < out.values.size(); ++i)
    EXPECT_NEAR(out.values[i], want.view({-1})[i].item<float>(), 1e-4);
  // The model itself is unchanged.
  EXPECT_EQ(floats(model.find("m1")->bytes), floats(net.model().find("m1")->bytes));
}

TEST(OnnxEval, PruningZeroesTheSmallestWeightsOverEveryConvAndGemm) {
  const SmallNet net(41);
  const OnnxModel model = net.model();
  const OnnxReplacements pruned = prune_onnx_smallest(model, 0.4);
  ASSERT_EQ(pruned.size(), 3u);  // w1, w2, wf: no biases, no BatchNorm
  const int64_t total = net.w1.numel() + net.w2.numel() + net.wf.numel();
  int64_t zeros = 0;
  float largest_gone = 0.0f, smallest_kept = 1e30f;
  for (const std::string name : {"w1", "w2", "wf"}) {
    const std::vector<float> before = floats(model.find(name)->bytes);
    const std::vector<float> after = floats(pruned.at(name));
    ASSERT_EQ(before.size(), after.size()) << name;
    for (size_t i = 0; i < before.size(); ++i) {
      if (after[i] == 0.0f) {
        ++zeros;
        largest_gone = std::max(largest_gone, std::fabs(before[i]));
      } else {
        EXPECT_EQ(after[i], before[i]) << name << "[" << i << "]";
        smallest_kept = std::min(smallest_kept, std::fabs(before[i]));
      }
    }
  }
  EXPECT_EQ(zeros, std::llround(0.4 * double(total)));
  EXPECT_LE(largest_gone, smallest_kept);
  EXPECT_THROW(prune_onnx_smallest(model, 1.5), UsageError);
  EXPECT_TRUE(prune_onnx_smallest(model, 0.0).size() == 3u);
}

TEST(OnnxEval, GraphsOpenCvCannotImportAreRefusedNamingTheNode) {
  const SmallNet net(51);
  // Hardmax is an ONNX op (the checker takes it) that OpenCV 4.6 lacks; the other is made up.
  for (const auto& [op, domain] : std::vector<std::pair<std::string, std::string>>{
           {"Hardmax", ""}, {"Frobnicate", "com.example"}}) {
    const OnnxModel model = net.model(with_tail(op, domain));
    try {
      onnx_logits(model, torch::zeros({1, 2, 6, 6}), "small graph");
      ADD_FAILURE() << op << ": OpenCV imported it";
    } catch (const FormatError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("small graph"), std::string::npos) << msg;
      EXPECT_NE(msg.find("node 'odd_node'"), std::string::npos) << msg;
      EXPECT_NE(msg.find("op " + op), std::string::npos) << msg;
    }
  }
  // Not ONNX at all.
  EXPECT_THROW(OnnxRuntime("\xff\xff not a model", "garbage"), FormatError);
}

TEST(OnnxEval, BrokenReplacementsAndShapesAreRefused) {
  const SmallNet net(61);
  const OnnxModel model = net.model();
  EXPECT_THROW(model.runtime_bytes({{"w1", std::vector<uint8_t>(3)}}), Error);  // wrong size
  EXPECT_THROW(model.runtime_bytes({{"nothere", std::vector<uint8_t>(4)}}), Error);
  // Images that the preprocessing pads to 8x8 do not fit the graph's [1, 2, 6, 6] input.
  Preprocess pp = small_preprocess();
  pp.pad_to = 8;
  try {
    check_onnx_runnable(model, small_images(4, 62), pp, "small graph");
    ADD_FAILURE() << "8x8 input accepted";
  } catch (const UsageError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("[1, 2, 6, 6]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[?, 2, 8, 8]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--pad"), std::string::npos) << msg;
  }
  EXPECT_NO_THROW(
      check_onnx_runnable(model, small_images(4, 62), small_preprocess(), "small graph"));
  // A batch of the wrong channel count fails in OpenCV with a corelocker error naming the shape.
  try {
    onnx_logits(model, torch::zeros({2, 3, 6, 6}), "small graph");
    ADD_FAILURE() << "3 channels accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 3, 6, 6]"), std::string::npos) << e.what();
  }
}

// `n` random 1x28x28 images with random labels of 10 classes, drawn with `seed`.
Dataset random_images(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  Dataset d;
  d.images = torch::randint(0, 256, {n, 1, 28, 28}, torch::kUInt8);
  d.labels = torch::randint(0, 10, {n}, torch::kInt64);
  d.name = "random";
  d.classes = 10;
  return d;
}

TEST(OnnxEval, EffectiveAccuracyOfALockedExportLeavesTheModelAsItWas) {
  CORELOCKER_ONNX_FIXTURES(fx);
  OnnxModel model = load_onnx_model(fx + "/resnet_bn.onnx");
  LockOptions o;
  o.criterion = Criterion::kBn;
  o.scope = default_scope(o.criterion);
  o.ratio = 0.3;
  lock_onnx_model(model, o);
  const Digest locked = onnx_fingerprint(model);
  const Dataset test = random_images(60, 71);
  const Dataset unlabelled = subset(test, 32, /*seed=*/1);
  Preprocess pp;
  pp.mean = {0.286};
  pp.std = {0.353};
  EffectiveOptions eo;
  eo.reestimate_batch = 16;
  const EffectiveEval e =
      evaluate_onnx_effective(model, test, unlabelled, pp, "locked fixture", eo);
  EXPECT_EQ(e.plain.n, 60);
  ASSERT_TRUE(e.reestimated.has_value()) << e.reestimate_note;
  EXPECT_EQ(e.reestimate_images, 32);
  ASSERT_EQ(e.pruned.size(), 2u);
  double best = e.plain.top1;
  for (const auto& p : e.pruned) best = std::max(best, p.eval.top1);
  best = std::max(best, e.reestimated->top1);
  EXPECT_DOUBLE_EQ(e.top1_effective, best);
  EXPECT_EQ(onnx_fingerprint(model), locked);
  // The fixture's six BatchNormalization nodes, each fed by a Conv.
  const auto bns = model.batchnorms();
  ASSERT_EQ(bns.size(), 6u);
  for (const auto& b : bns) EXPECT_FALSE(b.producer.empty()) << b.node;
  // Without images the re-estimation is left out, with the reason.
  const EffectiveEval none =
      evaluate_onnx_effective(model, test, Dataset{}, pp, "locked fixture", eo);
  EXPECT_FALSE(none.reestimated.has_value());
  EXPECT_NE(none.reestimate_note.find("no unlabelled images"), std::string::npos);
}

// The searches over the ratio on an ONNX graph: each probe locks the initializers in memory as a
// lock at that ratio would, evaluates through OpenCV and puts the values back.
TEST(OnnxCurve, ALockedEvaluationIsTheLockedFilesAndLeavesTheModelAsItWas) {
  CORELOCKER_ONNX_FIXTURES(fx);
  OnnxModel model = load_onnx_model(fx + "/resnet_bn.onnx");
  const Digest original = onnx_fingerprint(model);
  const Dataset test = random_images(80, 72);
  const Dataset unlabelled = subset(test, 32, /*seed=*/2);
  ModelMeta meta;
  meta.preprocess.mean = {0.286};
  meta.preprocess.std = {0.353};
  const auto curve = onnx_curve_model(model, meta, "fixture");
  LockOptions o;  // l1, layer scope
  const Ranking ranking = curve->rank(o);
  EXPECT_GT(ranking.total_units(), 0);
  EffectiveTarget target{&unlabelled, {}};
  target.options.reestimate_batch = 16;
  for (const double ratio : {0.0, 0.1, 0.4}) {
    const LockedEval e = curve->evaluate_locked(ranking, ratio, test, 32, &target, nullptr);
    EXPECT_EQ(onnx_fingerprint(model), original) << ratio;
    // The same numbers as the file a lock at this ratio writes.
    OnnxModel locked = load_onnx_model(fx + "/resnet_bn.onnx");
    o.ratio = ratio;
    const LockOutcome lo = lock_onnx_model(locked, o);
    EXPECT_EQ(e.stats.units, lo.stats.units) << ratio;
    EXPECT_EQ(e.stats.values, lo.stats.values) << ratio;
    EXPECT_EQ(e.stats.candidates, lo.stats.candidates) << ratio;
    const EvalResult plain = evaluate_onnx(locked, test, meta.preprocess, "locked copy", 32);
    EXPECT_EQ(e.eval.top1, plain.top1) << ratio;
    EXPECT_EQ(e.eval.top3, plain.top3) << ratio;
    ASSERT_TRUE(e.effective.has_value());
    ASSERT_TRUE(e.effective->reestimated.has_value()) << e.effective->reestimate_note;
  }
  EXPECT_EQ(curve->evaluate(test, 32, nullptr).top1,
            evaluate_onnx(model, test, meta.preprocess, "fixture", 32).top1);
  EXPECT_THROW(curve->evaluate_locked(ranking, 1.5, test, 32, nullptr, nullptr), UsageError);

  // A search on the curve (the band holds every accuracy: found at its first probe) ends with
  // the model as it started.
  const Calibration c = calibrate(*curve, ranking, test, Band{0.0, 100.0}, CalibrationOptions{});
  EXPECT_TRUE(c.found()) << c.explanation;
  EXPECT_EQ(onnx_fingerprint(model), original);

  // Locked and written at a ratio: the key first, then an ONNX file that is the lock's.
  testing::TempDir dir;
  KeyCommit keys(KeyCredentials{});
  const LockReport r =
      curve->lock_and_write(ranking, 0.1, dir.file("l.onnx"), dir.file("k.clk"), keys);
  EXPECT_EQ(r.keys.size(), 1u);
  EXPECT_TRUE(curve->meta().lock.has_value());
  OnnxModel written = load_onnx_model(dir.file("l.onnx"));
  EXPECT_EQ(onnx_fingerprint(written), r.locked_fingerprint);
  unlock_onnx_model(written, {read_key_file(dir.file("k.clk"))});
  EXPECT_EQ(onnx_fingerprint(written), original);
  // A locked model is no start for a curve, and an ONNX model is written as ONNX.
  EXPECT_THROW(curve->evaluate_locked(ranking, 0.1, test, 32, nullptr, nullptr), UsageError);
  EXPECT_THROW(onnx_curve_model(load_onnx_model(fx + "/resnet_bn.onnx"), meta, "fixture")
                   ->lock_and_write(ranking, 0.1, dir.file("l.ckpt"), dir.file("k2.clk"), keys),
               UsageError);
  EXPECT_FALSE(file_exists(dir.file("k2.clk")));

  // Tiers by band asked of the format without the evaluation that calibrates them (a library
  // caller): a usage error before anything is read or written.
  FormatRegistry formats;
  register_onnx_format(formats);
  LockRequest request;
  request.in = fx + "/resnet_bn.onnx";
  request.out = dir.file("t.onnx");
  request.key_out = dir.file("t.clk");
  request.tier_bands = true;
  KeyCommit tier_keys(KeyCredentials{});
  EXPECT_THROW(formats.of(request.in).lock(request, tier_keys), UsageError);
  EXPECT_FALSE(file_exists(dir.file("t.onnx")));
}

}  // namespace
}  // namespace corelocker::onnx_eval_test
