// Bands and search outcomes as text: parsing "50-55", naming a CalibrationStatus.
#include <stdexcept>
#include <string>

#include "control/calibrate.h"
#include "util/error.h"

namespace corelocker {

Band parse_band(const std::string& text) {
  const size_t dash = text.find('-', 1);
  auto fail = [&](const std::string& why) {
    return UsageError("band '" + text + "': " + why +
                      " (expected LOW-HIGH in percent, e.g. 50-55)");
  };
  if (dash == std::string::npos) throw fail("no '-'");
  Band b;
  try {
    size_t used = 0;
    const std::string lo = text.substr(0, dash), hi = text.substr(dash + 1);
    b.low = std::stod(lo, &used);
    if (used != lo.size()) throw fail("'" + lo + "' is not a number");
    b.high = std::stod(hi, &used);
    if (used != hi.size()) throw fail("'" + hi + "' is not a number");
  } catch (const std::invalid_argument&) {
    throw fail("not a number");
  } catch (const std::out_of_range&) {
    throw fail("number out of range");
  }
  if (!(b.low >= 0.0 && b.high <= 100.0 && b.low < b.high))
    throw fail("needs 0 <= LOW < HIGH <= 100");
  return b;
}

const char* to_string(CalibrationStatus s) {
  switch (s) {
    case CalibrationStatus::kFound:
      return "found";
    case CalibrationStatus::kAboveReach:
      return "above reach";
    case CalibrationStatus::kBelowReach:
      return "below reach";
    case CalibrationStatus::kBetweenSteps:
      return "between unit steps";
    case CalibrationStatus::kOutOfBudget:
      return "out of evaluations";
  }
  return "?";
}

}  // namespace corelocker
