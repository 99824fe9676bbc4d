#include "locking/detect.h"

#include <algorithm>
#include <numeric>

#include "util/error.h"

namespace corelocker {

double DetectionReport::chance() const {
  // Random flagging hits extracted units at the rate they occur in each tensor.
  double expected_hits = 0.0;
  for (const auto& l : layers) {
    if (l.units) expected_hits += double(l.flagged) * double(l.extracted) / double(l.units);
  }
  return flagged ? expected_hits / double(flagged) : 0.0;
}

DetectionReport detect_extracted(const std::vector<NamedTensor>& tensors, const KeyFile& truth) {
  torch::NoGradGuard no_grad;
  DetectionReport report;
  for (const auto& e : truth.entries) {
    const torch::Tensor* t = nullptr;
    for (const auto& nt : tensors) {
      if (nt.name == e.tensor) t = &nt.tensor;
    }
    if (t == nullptr) throw MismatchError("key entry '" + e.tensor + "': model has no such tensor");
    const int64_t s = static_cast<int64_t>(e.unit_size);
    auto units = t->detach().to(torch::kFloat64).reshape({-1, s});
    const int64_t n = units.size(0);
    auto norms = units.abs().sum(1);
    auto zero = units.eq(0).all(1);
    const double median = norms.median().item<double>();
    const double mad = std::max((norms - median).abs().median().item<double>(), 1e-12);
    const int64_t k = static_cast<int64_t>(e.units.size());
    auto is_extracted = torch::zeros({n}, torch::kBool);
    std::vector<int64_t> idx(e.units.begin(), e.units.end());
    is_extracted.index_fill_(0, torch::tensor(idx, torch::kInt64), true);
    // Two attackers, exact zeros first for both: one flags the norms furthest from the median
    // (outliers either way), one the smallest norms (fills that shrink the units). The report
    // keeps the better of the two for each tensor.
    auto zero_bonus = zero.to(torch::kFloat64) * 1e12;
    int64_t best = 0;
    for (const auto& suspicion : {(norms - median).abs() / mad + zero_bonus, -norms / mad + zero_bonus}) {
      auto flagged = std::get<1>(suspicion.topk(k));
      best = std::max(best, is_extracted.index_select(0, flagged).sum().item<int64_t>());
    }
    DetectionLayer l;
    l.tensor = e.tensor;
    l.units = n;
    l.extracted = k;
    l.flagged = k;
    l.hits = best;
    l.exact_zero = zero.sum().item<int64_t>();
    report.flagged += l.flagged;
    report.hits += l.hits;
    report.extracted += l.extracted;
    report.units += l.units;
    report.layers.push_back(l);
  }
  return report;
}

}  // namespace corelocker
