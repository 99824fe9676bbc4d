// The files a sweep writes into its folder: sweep.csv row by row as the points arrive (a killed
// sweep leaves a readable partial table), then sweep.json (the run and every point) and the plot
// (sweep.png, sweep.svg and the gnuplot script sweep.gp), also when the sweep was interrupted,
// holding the points measured.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "control/utility_curve.h"
#include "report/csv_log.h"
#include "report/gnuplot.h"
#include "util/hash.h"

namespace corelocker {

// What sweep.json records about the run besides its points.
struct SweepRun {
  std::string model;  // path as given
  Digest fingerprint{};
  std::string dataset;
  int64_t test_images = 0;
  EvalResult unlocked;
  double chance = 0.0;            // percent
  int64_t reestimate_images = 0;  // 0 when only the plain top-1 was measured
  std::string scope = "default";  // as asked for
  std::string random_units = "l1";
};

// One point of sweep.json.
nlohmann::json sweep_point_json(const CurvePoint& p);
// The two-panel plot (top-1, top-3 against the ratio; random with its spread).
PlotSpec sweep_plot(const SweepRun& run, const SweepOptions& options,
                    const std::vector<CurvePoint>& points);

class SweepReport {
 public:
  // Creates `dir` (when missing) and sweep.csv with its header. Throws IoError.
  explicit SweepReport(std::string dir);
  // One row of sweep.csv, flushed to disk.
  void add(const CurvePoint& p);
  // Writes sweep.json and, with `plot` and at least one point, the plot; returns the files
  // written besides sweep.csv. Throws IoError, and Error when gnuplot fails.
  std::vector<std::string> finish(const SweepRun& run, const SweepOptions& options,
                                  const std::vector<CurvePoint>& points, bool complete,
                                  double seconds, bool plot);

 private:
  std::string dir_;
  std::unique_ptr<CsvLog> csv_;
};

}  // namespace corelocker
