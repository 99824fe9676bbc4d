#include "report/gnuplot.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "util/atomic_file.h"
#include "util/error.h"

extern char** environ;

namespace corelocker {
namespace {

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string num(double v) {
  char b[48];
  std::snprintf(b, sizeof b, "%.9g", v);
  return b;
}

void check(const PlotSpec& spec) {
  if (spec.panels.empty()) throw UsageError("plot '" + spec.title + "': no panels");
  for (const auto& p : spec.panels) {
    for (const auto& s : p.series) {
      if (s.x.size() != s.y.size() || (!s.spread.empty() && s.spread.size() != s.x.size())) {
        throw UsageError("plot series '" + s.name + "': " + std::to_string(s.x.size()) +
                         " x values, " + std::to_string(s.y.size()) + " y values, " +
                         std::to_string(s.spread.size()) + " spreads");
      }
    }
  }
}

// Runs `gnuplot script`, capturing its stderr into `err`; returns the exit status.
int run_gnuplot(const std::string& script, std::string* err) {
  const std::string err_path = script + ".stderr";
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  std::string prog = "gnuplot";
  std::vector<char*> argv = {prog.data(), const_cast<char*>(script.c_str()), nullptr};
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, "gnuplot", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    std::remove(err_path.c_str());
    if (rc == ENOENT) {
      throw IoError(
          "gnuplot is not installed (not found on PATH); install the Debian package gnuplot-nox "
          "(scripts/setup.sh does), or leave out the plot");
    }
    throw IoError(std::string("cannot start gnuplot: ") + std::strerror(rc));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  try {
    auto bytes = read_file(err_path);
    err->assign(bytes.begin(), bytes.end());
  } catch (const IoError&) {
  }
  std::remove(err_path.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status)
                           : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

}  // namespace

std::string gnuplot_script(const PlotSpec& spec, const std::string& png_path,
                           const std::string& svg_path) {
  check(spec);
  std::string s = "# Written by corelocker; rerun with: gnuplot THIS_FILE\n";
  // data: one inline block per series (gnuplot 5 datablocks)
  int block = 0;
  for (const auto& p : spec.panels) {
    for (const auto& series : p.series) {
      s += "$d" + std::to_string(block++) + " << EOD\n";
      for (size_t i = 0; i < series.x.size(); ++i) {
        if (!std::isfinite(series.x[i]) || !std::isfinite(series.y[i])) continue;
        if (spec.log_x && !(series.x[i] > 0.0)) continue;  // ratio 0 has no place on a log axis
        const double sd = series.spread.empty() ? 0.0 : series.spread[i];
        s += num(series.x[i]) + " " + num(series.y[i]) + " " + num(sd) + "\n";
      }
      s += "EOD\n";
    }
  }
  const int rows = static_cast<int>(spec.panels.size());
  auto draw = [&](const std::string& terminal, const std::string& out) {
    std::string d = terminal + "\nset output " + quote(out) + "\n";
    d += "set multiplot layout " + std::to_string(rows) + ",1 title " + quote(spec.title) + "\n";
    int b = 0;
    for (const auto& p : spec.panels) {
      d += "set title " + quote(p.title) + "\nset ylabel " + quote(p.y_label) + "\n";
      std::string plot;
      int colour = 1;
      for (const auto& series : p.series) {
        const std::string data = "$d" + std::to_string(b++);
        const std::string lc = " lc " + std::to_string(colour++);
        if (!plot.empty()) plot += ", \\\n  ";
        if (!series.spread.empty()) {
          plot += data + " using 1:($2-$3):($2+$3) with filledcurves" + lc +
                  " fs transparent solid 0.2 noborder notitle, \\\n  ";
        }
        plot += data + " using 1:2 with linespoints" + lc + " pt 7 ps 0.6 lw 2 title " +
                quote(series.spread.empty() ? series.name : series.name + " (mean +- sd)");
      }
      for (const auto& [label, y] : p.levels) {
        plot += ", \\\n  " + num(y) + " with lines dt 2 lc rgb \"gray40\" title " + quote(label);
      }
      d += "plot " + plot + "\n";
    }
    d += "unset multiplot\nset output\n";
    return d;
  };
  s += "set xlabel " + quote(spec.x_label) + "\n";
  if (spec.log_x) s += "set logscale x\nset format x \"%g\"\n";
  s += "set yrange [" + num(spec.y_min) + ":" + num(spec.y_max) + "]\n";
  s += "set grid\nset key outside right center\n";
  const std::string height = std::to_string(380 * rows);
  s += draw("set terminal pngcairo size 1000," + height + " font \"sans,10\"", png_path);
  s += draw("set terminal svg size 1000," + height + " dynamic font \"sans,10\"", svg_path);
  return s;
}

void render_plot(const PlotSpec& spec, const std::string& png_path, const std::string& svg_path,
                 const std::string& script_path) {
  PendingFile png(png_path), svg(svg_path), script(png_path + ".gp");
  // The script gnuplot runs draws into the temporary files; the one kept names the real ones.
  write_file_atomic(script.temp_path(), gnuplot_script(spec, png.temp_path(), svg.temp_path()));
  std::string err;
  const int rc = run_gnuplot(script.temp_path(), &err);
  if (rc != 0) {
    throw IoError("gnuplot failed (exit " + std::to_string(rc) + ") drawing '" + png_path +
                  "': " + (err.empty() ? std::string("no message") : err.substr(0, 2000)));
  }
  if (!file_exists(png.temp_path()) || !file_exists(svg.temp_path())) {
    throw IoError("gnuplot exited 0 but did not write '" + png_path + "' and '" + svg_path +
                  "': " + err);
  }
  png.commit();
  svg.commit();
  if (!script_path.empty())
    write_file_atomic(script_path, gnuplot_script(spec, png_path, svg_path));
}

}  // namespace corelocker
