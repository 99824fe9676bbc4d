#include "locking/detect.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>

#include "util/error.h"
#include "util/stats.h"

namespace corelocker {

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

DetectionReport detect_extracted(const std::vector<NamedTensor>& tensors, const KeyFile& truth, int permutations) {
  torch::NoGradGuard no_grad;
  if (permutations < 2) throw UsageError("detector permutations " + std::to_string(permutations) + ": need at least 2");
  DetectionReport report;
  report.permutations = permutations;
  // flagged[attacker] per tensor, kept to score the random truth sets afterwards.
  std::vector<std::array<torch::Tensor, 2>> flagged_sets;
  for (const auto& e : truth.entries) {
    const torch::Tensor* t = nullptr;
    for (const auto& nt : tensors) {
      if (nt.name == e.tensor) t = &nt.tensor;
    }
    if (t == nullptr) throw MismatchError("key entry '" + e.tensor + "': model has no such tensor");
    const int64_t s = static_cast<int64_t>(e.unit_size);
    if (s <= 0 || t->numel() % s != 0) {
      throw MismatchError("key entry '" + e.tensor + "': unit size " + std::to_string(s) + " does not divide " +
                          std::to_string(t->numel()) + " elements");
    }
    auto units = t->detach().to(torch::kFloat64).reshape({-1, s});
    const int64_t n = units.size(0);
    const int64_t k = static_cast<int64_t>(e.units.size());
    if (k > n) throw MismatchError("key entry '" + e.tensor + "': " + std::to_string(k) + " units, tensor has " + std::to_string(n));
    auto norms = units.abs().sum(1);
    auto zero = units.eq(0).all(1);
    const double median = norms.median().item<double>();
    const double mad = std::max((norms - median).abs().median().item<double>(), 1e-12);
    auto is_extracted = torch::zeros({n}, torch::kBool);
    std::vector<int64_t> idx(e.units.begin(), e.units.end());
    is_extracted.index_fill_(0, torch::tensor(idx, torch::kInt64), true);
    auto zero_bonus = zero.to(torch::kFloat64) * 1e12;
    std::array<torch::Tensor, 2> flagged = {std::get<1>(((norms - median).abs() / mad + zero_bonus).topk(k)),
                                            std::get<1>((-norms / mad + zero_bonus).topk(k))};
    DetectionLayer l;
    l.tensor = e.tensor;
    l.units = n;
    l.extracted = k;
    l.flagged = k;
    l.hits_far = is_extracted.index_select(0, flagged[0]).sum().item<int64_t>();
    l.hits_small = is_extracted.index_select(0, flagged[1]).sum().item<int64_t>();
    l.hits = std::max(l.hits_far, l.hits_small);
    l.exact_zero = zero.sum().item<int64_t>();
    report.flagged += l.flagged;
    report.hits += l.hits;
    report.hits_far += l.hits_far;
    report.hits_small += l.hits_small;
    report.extracted += l.extracted;
    report.units += l.units;
    report.layers.push_back(l);
    flagged_sets.push_back(flagged);
  }
  // The oracle's chance level: the same scoring against random truth sets (fixed seed, so the
  // report is reproducible).
  auto gen = at::detail::createCPUGenerator(0x5eed);
  std::vector<double> totals;
  for (int r = 0; r < permutations; ++r) {
    int64_t total = 0;
    for (size_t i = 0; i < report.layers.size(); ++i) {
      const auto& l = report.layers[i];
      auto random_truth = torch::zeros({l.units}, torch::kBool);
      random_truth.index_fill_(0, torch::randperm(l.units, gen, torch::kInt64).narrow(0, 0, l.extracted), true);
      total += std::max(random_truth.index_select(0, flagged_sets[i][0]).sum().item<int64_t>(),
                        random_truth.index_select(0, flagged_sets[i][1]).sum().item<int64_t>());
    }
    totals.push_back(double(total));
  }
  std::tie(report.oracle_chance_hits, report.oracle_chance_sd) = mean_sd(totals);
  return report;
}

}  // namespace corelocker
