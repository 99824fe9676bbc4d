#include "control/sweep_report.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>

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

CurvePoint sweep_point_from_json(const nlohmann::json& j) {
  try {
    CurvePoint p;
    p.criterion = parse_criterion(j.at("criterion").get<std::string>());
    p.scope = parse_scope(j.at("scope").get<std::string>());
    p.ratio = j.at("ratio").get<double>();
    p.units = j.at("units").get<int64_t>();
    p.candidates = j.at("candidates").get<int64_t>();
    p.param_fraction = j.at("param_fraction").get<double>();
    p.top1 = j.at("top1").get<double>();
    p.top1_sd = j.at("top1_sd").get<double>();
    p.top3 = j.at("top3").get<double>();
    p.top3_sd = j.at("top3_sd").get<double>();
    p.top1_runs = j.at("top1_runs").get<std::vector<double>>();
    p.top3_runs = j.at("top3_runs").get<std::vector<double>>();
    if (!j.at("top1_reestimated").is_null())
      p.top1_reestimated = j.at("top1_reestimated").get<double>();
    if (!j.at("top1_effective").is_null()) p.top1_effective = j.at("top1_effective").get<double>();
    p.top1_effective_runs = j.at("top1_effective_runs").get<std::vector<double>>();
    p.images = j.at("images").get<int64_t>();
    p.seconds = j.at("seconds").get<double>();
    return p;
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(std::string("sweep point: ") + e.what());
  }
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

namespace {

// sweep.json without its points.
nlohmann::json run_json(const SweepRun& run, const SweepOptions& o) {
  nlohmann::json criteria = nlohmann::json::array();
  for (Criterion k : o.criteria) criteria.push_back(to_string(k));
  return {{"model", run.model},
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
          {"criteria", criteria}};
}

// sweep.json as JSON (a discarded value when it does not parse), or nullopt when there is none.
std::optional<nlohmann::json> read_record(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  const std::vector<uint8_t> bytes = read_file(path);
  return nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, false);
}

}  // namespace

EarlierSweep read_earlier_sweep(const std::string& dir, const SweepRun& run,
                                const SweepOptions& options) {
  const std::string path = dir + "/sweep.json";
  EarlierSweep out;
  const std::optional<nlohmann::json> record = read_record(path);
  if (!record) return out;
  const nlohmann::json& j = *record;
  if (!j.is_object() || !j.contains("points") || !j["points"].is_array())
    throw FormatError("'" + path + "' is not a sweep's record (no list of points)");
  const nlohmann::json want = run_json(run, options);
  for (const char* key :
       {"fingerprint", "dataset", "test_images", "criteria", "ratios", "seeds", "first_seed",
        "scope", "random_units", "include_io", "effective", "reestimate_images"}) {
    if (!j.contains(key) || j[key] != want[key]) {
      throw UsageError("cannot resume the sweep in '" + dir + "': its " + key + " " +
                       (j.contains(key) ? j[key].dump() : std::string("(missing)")) +
                       " differ(s) from this run's " + want[key].dump() +
                       " (another --out-dir starts a new sweep)");
    }
  }
  size_t i = 0;
  for (const auto& jp : j["points"]) {
    CurvePoint p = sweep_point_from_json(jp);
    const double ratio =
        options.ratios[std::min(i / options.criteria.size(), options.ratios.size() - 1)];
    const Criterion c = options.criteria[i % options.criteria.size()];
    if (i >= options.ratios.size() * options.criteria.size() || p.ratio != ratio ||
        p.criterion != c) {
      throw FormatError("'" + path + "': point " + std::to_string(i + 1) +
                        " is not the one the sweep measures there");
    }
    out.points.push_back(std::move(p));
    ++i;
  }
  out.seconds = j.value("seconds", 0.0);
  out.found = true;
  return out;
}

bool holds_finished_sweep(const std::string& dir) {
  const std::optional<nlohmann::json> j = read_record(dir + "/sweep.json");
  return j && j->is_object() && j->value("complete", false) == true;
}

SweepReport::SweepReport(std::string dir, SweepRun run, SweepOptions options, EarlierSweep earlier)
    : dir_(std::move(dir)),
      run_(std::move(run)),
      options_(std::move(options)),
      earlier_seconds_(earlier.seconds) {
  make_dir(dir_);
  csv_ = std::make_unique<CsvLog>(
      dir_ + "/sweep.csv",
      std::vector<std::string>{"criterion", "scope", "ratio", "units", "candidates",
                               "param_fraction", "seeds", "top1", "top1_sd", "top3", "top3_sd",
                               "images", "seconds", "top1_reestimated", "top1_effective"});
  for (const auto& p : earlier.points) add(p);
}

void SweepReport::add(const CurvePoint& p) {
  csv_->append({to_string(p.criterion), to_string(p.scope), fixed(p.ratio, 8),
                std::to_string(p.units), std::to_string(p.candidates), fixed(p.param_fraction, 8),
                std::to_string(p.top1_runs.size()), fixed(p.top1, 4), fixed(p.top1_sd, 4),
                fixed(p.top3, 4), fixed(p.top3_sd, 4), std::to_string(p.images),
                fixed(p.seconds, 3), p.top1_reestimated ? fixed(*p.top1_reestimated, 4) : "",
                p.top1_effective ? fixed(*p.top1_effective, 4) : ""});
  points_.push_back(p);
  write_json(false, earlier_seconds_);
}

void SweepReport::write_json(bool complete, double seconds) const {
  nlohmann::json j = run_json(run_, options_);
  j["complete"] = complete;
  j["seconds"] = seconds;
  nlohmann::json pts = nlohmann::json::array();
  for (const auto& p : points_) pts.push_back(sweep_point_json(p));
  j["points"] = pts;
  write_file_atomic(dir_ + "/sweep.json", j.dump(2) + "\n");
}

std::vector<std::string> SweepReport::finish(bool complete, double seconds, bool plot) {
  write_json(complete, earlier_seconds_ + seconds);
  std::vector<std::string> written = {dir_ + "/sweep.json"};
  if (plot && !points_.empty()) {
    render_plot(sweep_plot(run_, options_, points_), dir_ + "/sweep.png", dir_ + "/sweep.svg",
                dir_ + "/sweep.gp");
    for (const char* ext : {".png", ".svg", ".gp"}) written.push_back(dir_ + "/sweep" + ext);
  }
  return written;
}

}  // namespace corelocker
