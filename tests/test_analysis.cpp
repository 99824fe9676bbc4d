// The disparity analysis (paper section 4): operator norms, the chain (fcn) and linear-map
// readings of a layer, and that violations of Theorem 2 are found when they happen.
#include <gtest/gtest.h>

#include <cmath>

#include "analysis/disparity.h"
#include "locking/lock.h"
#include "test_support.h"
#include "util/error.h"

namespace corelocker::analysis_test {
namespace {

using testing::clone;
using testing::fmnist_test;
using testing::fresh_tiny;

LoadedModel fresh_fcn(int64_t depth, int64_t width, bool norm, uint64_t seed) {
  torch::manual_seed(seed);
  ModelMeta meta = new_model_meta("fcn", "fashion-mnist");
  meta.options = {{"depth", depth}, {"width", width}, {"norm", norm ? 1 : 0}};
  LoadedModel m = create_model(meta);
  torch::NoGradGuard no_grad;
  for (auto& t : named_tensors(*m.net)) {
    // Non-trivial BatchNorm state, so that folding it into the weights is really exercised.
    if (t.name.rfind("bn", 0) != 0) continue;
    if (t.name.find("running_var") != std::string::npos)
      t.tensor.uniform_(0.5, 2.0);
    else if (t.name.find("running_mean") != std::string::npos || !t.is_buffer)
      t.tensor.uniform_(-1.0, 1.0);
  }
  return m;
}

LoadedModel locked_copy(LoadedModel& m, Criterion c, double ratio) {
  LoadedModel l = clone(m);
  LockOptions o;
  o.criterion = c;
  o.scope = default_scope(c);
  o.ratio = ratio;
  lock_model(l, o);
  return l;
}

torch::Tensor tensor_of(LoadedModel& m, const std::string& name) {
  for (auto& t : named_tensors(*m.net))
    if (t.name == name) return t.tensor;
  throw Error("no tensor " + name);
}

// ---------------------------------------------------------------- operator norms
TEST(OperatorNorm, PowerIterationMatchesTheLargestSingularValue) {
  torch::manual_seed(3);
  for (auto shape : {std::vector<int64_t>{7, 7}, {5, 12}, {30, 4}}) {
    torch::Tensor a = torch::randn(shape, torch::kFloat64);
    const double exact = torch::linalg_svdvals(a).max().item<double>();
    EXPECT_NEAR(spectral_norm(a, 500, 1), exact, 1e-6 * exact);
  }
  EXPECT_EQ(spectral_norm(torch::zeros({4, 3}), 50, 0), 0.0);
  EXPECT_THROW(spectral_norm(torch::zeros({2, 2, 2}), 50, 0), Error);
}

// The norm of a convolution is that of the linear map it applies to a whole input, here built
// column by column from basis images; reshaping the kernel into a matrix gives another number.
TEST(OperatorNorm, ConvolutionNormIsTheNormOfTheMapOnTheInput) {
  torch::manual_seed(4);
  struct Case {
    int64_t in_c, out_c, k, stride, pad, groups, h, w;
  };
  for (Case c :
       {Case{2, 3, 3, 1, 1, 1, 5, 5}, Case{2, 4, 3, 2, 1, 1, 6, 5}, Case{4, 4, 3, 1, 0, 2, 5, 6}}) {
    torch::Tensor k = torch::randn({c.out_c, c.in_c / c.groups, c.k, c.k}, torch::kFloat64);
    ConvGeometry g;
    g.stride = {c.stride, c.stride};
    g.padding = {c.pad, c.pad};
    g.groups = c.groups;
    g.input = {c.in_c, c.h, c.w};
    const int64_t n = c.in_c * c.h * c.w;
    torch::Tensor basis = torch::eye(n, torch::kFloat64).reshape({n, c.in_c, c.h, c.w});
    torch::Tensor cols = torch::conv2d(basis, k, {}, g.stride, g.padding, g.dilation, g.groups);
    torch::Tensor matrix = cols.reshape({n, -1}).t();
    const double exact = torch::linalg_svdvals(matrix).max().item<double>();
    EXPECT_NEAR(conv_operator_norm(k, g, 2000, 2), exact, 1e-5 * exact)
        << c.in_c << "->" << c.out_c << " stride " << c.stride;
  }
}

// ---------------------------------------------------------------- chain mode (fcn)
TEST(Disparity, FcnChainWithAndWithoutBatchNorm) {
  Dataset data = fmnist_test(64);
  for (bool norm : {false, true}) {
    LoadedModel original = fresh_fcn(3, 24, norm, 5);
    LoadedModel locked = locked_copy(original, Criterion::kL1, 0.1);
    DisparityOptions o;
    o.samples = 40;
    o.batch_size = 16;  // several batches
    const DisparityReport r = analyze_disparity(original, locked, data, o);
    EXPECT_EQ(r.mode, DisparityMode::kChain);
    EXPECT_EQ(r.samples, 40);
    EXPECT_LE(r.input_norm, 1.0 + 1e-6);  // scaled in float32
    ASSERT_EQ(r.layers.size(), 4u);       // fc1..fc3 and out
    EXPECT_EQ(r.layers.front().name, "fc1");
    EXPECT_EQ(r.layers.back().name, "out");
    // The first and last layers are not extracted: nothing changes at layer 1, and the last
    // layer, fed different inputs through unchanged weights, moves exactly by G.
    EXPECT_EQ(r.layers[0].changed, 0);
    EXPECT_EQ(r.layers[0].g, 0.0);
    EXPECT_EQ(r.layers[0].observed, 0.0);
    EXPECT_EQ(r.layers[3].changed, 0);
    EXPECT_NEAR(r.layers[3].observed, r.layers[3].g, 1e-9 * (1 + r.layers[3].g));
    for (const auto& d : r.layers) {
      EXPECT_EQ(d.samples, 40);
      // Triangle inequality plus 1-Lipschitz ReLU: can never fail.
      EXPECT_EQ(d.step_violations, 0) << d.name;
      if (d.m >= 2 && d.m <= 3) {
        EXPECT_GT(d.changed, 0) << d.name;
        EXPECT_GT(d.delta_norm, 0.0) << d.name;
        EXPECT_GT(d.observed, 0.0) << d.name;
      }
      EXPECT_GT(d.weight_norm, 0.0);
    }
    EXPECT_TRUE(r.variance.applicable);
    EXPECT_GT(r.variance.measured_original, 0.0);
    EXPECT_GT(r.variance.bound_original, 0.0);
  }
}

TEST(Disparity, IdenticalModelsHaveNoDisparity) {
  Dataset data = fmnist_test(20);
  LoadedModel original = fresh_fcn(2, 16, false, 1);
  LoadedModel same = clone(original);
  const DisparityReport r = analyze_disparity(original, same, data, DisparityOptions{});
  for (const auto& d : r.layers) {
    EXPECT_EQ(d.changed, 0);
    EXPECT_EQ(d.delta_norm, 0.0);
    EXPECT_EQ(d.g, 0.0);
    EXPECT_EQ(d.observed, 0.0);
    EXPECT_EQ(d.thm2_violations, 0);
  }
  EXPECT_DOUBLE_EQ(r.variance.measured_original, r.variance.measured_locked);
}

// Theorem 2 assumes the extracted weights push every output the same way. Scale layer 1 up by 2
// and layer 2 down by 2: ReLU is positively homogeneous, so layer 2's output is the original's
// (|y - y*| = 0) while G, the rescaled layer fed the original input, is not zero. Every input
// with G > 0 must be reported as a violation.
TEST(Disparity, ReportsEveryTheorem2Violation) {
  Dataset data = fmnist_test(30);
  LoadedModel original = fresh_fcn(2, 16, false, 2);
  LoadedModel changed = clone(original);
  {
    torch::NoGradGuard no_grad;
    tensor_of(changed, "fc1.weight").mul_(2.0);
    tensor_of(changed, "fc1.bias").mul_(2.0);
    tensor_of(changed, "fc2.weight").mul_(0.5);
  }
  DisparityOptions o;
  o.samples = 30;
  const DisparityReport r = analyze_disparity(original, changed, data, o);
  ASSERT_EQ(r.layers.size(), 3u);
  const LayerDisparity& l2 = r.layers[1];
  EXPECT_LT(l2.observed, 1e-4 * l2.g);
  EXPECT_GT(l2.g, 0.0);
  EXPECT_EQ(l2.thm2_violations, 30);
  EXPECT_LT(l2.thm2_worst, -0.99);
  EXPECT_EQ(l2.step_violations, 0);
  EXPECT_EQ(r.layers[0].thm2_violations, 0);  // layer 1 doubled: |y - y*| = G here
}

// ---------------------------------------------------------------- linear-map mode
TEST(Disparity, LinearMapCapturesEveryLayerAndTheLastMatchesTheOutputs) {
  Dataset data = fmnist_test(50);
  LoadedModel original = fresh_tiny(6);
  LoadedModel locked = locked_copy(original, Criterion::kL1, 0.2);
  DisparityOptions o;
  o.samples = 50;
  o.batch_size = 20;
  const DisparityReport r = analyze_disparity(original, locked, data, o);
  EXPECT_EQ(r.mode, DisparityMode::kLinearMap);
  EXPECT_FALSE(r.variance.applicable);
  EXPECT_TRUE(r.skipped.empty());
  size_t maps = 0;
  for (const auto& l : original.net->structure())
    maps += l.kind == LayerKind::kConv2d || l.kind == LayerKind::kLinear;
  ASSERT_EQ(r.layers.size(), maps);
  for (size_t i = 0; i < r.layers.size(); ++i) {
    EXPECT_EQ(r.layers[i].m, int(i) + 1);
    EXPECT_EQ(r.layers[i].step_violations, 0) << r.layers[i].name;
  }
  EXPECT_EQ(r.layers.front().observed, 0.0);  // same input, unchanged first layer
  // The last layer's output is the network's: its norms must be the logits' own.
  torch::NoGradGuard no_grad;
  original.net->eval();
  locked.net->eval();
  torch::Tensor x = preprocess_batch(data.images, original.meta.preprocess, false);
  x = x / x.flatten(1).norm(2, 1).clamp_min(1.0).reshape({-1, 1, 1, 1});
  const torch::Tensor zs = original.net->forward(x).to(torch::kFloat64);
  const torch::Tensor zl = locked.net->forward(x).to(torch::kFloat64);
  const double out_norm = zs.norm(2, 1).mean().item<double>();
  const double observed = (zl - zs).norm(2, 1).mean().item<double>();
  EXPECT_NEAR(r.layers.back().out_norm, out_norm, 1e-4 * out_norm);
  EXPECT_NEAR(r.layers.back().observed, observed, 1e-4 * observed + 1e-7);
  EXPECT_GT(observed, 0.0);
}

// An LSTM applies its hidden-to-hidden matrix once per time step: each use sees another input,
// so a per-layer reading does not apply and the layer is listed as skipped. (LibTorch projects
// the whole input sequence with the input-to-hidden matrix in one call: that one is measured.)
TEST(Disparity, RecurrentWeightsAreSkippedWithTheReason) {
  Dataset data = fmnist_test(8);
  torch::manual_seed(3);
  LoadedModel original = create_model(new_model_meta("cnnlstm", "fashion-mnist"));
  LoadedModel locked = locked_copy(original, Criterion::kL1, 0.1);
  DisparityOptions o;
  o.samples = 8;
  const DisparityReport r = analyze_disparity(original, locked, data, o);
  ASSERT_EQ(r.skipped.size(), 1u);
  EXPECT_EQ(r.skipped[0].rfind("lstm.hh: used ", 0), 0u) << r.skipped[0];
  EXPECT_NE(r.skipped[0].find("times in one forward pass"), std::string::npos) << r.skipped[0];
  ASSERT_EQ(r.layers.size(), 4u);  // conv1, conv2, lstm.ih, fc
  EXPECT_EQ(r.layers[2].name, "lstm.ih");
  EXPECT_EQ(r.layers.back().name, "fc");
}

TEST(Disparity, RefusesModelsThatDoNotMatchAndEmptyInput) {
  Dataset data = fmnist_test(10);
  LoadedModel tiny = fresh_tiny(1);
  LoadedModel fcn = fresh_fcn(2, 8, false, 1);
  EXPECT_THROW(analyze_disparity(tiny, fcn, data, DisparityOptions{}), UsageError);
  LoadedModel wider = fresh_tiny(1, 16);
  EXPECT_THROW(analyze_disparity(tiny, wider, data, DisparityOptions{}), UsageError);
  DisparityOptions none;
  none.samples = 0;
  EXPECT_THROW(analyze_disparity(tiny, tiny, data, none), UsageError);
}

}  // namespace
}  // namespace corelocker::analysis_test
