// Tiered locks: the checks every format makes of the --tiers ratios and of what they extract.
// Torch-free (the safetensors lock of the front binary makes them too).
#pragma once

#include <cstdint>
#include <vector>

namespace corelocker {

// The ratios of a tiered lock, sorted ascending. Throws UsageError for none, more than 1000, one
// outside (0, 1] or one given twice.
std::vector<double> sorted_tier_ratios(std::vector<double> ratios);

// Throws UsageError when two tiers extract as many units (units[i]: the units the lock at the
// sorted ratios[i] takes) or the smallest extracts none.
void check_tier_units(const std::vector<double>& ratios, const std::vector<uint64_t>& units);

}  // namespace corelocker
