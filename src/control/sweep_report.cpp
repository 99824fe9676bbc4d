#include "control/sweep_report.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {
namespace {

std::string fixed(double v, int digits) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

std::string pct(double v) { return fixed(v, 2); }

void make_dir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0777) != 0 && errno != EEXIST) {
    throw IoError("cannot create folder '" + dir + "': " + std::strerror(errno));
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw IoError("'" + dir + "' is not a folder");
}

nlohmann::json optional_json(const std::optional<double>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json();
}

}  // namespace

nlohmann::json sweep_point_json(const CurvePoint& p) {
  return {{"criterion", to_string(p.criterion)},
          {"top1_reestimated", optional_json(p.top1_reestimated)},
          {"top1_effective", optional_json(p.top1_effective)},
          {"top1_effective_runs", p.top1_effective_runs},
          {"scope", to_string(p.scope)},
          {"ratio", p.ratio},
          {"units", p.units},
          {"candidates", p.candidates},
          {"param_fraction", p.param_fraction},
          {"seeds", p.top1_runs.size()},
          {"top1", p.top1},
          {"top1_sd", p.top1_sd},
          {"top3", p.top3},
          {"top3_sd", p.top3_sd},
          {"top1_runs", p.top1_runs},
          {"top3_runs", p.top3_runs},
          {"images", p.images},
          {"seconds", p.seconds}};
}

PlotSpec sweep_plot(const SweepRun& run, const SweepOptions& options,
                    const std::vector<CurvePoint>& points) {
  PlotSpec spec;
  spec.title = "corelocker sweep: " + run.model;
  spec.x_label = "extraction ratio (fraction of units)";
  spec.log_x = true;
  const EvalResult& original = run.unlocked;
  for (int k = 0; k < 2; ++k) {
    PlotPanel panel;
    panel.title = k == 0 ? "top-1 accuracy" : "top-3 accuracy";
    panel.y_label = k == 0 ? "top-1 (%)" : "top-3 (%)";
    for (Criterion c : options.criteria) {
      PlotSeries s;
      s.name = c == Criterion::kRandom ? "random (" + std::to_string(options.seeds) + " seeds)"
                                       : to_string(c);
      for (const auto& p : points) {
        if (p.criterion != c) continue;
        s.x.push_back(p.ratio);
        s.y.push_back(k == 0 ? p.top1 : p.top3);
        if (c == Criterion::kRandom) s.spread.push_back(k == 0 ? p.top1_sd : p.top3_sd);
      }
      panel.series.push_back(s);
      if (k == 0 && c != Criterion::kRandom) {
        PlotSeries e;
        e.name = std::string(to_string(c)) + ", effective";
        for (const auto& p : points) {
          if (p.criterion != c || !p.top1_effective) continue;
          e.x.push_back(p.ratio);
          e.y.push_back(*p.top1_effective);
        }
        if (!e.x.empty()) panel.series.push_back(e);
      }
    }
    const double chance = k == 0 ? run.chance : std::min(100.0, 3 * run.chance);
    panel.levels = {{"unlocked (" + pct(k == 0 ? original.top1 : original.top3) + "%)",
                     k == 0 ? original.top1 : original.top3},
                    {"chance (" + pct(chance) + "%)", chance}};
    spec.panels.push_back(panel);
  }
  return spec;
}

SweepReport::SweepReport(std::string dir) : dir_(std::move(dir)) {
  make_dir(dir_);
  csv_ = std::make_unique<CsvLog>(
      dir_ + "/sweep.csv",
      std::vector<std::string>{"criterion", "scope", "ratio", "units", "candidates",
                               "param_fraction", "seeds", "top1", "top1_sd", "top3", "top3_sd",
                               "images", "seconds", "top1_reestimated", "top1_effective"});
}

void SweepReport::add(const CurvePoint& p) {
  csv_->append({to_string(p.criterion), to_string(p.scope), fixed(p.ratio, 8),
                std::to_string(p.units), std::to_string(p.candidates), fixed(p.param_fraction, 8),
                std::to_string(p.top1_runs.size()), fixed(p.top1, 4), fixed(p.top1_sd, 4),
                fixed(p.top3, 4), fixed(p.top3_sd, 4), std::to_string(p.images),
                fixed(p.seconds, 3), p.top1_reestimated ? fixed(*p.top1_reestimated, 4) : "",
                p.top1_effective ? fixed(*p.top1_effective, 4) : ""});
}

std::vector<std::string> SweepReport::finish(const SweepRun& run, const SweepOptions& o,
                                             const std::vector<CurvePoint>& points, bool complete,
                                             double seconds, bool plot) {
  nlohmann::json j = {{"model", run.model},
                      {"fingerprint", to_hex(run.fingerprint)},
                      {"dataset", run.dataset},
                      {"test_images", run.test_images},
                      {"unlocked", {{"top1", run.unlocked.top1}, {"top3", run.unlocked.top3}}},
                      {"chance", run.chance},
                      {"seeds", o.seeds},
                      {"first_seed", o.first_seed},
                      {"include_io", o.include_io},
                      {"effective", o.effective.has_value()},
                      {"reestimate_images", run.reestimate_images},
                      {"scope", run.scope},
                      {"random_units", run.random_units},
                      {"ratios", o.ratios},
                      {"complete", complete},
                      {"seconds", seconds}};
  nlohmann::json criteria = nlohmann::json::array();
  for (Criterion k : o.criteria) criteria.push_back(to_string(k));
  j["criteria"] = criteria;
  nlohmann::json pts = nlohmann::json::array();
  for (const auto& p : points) pts.push_back(sweep_point_json(p));
  j["points"] = pts;
  std::vector<std::string> written = {dir_ + "/sweep.json"};
  write_file_atomic(written.front(), j.dump(2) + "\n");
  if (plot && !points.empty()) {
    render_plot(sweep_plot(run, o, points), dir_ + "/sweep.png", dir_ + "/sweep.svg",
                dir_ + "/sweep.gp");
    for (const char* ext : {".png", ".svg", ".gp"}) written.push_back(dir_ + "/sweep" + ext);
  }
  return written;
}

}  // namespace corelocker
