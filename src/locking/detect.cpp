#include "locking/detect.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>

#include "locking/decoys.h"
#include "locking/lock.h"
#include "locking/selection.h"
#include "util/error.h"
#include "util/stats.h"

namespace corelocker {
namespace {

constexpr auto kDouble = torch::kFloat64;
constexpr double kZeroFirst = 1e12;         // added to the score of exactly-zero units
constexpr int64_t kTwinCandidates = 16384;  // kernels a twin search compares against, at most
constexpr int64_t kTwinChunk = 1024;

enum Detector {
  kFar,
  kSmall,
  kNormTwin,
  kRoughness,
  kCorrFilter,
  kCorrChannel,
  kTwin,
  kPosition,
  kLearned,
  kDetectors
};
constexpr std::array<const char*, kDetectors> kNames = {
    "far_from_median", "smallest", "norm_twin", "roughness", "corr_filter",
    "corr_channel",    "twin",     "position",  "learned"};
const std::vector<std::string> kFeatureNames = {
    "log_l1",   "roughness",  "centre_share", "corr_filter", "corr_channel", "sign_balance",
    "sparsity", "peak_share", "twin",         "mahalanobis", "log_norm_gap"};

const torch::Tensor& find_tensor(const std::vector<NamedTensor>& tensors, const std::string& name) {
  for (const auto& nt : tensors) {
    if (nt.name == name) return nt.tensor;
  }
  throw MismatchError("key entry '" + name + "': model has no such tensor");
}

// Conv tensors whose units are single kernels of 2+ elements: the content detectors' domain.
bool kernel_units(const torch::Tensor& t, int64_t unit_size) {
  return t.dim() == 4 && t.size(2) * t.size(3) >= 2 && unit_size == t.size(2) * t.size(3);
}

// Each unit's l1 norm's distance to the nearest other unit's, relative to its own.
torch::Tensor norm_gap(const torch::Tensor& l1) {
  const int64_t n = l1.numel();
  auto out = torch::full({n}, INFINITY, kDouble);
  if (n < 2) return out;
  auto [sorted, order] = l1.sort();
  auto d = sorted.narrow(0, 1, n - 1) - sorted.narrow(0, 0, n - 1);
  auto inf = torch::full({1}, INFINITY, kDouble);
  auto gap = torch::minimum(torch::cat({inf, d}), torch::cat({d, inf})) / sorted.clamp_min(1e-300);
  out.index_put_({order}, gap);
  return out;
}

// Highest |cosine| of each kernel [n, kh, kw] (unit l2 norm) with another kernel of the set under
// the flips and turns that keep its shape (8 for square kernels, 4 otherwise).
torch::Tensor twin_score(const torch::Tensor& u) {
  const int64_t n = u.size(0), s = u.size(1) * u.size(2);
  std::vector<torch::Tensor> forms = {u, u.flip({2}), u.flip({1}), u.flip({1, 2})};
  if (u.size(1) == u.size(2)) {
    auto tr = u.transpose(1, 2);
    for (auto f : {tr, tr.flip({2}), tr.flip({1}), tr.flip({1, 2})}) forms.push_back(f);
  }
  auto cand = torch::arange(n, torch::kInt64);
  if (n > kTwinCandidates) {
    auto gen = at::detail::createCPUGenerator(0x7a1);
    cand = std::get<0>(torch::randperm(n, gen, torch::kInt64).narrow(0, 0, kTwinCandidates).sort());
  }
  std::vector<torch::Tensor> cand_forms;
  for (auto& f : forms)
    cand_forms.push_back(f.reshape({n, s}).index_select(0, cand).t().contiguous());
  auto flat = u.reshape({n, s});
  auto best = torch::full({n}, -1.0, kDouble);
  for (int64_t r0 = 0; r0 < n; r0 += kTwinChunk) {
    const int64_t rows = std::min(kTwinChunk, n - r0);
    auto block = flat.narrow(0, r0, rows);
    auto self = torch::arange(r0, r0 + rows, torch::kInt64).unsqueeze(1).eq(cand.unsqueeze(0));
    auto top = torch::full({rows}, -1.0, kDouble);
    for (auto& cf : cand_forms) {
      auto sims = block.mm(cf).abs().masked_fill(self, -1.0);
      top = torch::maximum(top, std::get<0>(sims.max(1)));
    }
    best.narrow(0, r0, rows).copy_(top);
  }
  return best;
}

// Per-kernel features of a conv weight [rows, cols, kh, kw], each [rows * cols].
struct KernelFeatures {
  torch::Tensor l1, nonzero;
  std::vector<torch::Tensor> features;  // in kFeatureNames order
  torch::Tensor roughness, corr_filter, corr_channel, twin, position, norm_gap;
  bool has_filter = false, has_channel = false;
};

KernelFeatures kernel_features(const torch::Tensor& weight) {
  const int64_t rows = weight.size(0), cols = weight.size(1), kh = weight.size(2),
                kw = weight.size(3);
  const int64_t s = kh * kw, n = rows * cols;
  auto k = weight.detach().to(kDouble).reshape({n, kh, kw});
  KernelFeatures f;
  f.l1 = k.abs().sum({1, 2});
  f.nonzero = f.l1.gt(0);
  auto l2 = k.pow(2).sum({1, 2}).sqrt();
  auto u = k / l2.clamp_min(1e-300).view({n, 1, 1});
  const KernelShapeStats shape = kernel_shape_stats(k.reshape({n, s}), kh, kw);
  f.roughness = shape.roughness;
  auto centre = (kh % 2 == 1 && kw % 2 == 1)
                    ? k.select(1, kh / 2).select(1, kw / 2).abs() / f.l1.clamp_min(1e-300)
                    : torch::zeros({n}, kDouble);
  auto uk = u.reshape({rows, cols, s});
  auto self = uk.pow(2).sum(2);  // 1, or 0 for a zero kernel
  f.has_filter = cols >= 2;
  f.has_channel = rows >= 2;
  f.corr_filter = f.has_filter
                      ? (((uk * uk.sum(1, true)).sum(2) - self) / double(cols - 1)).reshape({n})
                      : torch::zeros({n}, kDouble);
  f.corr_channel = f.has_channel
                       ? (((uk * uk.sum(0, true)).sum(2) - self) / double(rows - 1)).reshape({n})
                       : torch::zeros({n}, kDouble);
  auto sign_balance = k.sum({1, 2}).abs() / f.l1.clamp_min(1e-300);
  f.twin = twin_score(u);
  auto x = u.reshape({n, s});
  auto mu = x.mean(0);
  auto cov = (x - mu).t().mm(x - mu) / double(std::max<int64_t>(n, 1));
  auto maha = ((x - mu).mm(torch::linalg_pinv(cov)) * (x - mu)).sum(1);
  f.norm_gap = norm_gap(f.l1);
  auto log_gap = f.norm_gap.clamp(1e-300, 1e300).log();
  // position: the mean log norm of the other non-zero kernels of the filter and of the channel.
  auto valid = f.nonzero.to(kDouble).reshape({rows, cols});
  auto ln = f.l1.clamp_min(1e-300).log().reshape({rows, cols}) * valid;
  auto row_mean = (ln.sum(1, true) - ln) / (valid.sum(1, true) - valid).clamp_min(1);
  auto col_mean = (ln.sum(0, true) - ln) / (valid.sum(0, true) - valid).clamp_min(1);
  f.position = (row_mean + col_mean).reshape({n});
  f.features = {f.l1.clamp_min(1e-300).log(),
                f.roughness,
                centre,
                f.corr_filter,
                f.corr_channel,
                sign_balance,
                shape.sparsity,
                shape.peak_share,
                f.twin,
                maha,
                log_gap};
  return f;
}

// The learned detector's design matrix for one tensor: features standardised over the tensor's
// non-zero kernels (zero kernels get 0), then their absolute values.
torch::Tensor design_matrix(const KernelFeatures& f) {
  auto valid = f.nonzero;
  std::vector<torch::Tensor> cols;
  for (const auto& x : f.features) {
    auto clean = torch::nan_to_num(x, 0.0, 0.0, 0.0);
    auto kept = clean.masked_select(valid);
    const double mean = kept.numel() > 0 ? kept.mean().item<double>() : 0.0;
    const double sd = kept.numel() > 1 ? kept.std().item<double>() : 0.0;
    auto z = sd > 1e-12 ? (clean - mean) / sd : torch::zeros_like(clean);
    cols.push_back(z.masked_fill(valid.logical_not(), 0.0).clamp(-20, 20));
  }
  const size_t base = cols.size();
  for (size_t i = 0; i < base; ++i) cols.push_back(cols[i].abs());
  return torch::stack(cols, 1);
}

struct LearnedModel {
  torch::Tensor weights;  // [features]
  double bias = 0.0;
  int locks = 0;
  int64_t training_units = 0;
};

// Locks copies of the locked model's tensors again with the key's options and other decoy
// seeds, and fits the logistic regression on their kernels.
LearnedModel train_learned(const std::vector<NamedTensor>& tensors, const Structure& structure,
                           const KeyHeader& h, const DetectOptions& options) {
  LockOptions lo;
  lo.criterion = h.criterion;
  lo.scope = h.scope;
  lo.ratio = h.ratio;
  lo.include_io = h.include_io;
  lo.random_bn_units = h.random_bn_units;
  lo.fill = h.fill;
  std::vector<torch::Tensor> xs, ys;
  for (int i = 0; i < options.learned_locks; ++i) {
    std::vector<NamedTensor> copy;
    for (const auto& t : tensors) copy.push_back({t.name, t.tensor.detach().clone(), t.is_buffer});
    // The random criterion's positions come from the key's seed, which the attacker lacks.
    lo.seed = options.learned_seed + 1000 + static_cast<uint64_t>(i);
    const Ranking ranking = rank_units(copy, structure, lo);
    const ExtractionPlan plan = plan_at(ranking, copy, structure, lo.ratio);
    const KeyFile key =
        extract_units(copy, plan, lo, nullptr, options.learned_seed + static_cast<uint64_t>(i));
    for (const auto& e : key.entries) {
      const torch::Tensor& t = find_tensor(copy, e.tensor);
      if (!kernel_units(t, static_cast<int64_t>(e.unit_size))) continue;
      KernelFeatures f = kernel_features(t);
      auto y = torch::zeros({f.l1.numel()}, kDouble);
      std::vector<int64_t> idx(e.units.begin(), e.units.end());
      y.index_fill_(0, torch::tensor(idx, torch::kInt64), 1.0);
      // Exactly-zero kernels are flagged first anyway; they would only blur the fit.
      auto keep = f.nonzero.nonzero().squeeze(1);
      xs.push_back(design_matrix(f).index_select(0, keep));
      ys.push_back(y.index_select(0, keep));
    }
  }
  LearnedModel m;
  m.locks = options.learned_locks;
  // No non-zero kernel extracted (zero fill) or nothing else: zero weights, so the detector
  // flags exactly-zero kernels first and the rest in tensor order.
  m.weights = torch::zeros({2 * static_cast<int64_t>(kFeatureNames.size())}, kDouble);
  if (xs.empty()) return m;
  auto x = torch::cat(xs), y = torch::cat(ys);
  m.training_units = x.size(0);
  const double pos = y.sum().item<double>();
  if (pos < 1.0 || pos >= double(x.size(0))) return m;
  torch::AutoGradMode grad(true);
  auto w = torch::zeros({x.size(1)}, torch::TensorOptions(kDouble).requires_grad(true));
  auto b = torch::zeros({1}, torch::TensorOptions(kDouble).requires_grad(true));
  auto pos_weight = torch::full({1}, (double(x.size(0)) - pos) / pos, kDouble);
  torch::optim::LBFGS opt(
      {w, b}, torch::optim::LBFGSOptions(1.0).max_iter(200).line_search_fn("strong_wolfe"));
  opt.step([&] {
    opt.zero_grad();
    auto loss = torch::binary_cross_entropy_with_logits(x.mv(w) + b, y, {}, pos_weight) +
                options.learned_l2 * w.pow(2).sum();
    loss.backward();
    return loss;
  });
  m.weights = w.detach().clone();
  m.bias = b.detach().item<double>();
  return m;
}

DetectionReport run_detectors(const std::vector<NamedTensor>& tensors, const KeyFile& truth,
                              int permutations, const LearnedModel* learned) {
  torch::NoGradGuard no_grad;
  if (permutations < 2)
    throw UsageError("detector permutations " + std::to_string(permutations) + ": need at least 2");
  DetectionReport report;
  report.permutations = permutations;
  const bool use_learned = learned != nullptr && learned->weights.defined();
  // flags[detector][entry]: the flagged units (undefined where the detector does not score it).
  std::vector<std::vector<torch::Tensor>> flags(kDetectors);
  report.detectors.resize(kDetectors);
  for (int j = 0; j < kDetectors; ++j) report.detectors[j].name = kNames[j];
  for (const auto& e : truth.entries) {
    const torch::Tensor& t = find_tensor(tensors, e.tensor);
    const int64_t s = static_cast<int64_t>(e.unit_size);
    if (s <= 0 || t.numel() % s != 0) {
      throw MismatchError("key entry '" + e.tensor + "': unit size " + std::to_string(s) +
                          " does not divide " + std::to_string(t.numel()) + " elements");
    }
    auto units = t.detach().to(kDouble).reshape({-1, s});
    const int64_t n = units.size(0);
    const int64_t k = static_cast<int64_t>(e.units.size());
    if (k > n)
      throw MismatchError("key entry '" + e.tensor + "': " + std::to_string(k) +
                          " units, tensor has " + std::to_string(n));
    auto norms = units.abs().sum(1);
    auto zero = units.eq(0).all(1);
    auto zero_bonus = zero.to(kDouble) * kZeroFirst;
    auto flag = [&](const torch::Tensor& score) {
      return std::get<1>(
          (torch::nan_to_num(score, 0.0, 1e300, -1e300).clamp(-1e11, 1e11) + zero_bonus).topk(k));
    };
    const double median = norms.median().item<double>();
    const double mad = std::max((norms - median).abs().median().item<double>(), 1e-12);
    std::vector<torch::Tensor> f(kDetectors);
    f[kFar] = flag((norms - median).abs() / mad);
    f[kSmall] = flag(-norms / mad);
    f[kNormTwin] = flag(-norm_gap(norms).clamp_max(1e300));
    if (t.dim() == 4 && t.size(2) * t.size(3) >= 2 && s % (t.size(2) * t.size(3)) == 0) {
      const int64_t kh = t.size(2), kw = t.size(3);
      // Kernels, or whole filters (the roughness of all their kernels together).
      auto kernels = units.reshape({-1, kh, kw});
      auto energy = kernels.pow(2).sum({1, 2}).reshape({n, -1}).sum(1);
      auto diff = torch::zeros({kernels.size(0)}, kDouble);
      if (kw > 1)
        diff =
            diff + (kernels.narrow(2, 1, kw - 1) - kernels.narrow(2, 0, kw - 1)).pow(2).sum({1, 2});
      if (kh > 1)
        diff =
            diff + (kernels.narrow(1, 1, kh - 1) - kernels.narrow(1, 0, kh - 1)).pow(2).sum({1, 2});
      f[kRoughness] = flag(diff.reshape({n, -1}).sum(1) / energy.clamp_min(1e-300));
    }
    if (kernel_units(t, s)) {
      KernelFeatures kf = kernel_features(t);
      if (kf.has_filter) f[kCorrFilter] = flag(-kf.corr_filter);
      if (kf.has_channel) f[kCorrChannel] = flag(-kf.corr_channel);
      f[kTwin] = flag(kf.twin);
      f[kPosition] = flag(kf.position);
      if (use_learned) f[kLearned] = flag(design_matrix(kf).mv(learned->weights) + learned->bias);
    }
    auto is_extracted = torch::zeros({n}, torch::kBool);
    std::vector<int64_t> idx(e.units.begin(), e.units.end());
    is_extracted.index_fill_(0, torch::tensor(idx, torch::kInt64), true);
    auto hits_of = [&](const torch::Tensor& flagged) {
      return is_extracted.index_select(0, flagged).sum().item<int64_t>();
    };
    DetectionLayer l;
    l.tensor = e.tensor;
    l.units = n;
    l.extracted = k;
    l.flagged = k;
    l.hits_far = hits_of(f[kFar]);
    l.hits_small = hits_of(f[kSmall]);
    l.hits = std::max(l.hits_far, l.hits_small);
    l.exact_zero = zero.sum().item<int64_t>();
    report.flagged += l.flagged;
    report.hits += l.hits;
    report.hits_far += l.hits_far;
    report.hits_small += l.hits_small;
    report.extracted += l.extracted;
    report.units += l.units;
    for (int d = 0; d < kDetectors; ++d) {
      flags[d].push_back(f[d]);
      if (!f[d].defined()) continue;
      auto& r = report.detectors[d];
      const int64_t hits = hits_of(f[d]);
      r.tensors += 1;
      r.units += n;
      r.flagged += k;
      r.hits += hits;
      l.detector_hits.emplace_back(kNames[d], hits);
    }
    report.layers.push_back(l);
  }
  // Baselines: the same flags scored against random truth sets (fixed seed, so the report is
  // reproducible; one draw per tensor and permutation, shared by every detector).
  auto gen = at::detail::createCPUGenerator(0x5eed);
  std::vector<std::vector<double>> totals(kDetectors + 1);
  for (int r = 0; r < permutations; ++r) {
    std::vector<int64_t> total(kDetectors + 1, 0);
    for (size_t i = 0; i < report.layers.size(); ++i) {
      const auto& l = report.layers[i];
      auto random_truth = torch::zeros({l.units}, torch::kBool);
      random_truth.index_fill_(
          0, torch::randperm(l.units, gen, torch::kInt64).narrow(0, 0, l.extracted), true);
      std::vector<int64_t> h(kDetectors, 0);
      for (int d = 0; d < kDetectors; ++d) {
        if (!flags[d][i].defined()) continue;
        h[d] = random_truth.index_select(0, flags[d][i]).sum().item<int64_t>();
        total[d] += h[d];
      }
      total[kDetectors] += std::max(h[kFar], h[kSmall]);
    }
    for (int d = 0; d <= kDetectors; ++d) totals[d].push_back(double(total[d]));
  }
  for (int d = 0; d < kDetectors; ++d) {
    std::tie(report.detectors[d].chance_hits, report.detectors[d].chance_sd) = mean_sd(totals[d]);
  }
  std::tie(report.oracle_chance_hits, report.oracle_chance_sd) = mean_sd(totals[kDetectors]);
  // Keep only the detectors that scored something, then the oracle.
  std::vector<DetectorResult> kept;
  for (auto& d : report.detectors) {
    if (d.tensors > 0) kept.push_back(d);
  }
  DetectorResult oracle;
  oracle.name = "oracle";
  oracle.tensors = static_cast<int64_t>(report.layers.size());
  oracle.units = report.units;
  oracle.flagged = report.flagged;
  oracle.hits = report.hits;
  oracle.chance_hits = report.oracle_chance_hits;
  oracle.chance_sd = report.oracle_chance_sd;
  kept.push_back(oracle);
  report.detectors = kept;
  return report;
}

}  // namespace

double DetectorResult::z() const {
  if (chance_sd <= 0.0) return double(hits) > chance_hits ? INFINITY : 0.0;
  return (double(hits) - chance_hits) / chance_sd;
}

double DetectionReport::chance() const {
  double expected_hits = 0.0;
  for (const auto& l : layers) {
    if (l.units) expected_hits += double(l.flagged) * double(l.extracted) / double(l.units);
  }
  return flagged ? expected_hits / double(flagged) : 0.0;
}

double DetectionReport::oracle_z() const {
  if (oracle_chance_sd <= 0.0) return double(hits) > oracle_chance_hits ? INFINITY : 0.0;
  return (double(hits) - oracle_chance_hits) / oracle_chance_sd;
}

const DetectorResult* DetectionReport::detector(const std::string& name) const {
  for (const auto& d : detectors) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

DetectionReport detect_extracted(const std::vector<NamedTensor>& tensors, const KeyFile& truth,
                                 int permutations) {
  return run_detectors(tensors, truth, permutations, nullptr);
}

DetectionReport detect_extracted(LoadedModel& locked, const KeyFile& truth,
                                 const DetectOptions& options) {
  return detect_extracted(named_tensors(*locked.net), locked.net->structure(), truth, options);
}

DetectionReport detect_extracted(const std::vector<NamedTensor>& tensors,
                                 const Structure& structure, const KeyFile& truth,
                                 const DetectOptions& options) {
  if (options.learned_locks < 0 || options.learned_locks > 100) {
    throw UsageError("learned detector locks " + std::to_string(options.learned_locks) +
                     ": must be within [0, 100]");
  }
  if (options.learned_locks == 0)
    return run_detectors(tensors, truth, options.permutations, nullptr);
  const LearnedModel learned = train_learned(tensors, structure, truth.header, options);
  DetectionReport r = run_detectors(tensors, truth, options.permutations, &learned);
  r.learned_locks = learned.locks;
  r.learned_training_units = learned.training_units;
  if (learned.weights.defined()) {
    for (const auto& name : kFeatureNames) r.learned_features.push_back(name);
    for (const auto& name : kFeatureNames) r.learned_features.push_back("|" + name + "|");
    for (int64_t i = 0; i < learned.weights.numel(); ++i)
      r.learned_weights.push_back(learned.weights[i].item<double>());
    r.learned_weights.push_back(learned.bias);
  }
  return r;
}

}  // namespace corelocker
