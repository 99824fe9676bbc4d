// Line charts drawn by gnuplot (Debian package gnuplot-nox): a self-contained gnuplot script
// with the data inline, and a runner that renders it to PNG and SVG atomically. Used by the CLI
// and other report writers; the library proper never starts processes.
#pragma once

#include <string>
#include <vector>

namespace corelocker {

struct PlotSeries {
  std::string name;
  std::vector<double> x, y;
  std::vector<double> spread;  // optional: +-spread drawn as a shaded band around the line
};

struct PlotPanel {
  std::string title;
  std::string y_label;
  std::vector<PlotSeries> series;
  std::vector<std::pair<std::string, double>> levels;  // labelled horizontal reference lines
};

struct PlotSpec {
  std::string title;
  std::string x_label;
  bool log_x = false;
  double y_min = 0.0, y_max = 100.0;
  std::vector<PlotPanel> panels;  // stacked vertically
};

// The gnuplot commands that draw `spec` to `png_path` and `svg_path` (data inline, so the
// script can be kept beside the plots and rerun). Throws UsageError for an empty spec or series
// whose x, y and spread lengths differ.
std::string gnuplot_script(const PlotSpec& spec, const std::string& png_path,
                           const std::string& svg_path);

// Draws `spec` into `png_path` and `svg_path` with the gnuplot on PATH; each file appears only
// when complete. When `script_path` is not empty, the script is kept there. Throws IoError when
// gnuplot is missing (naming the Debian package) or fails (with its message).
void render_plot(const PlotSpec& spec, const std::string& png_path, const std::string& svg_path,
                 const std::string& script_path = "");

}  // namespace corelocker
