// The files a sweep writes into its folder: sweep.csv row by row as the points arrive, and
// sweep.json (the run and every point so far, `complete` false until the end) rewritten after
// each point, so a killed sweep leaves readable files that `sweep --resume` goes on from; at the
// end the plot (sweep.png, sweep.svg and the gnuplot script sweep.gp), also when the sweep was
// interrupted, holding the points measured.
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

// One point of sweep.json, and back. from_json throws FormatError naming a missing or mistyped
// field.
nlohmann::json sweep_point_json(const CurvePoint& p);
CurvePoint sweep_point_from_json(const nlohmann::json& j);
// The two-panel plot (top-1, top-3 against the ratio; random with its spread).
PlotSpec sweep_plot(const SweepRun& run, const SweepOptions& options,
                    const std::vector<CurvePoint>& points);

// What an earlier run of the same sweep left in its folder.
struct EarlierSweep {
  std::vector<CurvePoint> points;  // the first points in sweep order
  double seconds = 0.0;            // the time they took
  bool found = false;              // false: the folder holds no sweep.json
};

// Reads `dir`/sweep.json of an interrupted (or finished) sweep and checks that it is this sweep:
// the same model (fingerprint), test images, criteria, ratios, seeds, scope and effective
// measurement, and that its points are the first ones this sweep measures. Throws UsageError
// naming the first difference, FormatError for a malformed file, IoError.
EarlierSweep read_earlier_sweep(const std::string& dir, const SweepRun& run,
                                const SweepOptions& options);

// True when `dir`/sweep.json records a finished sweep (a new sweep there would replace it).
bool holds_finished_sweep(const std::string& dir);

class SweepReport {
 public:
  // Creates `dir` (when missing) and sweep.csv with its header, then the rows of the `earlier`
  // points (a resumed sweep). Throws IoError.
  SweepReport(std::string dir, SweepRun run, SweepOptions options, EarlierSweep earlier = {});
  // One row of sweep.csv, flushed to disk, and sweep.json rewritten with every point so far.
  void add(const CurvePoint& p);
  // Rewrites sweep.json with `complete` and the seconds of this run added to the earlier ones,
  // and, with `plot` and at least one point, writes the plot; returns the files written besides
  // sweep.csv. Throws IoError, and Error when gnuplot fails.
  std::vector<std::string> finish(bool complete, double seconds, bool plot);
  // Every point, the earlier ones first.
  const std::vector<CurvePoint>& points() const { return points_; }

 private:
  void write_json(bool complete, double seconds) const;
  std::string dir_;
  SweepRun run_;
  SweepOptions options_;
  double earlier_seconds_ = 0.0;
  std::vector<CurvePoint> points_;
  std::unique_ptr<CsvLog> csv_;
};

}  // namespace corelocker
