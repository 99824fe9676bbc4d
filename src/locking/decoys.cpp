#include "locking/decoys.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "util/error.h"

namespace corelocker {
namespace {

constexpr auto kF64 = torch::kFloat64;
// A tensor with fewer remaining kernels than max(this, 4 * kernel elements) borrows its decoy
// shapes from every tensor with the same kernel shape: a copula over s positions needs a few
// kernels per position.
constexpr int64_t kMinOwnKernels = 32;
// Fewer remaining norms than this: norms come from the pool too.
constexpr int64_t kMinOwnNorms = 8;
// Decoy shapes are moment-matched (match_moments) when there are at least this many times the
// kernel's elements of both decoys and real kernels.
constexpr int64_t kMinMatched = 4;
// Candidate shapes drawn per decoy; each decoy keeps the one whose sorted |element| profile is
// nearest that of a random remaining kernel (draw_shapes).
constexpr int64_t kProfileCandidates = 64;

torch::Tensor f64(const torch::Tensor& t) { return t.detach().to(kF64); }

// ---------------------------------------------------------------- decoy-v1
// Overwrites the `targets` rows of `view` [N, s] with decoys: each gets the l1 norm of a random
// donor unit and elements drawn from random positions of random donors. Not to be changed:
// `--fill decoy-v1` must reproduce the statistics of the locks the first generator made.
void fill_v1(const torch::Tensor& view, const std::vector<int64_t>& targets,
             const std::vector<int64_t>& excluded, uint64_t seed) {
  const int64_t n = view.size(0), s = view.size(1), t = static_cast<int64_t>(targets.size());
  std::vector<char> taken(static_cast<size_t>(n), 0);
  for (auto u : excluded) taken[static_cast<size_t>(u)] = 1;
  for (auto u : targets) taken[static_cast<size_t>(u)] = 1;
  std::vector<int64_t> donor_list;
  for (int64_t u = 0; u < n; ++u) {
    if (!taken[static_cast<size_t>(u)]) donor_list.push_back(u);
  }
  auto target_idx = torch::tensor(targets, torch::kInt64);
  if (donor_list.empty() || t == 0) {
    view.index_fill_(0, target_idx, 0);
    return;
  }
  auto gen = at::detail::createCPUGenerator(seed);
  auto donors = torch::tensor(donor_list, torch::kInt64);
  const int64_t d = donors.numel();
  auto pick = [&](int64_t count) {
    return donors.index_select(0, torch::randint(d, {count}, gen, torch::kInt64));
  };
  auto flat = view.reshape({-1});
  auto elem_idx = pick(t * s) * s + torch::randint(s, {t * s}, gen, torch::kInt64);
  auto decoys = flat.index_select(0, elem_idx).view({t, s}).to(kF64);
  if (s > 1) {
    auto norms = view.index_select(0, pick(t)).to(kF64).abs().sum(1);
    decoys.mul_((norms / decoys.abs().sum(1).clamp_min(1e-30)).unsqueeze(1));
  }
  view.index_copy_(0, target_idx, decoys.to(view.scalar_type()));
}

// ---------------------------------------------------------------- decoy: shared pieces
// `count` positive values from a smoothed bootstrap of `positive` on the log scale: a random
// sample value plus Gaussian noise, shrunk towards the mean so that the variance stays the
// sample's. The bandwidth is a fifth of Silverman's, but at least twice the median spacing of
// the sorted sample: wide enough that a draw falls among many samples (a draw that sits between
// two samples, or repeats one, pairs with them: a nearest-norm ranking found interpolated norms
// at z ~18), narrow enough not to widen the tails (Silverman's bandwidth did: a far-from-median
// ranking found those decoys at z ~3).
torch::Tensor smoothed_draw(const torch::Tensor& positive, int64_t count, at::Generator& gen) {
  auto sorted = std::get<0>(positive.log().sort());
  const int64_t n = sorted.numel();
  auto picked = sorted.index_select(0, torch::randint(n, {count}, gen, torch::kInt64));
  auto noise = torch::randn({count}, gen, torch::TensorOptions(kF64));
  const double mean = sorted.mean().item<double>();
  const double sd = n > 1 ? sorted.std().item<double>() : 0.0;
  if (!(sd > 0.0)) return (picked + 0.05 * noise).exp();  // one value: a small spread around it
  const double spacing =
      (sorted.narrow(0, 1, n - 1) - sorted.narrow(0, 0, n - 1)).median().item<double>();
  const double h = std::max(0.2 * 1.06 * sd * std::pow(double(n), -0.2), 2.0 * spacing);
  return (mean + (picked - mean + h * noise) / std::sqrt(1.0 + h * h / (sd * sd))).exp();
}

// Every element of `tensor` that a unit of `plan` or `no_donors` covers.
torch::Tensor taken_elements(const NamedTensor& tensor, const ExtractionPlan& plan,
                             const ExtractionPlan* no_donors) {
  auto taken = torch::zeros({tensor.tensor.numel()}, torch::kBool);
  auto mark = [&](const ExtractionPlan& p) {
    for (const auto& e : p.entries) {
      if (e.tensor != tensor.name || e.units.empty()) continue;
      taken.view({-1, e.unit_size}).index_fill_(0, unit_tensor(e.units), true);
    }
  };
  mark(plan);
  if (no_donors != nullptr) mark(*no_donors);
  return taken;
}

// The remaining kernels of one conv tensor [rows, cols, kh, kw] and a two-way random-effects fit
// of their shapes (unit l2 norm): shape = mean + filter (row) effect + channel (column) effect +
// residual. Effects are shrunk best linear predictions: a row's raw mean residual times
// var_row / (var_row + var_residual / kernels in the row), which gives a decoy the covariance
// with its filter's other kernels that a real kernel has; what it leaves unexplained is drawn
// once per filter (channel) at fill time (fill_kernels).
struct KernelFit {
  int64_t rows = 0, cols = 0, s = 0;
  torch::Tensor shapes;                  // [n, s] remaining kernels, unit l2 norm
  torch::Tensor l1;                      // [n] their l1 norms
  torch::Tensor mean;                    // [s]
  torch::Tensor row_effect, col_effect;  // [rows, s], [cols, s], shrunk
  torch::Tensor row_shrink, col_shrink;  // [rows], [cols]
  torch::Tensor row_cov, col_cov;        // [s, s] the effects' covariances (trace: the variance)
  torch::Tensor residual;                // [n, s]
  double row_var = 0.0, col_var = 0.0, residual_var = 0.0;  // per kernel, summed over positions
  int64_t count() const { return shapes.size(0); }
};

KernelFit fit_kernels(const torch::Tensor& weight, const torch::Tensor& kernel_taken) {
  KernelFit f;
  f.rows = weight.size(0);
  f.cols = weight.size(1);
  f.s = weight.size(2) * weight.size(3);
  auto k = f64(weight).reshape({f.rows, f.cols, f.s});
  auto l2 = k.pow(2).sum(2).sqrt();
  auto remaining = kernel_taken.view({f.rows, f.cols}).logical_not().logical_and(l2.gt(0));
  auto u = k / l2.clamp_min(1e-300).unsqueeze(2);
  auto idx = remaining.reshape({-1}).nonzero().squeeze(1);
  f.shapes = u.reshape({-1, f.s}).index_select(0, idx);
  f.l1 = k.abs().sum(2).reshape({-1}).index_select(0, idx);
  f.row_effect = torch::zeros({f.rows, f.s}, kF64);
  f.col_effect = torch::zeros({f.cols, f.s}, kF64);
  f.row_shrink = torch::zeros({f.rows}, kF64);
  f.col_shrink = torch::zeros({f.cols}, kF64);
  f.row_cov = torch::zeros({f.s, f.s}, kF64);
  f.col_cov = torch::zeros({f.s, f.s}, kF64);
  const int64_t n = f.count();
  if (n == 0) {
    f.mean = torch::zeros({f.s}, kF64);
    f.residual = f.shapes;
    return f;
  }
  auto m = remaining.to(kF64).unsqueeze(2);
  f.mean = (u * m).sum(torch::IntArrayRef{0, 1}) / double(n);
  auto n_row = m.sum(1).squeeze(1), n_col = m.sum(0).squeeze(1);
  // An effect needs several kernels per filter (channel) to be told from a residual.
  const bool use_rows = f.cols >= 2, use_cols = f.rows >= 2;
  auto row_raw = torch::zeros({f.rows, f.s}, kF64), col_raw = torch::zeros({f.cols, f.s}, kF64);
  if (use_rows) row_raw = ((u - f.mean) * m).sum(1) / n_row.clamp_min(1).unsqueeze(1);
  if (use_cols)
    col_raw = ((u - f.mean - row_raw.unsqueeze(1)) * m).sum(0) / n_col.clamp_min(1).unsqueeze(1);
  f.residual = (u - f.mean - row_raw.unsqueeze(1) - col_raw.unsqueeze(0))
                   .reshape({-1, f.s})
                   .index_select(0, idx);
  auto mean_count = [](const torch::Tensor& counts) {
    auto c = counts.masked_select(counts.gt(0));
    return c.numel() > 0 ? c.mean().item<double>() : 0.0;
  };
  const double nr = use_rows ? mean_count(n_row) : 0.0, nc = use_cols ? mean_count(n_col) : 0.0;
  // In-sample residuals are smaller than the noise by about (1 - 1/n_row)(1 - 1/n_col).
  double deflate = 1.0;
  if (nr > 0) deflate *= 1.0 - 1.0 / nr;
  if (nc > 0) deflate *= 1.0 - 1.0 / nc;
  f.residual_var = f.residual.pow(2).sum(1).mean().item<double>() / std::max(deflate, 0.25);
  auto component = [&](const torch::Tensor& raw, const torch::Tensor& counts, double avg) {
    auto has = counts.gt(0);
    if (avg <= 0.0 || !has.any().item<bool>()) return 0.0;
    return std::max(
        raw.pow(2).sum(1).masked_select(has).mean().item<double>() - f.residual_var / avg, 0.0);
  };
  auto shrink = [&](double var, const torch::Tensor& counts) {
    if (var <= 0.0) return torch::zeros_like(counts);
    return torch::where(counts.gt(0), var / (var + f.residual_var / counts.clamp_min(1)),
                        torch::zeros_like(counts));
  };
  if (use_rows) f.row_var = component(row_raw, n_row, nr);
  if (use_cols) f.col_var = component(col_raw, n_col, nc);
  f.row_shrink = shrink(f.row_var, n_row);
  f.col_shrink = shrink(f.col_var, n_col);
  f.row_effect = row_raw * f.row_shrink.unsqueeze(1);
  f.col_effect = col_raw * f.col_shrink.unsqueeze(1);
  // The effects' covariance over positions: that of the raw effects (the residual's share in
  // them included), scaled to the variance. Subtracting the residual's share and clipping at
  // positive semi-definite put the variance of weak effects in a few directions, which the
  // matching of moments (draw_shapes) then shrank, and with them the effects.
  auto effect_cov = [&](const torch::Tensor& raw, const torch::Tensor& counts, double var) {
    auto r = raw.index_select(0, counts.gt(0).nonzero().squeeze(1));
    if (var <= 0.0 || r.size(0) == 0) return torch::zeros({f.s, f.s}, kF64);
    auto c = r.t().mm(r);
    const double trace = c.trace().item<double>();
    return trace > 0.0 ? c * (var / trace) : torch::eye(f.s, kF64) * (var / double(f.s));
  };
  f.row_cov = effect_cov(row_raw, n_row, f.row_var);
  f.col_cov = effect_cov(col_raw, n_col, f.col_var);
  return f;
}

// `count` draws from a Gaussian copula of `pool` [n, s]: latent normals with the correlation of
// the pool's normal scores, mapped through each position's empirical quantiles. Also returns
// the same latent draws on a Gaussian marginal (the pool's mean and sd per position).
std::pair<torch::Tensor, torch::Tensor> copula_draws(const torch::Tensor& pool, int64_t count,
                                                     at::Generator& gen) {
  const int64_t n = pool.size(0), s = pool.size(1);
  auto ranks = pool.argsort(/*dim=*/int64_t{0}).argsort(int64_t{0}).to(kF64);
  auto scores = std::sqrt(2.0) * torch::erfinv(2.0 * (ranks + 0.5) / double(n) - 1.0);
  auto cov = scores.t().mm(scores) / double(n);
  auto sd = cov.diagonal().clamp_min(1e-12).sqrt();
  auto corr = cov / sd.unsqueeze(1) / sd.unsqueeze(0);
  torch::Tensor chol = torch::eye(s, kF64);
  for (double jitter = 1e-9; jitter < 1.0; jitter *= 100.0) {
    try {
      chol = torch::linalg_cholesky(corr + jitter * torch::eye(s, kF64));
      break;
    } catch (const c10::Error&) {
      // not positive definite (positions that always move together): more jitter
    }
  }
  auto latent = torch::randn({count, s}, gen, torch::TensorOptions(kF64)).mm(chol.t());
  auto uniform = 0.5 * (1.0 + torch::erf(latent / std::sqrt(2.0)));
  auto index = (uniform * double(n)).floor().clamp(0, n - 1).to(torch::kInt64);
  auto sorted = std::get<0>(pool.sort(0));
  auto gaussian = pool.mean(0) + latent * (n > 1 ? pool.std(0) : torch::zeros({s}, kF64));
  return {sorted.gather(0, index), gaussian};
}

// Per-kernel statistics the decoys are calibrated on: roughness, sparsity, peak share, sign
// balance (|sum| / l1) and the Mahalanobis distance of the unit-l2 shape under `mean` and
// `precision`.
torch::Tensor calibration_stats(const torch::Tensor& shapes, int64_t kh, int64_t kw,
                                const torch::Tensor& mean, const torch::Tensor& precision) {
  const KernelShapeStats st = kernel_shape_stats(shapes, kh, kw);
  auto balance = shapes.sum(1).abs() / shapes.abs().sum(1).clamp_min(1e-300);
  auto u = shapes / shapes.pow(2).sum(1, true).sqrt().clamp_min(1e-300) - mean;
  auto maha = (u.mm(precision) * u).sum(1);
  return torch::stack({st.roughness, st.sparsity, st.peak_share, balance, maha}, 1);
}

// Symmetric square root of a covariance and of its pseudo-inverse (eigenvalues below 1e-12 of
// the largest count as 0 in the inverse: a kernel's smallest directions can be 1e-4 of its
// largest, and a product of two covariances squares that).
std::pair<torch::Tensor, torch::Tensor> sqrt_and_inverse_sqrt(const torch::Tensor& cov) {
  auto [values, vectors] = torch::linalg_eigh(cov);
  const double floor = std::max(values.max().item<double>(), 1e-300) * 1e-12;
  auto root = values.clamp_min(0).sqrt();
  auto inverse =
      torch::where(values.gt(floor), 1.0 / root.clamp_min(1e-300), torch::zeros_like(root));
  return {(vectors * root).mm(vectors.t()), (vectors * inverse).mm(vectors.t())};
}

// Maps `shapes` [t, s] (rows of unit l2 norm) so that their mean and covariance are `mean` and
// `cov` [s, s] (those of the remaining kernels' shapes), back on the unit sphere. Why: a
// detector that standardises a tensor's kernels against their own covariance (a Mahalanobis
// distance) sees the mixture of kernels and decoys, and when the decoys' covariance differs
// from the kernels' in any direction, even with the same mean distance under the kernels' own
// covariance, the kernels sit further out under the mixture's (convexity of 1/x; the more so,
// the larger the decoys' share: the default lock takes 55-65% of the first stage's kernels).
// The map is the linear one that moves a Gaussian least (the optimal transport map between
// Gaussians), so the decoys' structure (filter and channel effects, marginals) is kept as well
// as it can be; renormalising moves the moments a little, so it is applied a few times.
torch::Tensor match_moments(torch::Tensor shapes, const torch::Tensor& mean,
                            const torch::Tensor& cov) {
  shapes = shapes / shapes.pow(2).sum(1, true).sqrt().clamp_min(1e-300);
  for (int iter = 0; iter < 4; ++iter) {
    auto got_mean = shapes.mean(0);
    auto c = shapes - got_mean;
    auto got = c.t().mm(c) / double(shapes.size(0));
    auto [got_root, got_inv_root] = sqrt_and_inverse_sqrt(got);
    // T = G^-1/2 (G^1/2 C G^1/2)^1/2 G^-1/2 maps covariance G to C.
    auto middle = std::get<0>(sqrt_and_inverse_sqrt(got_root.mm(cov).mm(got_root)));
    auto map = got_inv_root.mm(middle).mm(got_inv_root);
    shapes = mean + c.mm(map);  // map is symmetric
    shapes = shapes / shapes.pow(2).sum(1, true).sqrt().clamp_min(1e-300);
  }
  return shapes;
}

// Decoy shapes: `centre` [t, s] plus a residual from `pool`, scaled so that its energy is
// `target_var` [t] on average. Which residual model fits depends on the model (a copula over
// kernel positions keeps each position's marginal, e.g. the flat ones of a kernel still near its
// uniform initialisation; one over the principal coordinates keeps a bimodal first component,
// e.g. kernels that are all positive or all negative; Gaussian marginals sharpen flat kernels),
// so a small grid of them is drawn: copula basis (positions, principal coordinates) x marginals
// (copula to Gaussian) x lengths (each a remaining residual's length, or all equal) x scale
// (0.8 to 1.25 times the target; 1 where the moments are matched). With at least kMinMatched
// times s decoys and rows of `real`, each candidate's moments are matched to `real`'s
// (match_moments). The candidate whose decoys' mean roughness, sparsity, peak share, sign
// balance and Mahalanobis distance are nearest those of `real` [m, s] (in units of their sd) is
// kept (with matched moments, its mean sparsity is then set to `real`'s).
// Each cell of the grid draws kProfileCandidates shapes per decoy and keeps, per decoy, the one
// whose sorted |element| profile (unit l2) is nearest that of a random row of `real`. Why: the
// copula's positions are all but uncorrelated, so its draws are independent per position and
// miss how a kernel's magnitudes depend on each other; on kernels near their uniform
// initialisation they came out flatter than the kernels (sparsity +0.13 sd), and what brought
// the mean sparsity back (Gaussian marginals, the power below with p > 1) did it with one
// outstanding element: peak share too high for the sparsity, 2nd / 1st largest too low, which
// the learned detector found (peak share and sparsity weighted alike, z 3.4-6.0 on the one-epoch
// ResNet-20's l1 locks; runs/s15/decoy-analysis.md).
torch::Tensor draw_shapes(const torch::Tensor& centre, const torch::Tensor& target_var,
                          const torch::Tensor& pool, const torch::Tensor& real, int64_t kh,
                          int64_t kw, at::Generator& gen) {
  const int64_t t = centre.size(0), k = kProfileCandidates;
  auto centred = pool - pool.mean(0);
  auto basis =
      std::get<1>(torch::linalg_eigh(centred.t().mm(centred) / double(pool.size(0))));  // [s, s]
  std::vector<std::pair<torch::Tensor, torch::Tensor>> draws;  // (copula, gaussian) per basis
  draws.push_back(copula_draws(pool, k * t, gen));
  auto [copula_pc, gaussian_pc] = copula_draws(pool.mm(basis), k * t, gen);
  draws.emplace_back(copula_pc.mm(basis.t()), gaussian_pc.mm(basis.t()));
  // What the decoys should look like.
  auto real_unit = real / real.pow(2).sum(1, true).sqrt().clamp_min(1e-300);
  // Candidate c of decoy i is row c * t + i; decoy i keeps the candidate whose sorted |element|
  // profile is nearest that of a random remaining kernel.
  auto target_rows = torch::randint(real.size(0), {t}, gen, torch::kInt64);
  auto target_profile = std::get<0>(real_unit.index_select(0, target_rows).abs().sort(1));
  auto pick = [&](const torch::Tensor& candidates) {
    auto unit = candidates / candidates.pow(2).sum(1, true).sqrt().clamp_min(1e-300);
    auto profile = std::get<0>(unit.abs().sort(1)).view({k, t, -1});
    auto nearest = (profile - target_profile.unsqueeze(0)).pow(2).sum(2).argmin(0);  // [t]
    return candidates.index_select(0, nearest * t + torch::arange(t, torch::kInt64));
  };
  auto centres = centre.repeat({k, 1});
  auto real_mean = real_unit.mean(0);
  auto real_cov = (real_unit - real_mean).t().mm(real_unit - real_mean) /
                  double(std::max<int64_t>(real.size(0), 1));
  auto precision = torch::linalg_pinv(real_cov);
  // Enough decoys and kernels to estimate a covariance from: their moments are matched.
  const bool match =
      t >= kMinMatched * centre.size(1) && real.size(0) >= kMinMatched * centre.size(1);
  // Matched moments fix the decoys' overall scale; scaling the residual against the filter's
  // and channel's effects would then only change how alike a filter's (channel's) decoys are,
  // which the statistics below do not see (a heavily extracted filter's decoys came out less
  // alike than its kernels), so the residual keeps the fitted variance.
  const std::vector<double> gains =
      match ? std::vector<double>{1.0} : std::vector<double>{0.8, 0.9, 1.0, 1.1, 1.25};
  auto want = calibration_stats(real, kh, kw, real_mean, precision);
  auto want_mean = want.mean(0);
  auto want_sd =
      want.size(0) > 1 ? want.std(0).clamp_min(1e-12) : torch::ones({want.size(1)}, kF64);
  auto pool_norms = pool.pow(2).sum(1).sqrt();
  const double pool_energy = std::max(pool_norms.pow(2).mean().item<double>(), 1e-300);
  auto lengths =
      pool_norms.index_select(0, torch::randint(pool.size(0), {k * t}, gen, torch::kInt64));
  auto target_vars = target_var.repeat({k});
  const std::vector<torch::Tensor> scales = {
      (lengths * (target_vars / pool_energy).sqrt()).unsqueeze(1), target_vars.sqrt().unsqueeze(1)};
  torch::Tensor best;
  double best_gap = INFINITY;
  for (const auto& [copula, gaussian] : draws) {
    for (double a : {0.0, 0.25, 0.5, 0.75, 1.0, 1.5}) {
      auto e = a * gaussian + (1.0 - a) * copula;
      auto direction = e / e.pow(2).sum(1, true).sqrt().clamp_min(1e-300);
      for (const auto& scale : scales) {
        for (double g : gains) {
          auto shapes = pick(centres + direction * (g * scale));
          if (match) shapes = match_moments(shapes, real_mean, real_cov);
          auto got = calibration_stats(shapes, kh, kw, real_mean, precision).mean(0);
          const double gap = ((got - want_mean).abs() / want_sd).sum().item<double>();
          if (!best.defined() || gap < best_gap) {
            best_gap = gap;
            best = shapes;
          }
        }
      }
    }
  }
  if (match) {
    // The grid leaves the decoys a little flatter than the kernels (sparsity 0.01-0.02 higher in
    // the heavily extracted tensors, where the learned detector weighted it): an elementwise
    // power, sign(x)|x|^p, sets their mean sparsity to the kernels', then the moments are
    // matched again.
    const double want_sparsity = want_mean[1].item<double>();
    auto mean_sparsity = [&](const torch::Tensor& x) {
      return kernel_shape_stats(x, kh, kw).sparsity.mean().item<double>();
    };
    auto power = [](const torch::Tensor& x, double p) {
      auto y = x.sign() * x.abs().pow(p);
      return y / y.pow(2).sum(1, true).sqrt().clamp_min(1e-300);
    };
    for (int round = 0; round < 3; ++round) {
      double lo = 0.5, hi = 2.0;  // sparsity falls as p grows
      if (mean_sparsity(power(best, lo)) < want_sparsity ||
          mean_sparsity(power(best, hi)) > want_sparsity)
        break;
      for (int i = 0; i < 30; ++i) {
        const double mid = 0.5 * (lo + hi);
        (mean_sparsity(power(best, mid)) > want_sparsity ? lo : hi) = mid;
      }
      best = match_moments(power(best, 0.5 * (lo + hi)), real_mean, real_cov);
    }
  }
  return best;
}

// Units of `view` [units, size] none of whose elements is taken and whose l1 norm is not 0.
torch::Tensor remaining_unit_norms(const torch::Tensor& view, const torch::Tensor& taken) {
  auto l1 = f64(view).abs().sum(1);
  auto keep = taken.view({view.size(0), view.size(1)}).any(1).logical_not().logical_and(l1.gt(0));
  return l1.masked_select(keep);
}

// Rescales each row of `units` [k, size] to a smoothed draw of `norms` (kept as they are when
// there are too few norms to draw from).
torch::Tensor rescale_units(torch::Tensor units, const torch::Tensor& norms, at::Generator& gen) {
  if (norms.numel() < kMinOwnNorms) return units;
  auto want = smoothed_draw(norms, units.size(0), gen);
  return units * (want / units.abs().sum(1).clamp_min(1e-300)).unsqueeze(1);
}

struct Context {
  std::vector<NamedTensor>& tensors;
  const ExtractionPlan& plan;
  const ExtractionPlan* no_donors;
  at::Generator gen;
};

// Remaining kernel shapes and l1 norms of every parameter tensor with kernels kh x kw.
std::pair<torch::Tensor, torch::Tensor> kernel_pool(Context& c, int64_t kh, int64_t kw) {
  std::vector<torch::Tensor> shapes, norms;
  for (const auto& t : c.tensors) {
    if (t.is_buffer || t.tensor.dim() != 4 || t.tensor.size(2) != kh || t.tensor.size(3) != kw)
      continue;
    if (!t.tensor.is_floating_point() || t.tensor.numel() == 0) continue;
    auto taken = taken_elements(t, c.plan, c.no_donors).view({-1, kh * kw}).any(1);
    KernelFit f = fit_kernels(t.tensor, taken);
    shapes.push_back(f.shapes);
    norms.push_back(f.l1);
  }
  if (shapes.empty()) return {torch::zeros({0, kh * kw}, kF64), torch::zeros({0}, kF64)};
  return {torch::cat(shapes), torch::cat(norms)};
}

// Conv units of whole kernels (m kernels a unit): kernel-model decoys.
void fill_kernels(Context& c, NamedTensor& t, const PlanEntry& p) {
  const torch::Tensor& w = t.tensor;
  const int64_t kh = w.size(2), kw = w.size(3), s = kh * kw, m = p.unit_size / s, cols = w.size(1);
  auto taken = taken_elements(t, c.plan, c.no_donors);
  auto kernel_taken = taken.view({-1, s}).any(1);
  auto units = unit_tensor(p.units);
  auto kernel_idx =
      (units.unsqueeze(1) * m + torch::arange(m, torch::kInt64).unsqueeze(0)).reshape({-1});
  const int64_t count = kernel_idx.numel();
  auto kernels_view = w.detach().view({-1, s});
  KernelFit fit = fit_kernels(w, kernel_taken);
  torch::Tensor shapes, norms_from;
  if (fit.count() >= std::max(kMinOwnKernels, 4 * s)) {
    auto rows_idx = kernel_idx.div(cols, "floor"), cols_idx = kernel_idx.remainder(cols);
    // One draw of each filter's and each channel's effect from its distribution given the
    // remaining kernels (the shrunk prediction plus the part it leaves unexplained), shared by
    // every decoy of that filter (channel): decoys in the same filter then covary as real
    // kernels do. Unshared noise in each decoy instead left the decoys of a heavily extracted
    // filter or channel less alike than real ones (the default lock takes most of the first
    // stage's kernels; corr_channel and the learned detector found them).
    auto effect_draw = [&](const torch::Tensor& effect, const torch::Tensor& shrink,
                           const torch::Tensor& cov) {
      auto [values, vectors] = torch::linalg_eigh(cov);
      auto noise = torch::randn({effect.size(0), fit.s}, c.gen, torch::TensorOptions(kF64))
                       .mm((vectors * values.clamp_min(0).sqrt()).t());
      return effect + noise * (1.0 - shrink).clamp_min(0).sqrt().unsqueeze(1);
    };
    auto row_draw = effect_draw(fit.row_effect, fit.row_shrink, fit.row_cov);
    auto col_draw = effect_draw(fit.col_effect, fit.col_shrink, fit.col_cov);
    auto centre =
        fit.mean + row_draw.index_select(0, rows_idx) + col_draw.index_select(0, cols_idx);
    auto target_var = torch::full({count}, fit.residual_var, kF64);
    shapes = draw_shapes(centre, target_var, fit.residual, fit.shapes, kh, kw, c.gen);
    norms_from = fit.l1;
  } else {
    auto [pool, pool_norms] = kernel_pool(c, kh, kw);
    if (pool.size(0) < 2) {  // no kernel of this shape anywhere to model decoys on
      kernels_view.index_fill_(0, kernel_idx, 0);
      return;
    }
    auto mean = pool.mean(0);
    auto centre = mean.unsqueeze(0).expand({count, s}).contiguous();
    auto target_var = torch::full({count}, (pool - mean).pow(2).sum(1).mean().item<double>(), kF64);
    shapes = draw_shapes(centre, target_var, pool - mean, pool, kh, kw, c.gen);
    norms_from = fit.count() >= kMinOwnNorms ? fit.l1 : pool_norms;
  }
  auto norms = smoothed_draw(norms_from, count, c.gen);
  auto decoys = shapes * (norms / shapes.abs().sum(1).clamp_min(1e-300)).unsqueeze(1);
  if (m > 1) {
    auto view = w.detach().view({-1, p.unit_size});
    decoys =
        rescale_units(decoys.reshape({-1, p.unit_size}), remaining_unit_norms(view, taken), c.gen)
            .reshape({-1, s});
  }
  kernels_view.index_copy_(0, kernel_idx, decoys.to(w.scalar_type()));
}

// Any other unit: remaining signs and a smoothed draw of the remaining magnitudes.
void fill_scalars(Context& c, NamedTensor& t, const PlanEntry& p) {
  auto view = t.tensor.detach().view({-1, p.unit_size});
  auto taken = taken_elements(t, c.plan, c.no_donors);
  auto flat = f64(t.tensor).reshape({-1});
  auto donors = flat.masked_select(taken.logical_not().logical_and(flat.ne(0)));
  auto units = unit_tensor(p.units);
  if (donors.numel() == 0) {
    view.index_fill_(0, units, 0);
    return;
  }
  const int64_t count = units.numel() * p.unit_size;
  auto signs =
      donors.index_select(0, torch::randint(donors.numel(), {count}, c.gen, torch::kInt64)).sign();
  auto decoys = (signs * smoothed_draw(donors.abs(), count, c.gen)).view({-1, p.unit_size});
  if (p.unit_size > 1) decoys = rescale_units(decoys, remaining_unit_norms(view, taken), c.gen);
  view.index_copy_(0, units, decoys.to(view.scalar_type()));
}

}  // namespace

KernelShapeStats kernel_shape_stats(const torch::Tensor& kernels, int64_t kh, int64_t kw) {
  auto k = f64(kernels).reshape({-1, kh, kw});
  auto energy = k.pow(2).sum({1, 2});
  auto diff = torch::zeros({k.size(0)}, kF64);
  if (kw > 1) diff = diff + (k.narrow(2, 1, kw - 1) - k.narrow(2, 0, kw - 1)).pow(2).sum({1, 2});
  if (kh > 1) diff = diff + (k.narrow(1, 1, kh - 1) - k.narrow(1, 0, kh - 1)).pow(2).sum({1, 2});
  auto l1 = k.abs().sum({1, 2}).clamp_min(1e-300);
  KernelShapeStats out;
  out.roughness = diff / energy.clamp_min(1e-300);
  out.sparsity = l1 / (energy.sqrt().clamp_min(1e-300) * std::sqrt(double(kh * kw)));
  out.peak_share = k.abs().amax({1, 2}) / l1;
  return out;
}

void fill_decoys(std::vector<NamedTensor>& tensors, const ExtractionPlan& plan,
                 const ExtractionPlan* no_donors, Fill fill, uint64_t seed) {
  if (fill == Fill::kZero) throw Error("fill_decoys: zero fill has no decoys");
  torch::NoGradGuard no_grad;
  auto find = [&](const std::string& name) -> NamedTensor& {
    for (auto& t : tensors) {
      if (t.name == name) return t;
    }
    throw Error("plan names tensor '" + name + "' which the model does not have");
  };
  if (fill == Fill::kDecoyV1) {
    for (const auto& p : plan.entries) {
      NamedTensor& t = find(p.tensor);
      std::vector<int64_t> excluded;
      if (no_donors != nullptr) {
        for (const auto& e : no_donors->entries) {
          if (e.tensor == p.tensor) excluded = unit_vector(e.units);
        }
      }
      fill_v1(t.tensor.detach().view({-1, p.unit_size}), unit_vector(p.units), excluded, seed++);
    }
    return;
  }
  Context c{tensors, plan, no_donors, at::detail::createCPUGenerator(seed)};
  for (const auto& p : plan.entries) {
    NamedTensor& t = find(p.tensor);
    if (p.units.empty()) continue;
    if (!t.tensor.is_contiguous()) throw Error("tensor '" + p.tensor + "' is not contiguous");
    const bool kernels = t.tensor.dim() == 4 && t.tensor.size(2) * t.tensor.size(3) >= 2 &&
                         p.unit_size % (t.tensor.size(2) * t.tensor.size(3)) == 0;
    if (kernels) {
      fill_kernels(c, t, p);
    } else {
      fill_scalars(c, t, p);
    }
  }
}

}  // namespace corelocker
