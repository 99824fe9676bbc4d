// Summary statistics shared by sweeps, attack reports and the CLI.
#pragma once

#include <cmath>
#include <utility>
#include <vector>

namespace corelocker {

// Sample mean and standard deviation (n - 1 denominator; sd 0 for fewer than two values,
// both 0 for none).
inline std::pair<double, double> mean_sd(const std::vector<double>& v) {
  if (v.empty()) return {0.0, 0.0};
  double m = 0.0, q = 0.0;
  for (double x : v) m += x;
  m /= double(v.size());
  for (double x : v) q += (x - m) * (x - m);
  return {m, v.size() > 1 ? std::sqrt(q / double(v.size() - 1)) : 0.0};
}

}  // namespace corelocker
