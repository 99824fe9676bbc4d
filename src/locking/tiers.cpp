#include "locking/tiers.h"

#include <algorithm>
#include <string>

#include "util/error.h"

namespace corelocker {

std::vector<double> sorted_tier_ratios(std::vector<double> ratios) {
  if (ratios.empty()) throw UsageError("tiers: give at least one ratio");
  if (ratios.size() > 1000)
    throw UsageError("tiers: " + std::to_string(ratios.size()) + " ratios (at most 1000)");
  std::sort(ratios.begin(), ratios.end());
  for (size_t i = 0; i < ratios.size(); ++i) {
    if (!(ratios[i] > 0.0 && ratios[i] <= 1.0))
      throw UsageError("tier ratio " + std::to_string(ratios[i]) + ": must be within (0, 1]");
    if (i > 0 && ratios[i] == ratios[i - 1])
      throw UsageError("tier ratio " + std::to_string(ratios[i]) + " given twice");
  }
  return ratios;
}

void check_tier_units(const std::vector<double>& ratios, const std::vector<uint64_t>& units) {
  for (size_t i = 1; i < ratios.size() && i < units.size(); ++i) {
    if (units[i] == units[i - 1]) {
      throw UsageError("tiers " + std::to_string(ratios[i - 1]) + " and " +
                       std::to_string(ratios[i]) + " both extract " + std::to_string(units[i]) +
                       " units: choose ratios further apart");
    }
  }
  if (!units.empty() && units.front() == 0)
    throw UsageError("tier ratio " + std::to_string(ratios.front()) + " extracts no unit");
}

}  // namespace corelocker
