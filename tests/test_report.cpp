// Report writers: the row-by-row CSV log and the gnuplot plots.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "report/csv_log.h"
#include "report/gnuplot.h"
#include "temp_dir.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {
namespace {

std::string text_of(const std::string& path) {
  auto b = read_file(path);
  return std::string(b.begin(), b.end());
}

PlotSpec small_plot() {
  PlotSpec spec;
  spec.title = "test \"plot\"";
  spec.x_label = "ratio";
  spec.log_x = true;
  PlotPanel panel;
  panel.title = "top-1";
  panel.y_label = "%";
  panel.series.push_back({"l1", {0.0, 0.001, 0.01, 0.1}, {90, 80, 40, 10}, {}});
  panel.series.push_back({"random", {0.001, 0.01, 0.1}, {90, 89, 85}, {0.5, 1.0, 2.0}});
  panel.levels = {{"chance", 10.0}};
  spec.panels = {panel, panel};
  return spec;
}

TEST(CsvLog, EveryRowIsOnDiskAsSoonAsAppended) {
  testing::TempDir dir;
  const std::string path = dir.file("log.csv");
  CsvLog log(path, {"name", "value"});
  EXPECT_EQ(text_of(path), "name,value\n");
  log.append({"a", "1"});
  // Read while the log is still open: the row must already be complete in the file.
  auto rows = parse_csv(text_of(path), path);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1], (std::vector<std::string>{"a", "1"}));
  log.append({"with, comma", "say \"hi\""});
  rows = parse_csv(text_of(path), path);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[2], (std::vector<std::string>{"with, comma", "say \"hi\""}));
}

TEST(CsvLog, RowWithWrongFieldCountIsRefused) {
  testing::TempDir dir;
  CsvLog log(dir.file("log.csv"), {"a", "b", "c"});
  EXPECT_THROW(log.append({"1", "2"}), UsageError);
  EXPECT_EQ(parse_csv(text_of(dir.file("log.csv")), "log").size(), 1u);  // nothing half-written
}

TEST(CsvLog, UnwritableFolderIsAnIoError) {
  EXPECT_THROW(CsvLog("/nonexistent-folder/x.csv", {"a"}), IoError);
}

// Broken CSV files, one defect each, in the test-gguf manner.
enum class CsvDefect { kCutMidRow, kUnclosedQuote, kMissingField, kExtraField };

TEST(ParseCsv, EachDefectIsRefusedWithItsLine) {
  const std::string good = "a,b\n1,2\n3,4\n";
  ASSERT_EQ(parse_csv(good, "good").size(), 3u);
  for (CsvDefect d : {CsvDefect::kCutMidRow, CsvDefect::kUnclosedQuote, CsvDefect::kMissingField,
                      CsvDefect::kExtraField}) {
    std::string text;
    std::string expect;
    switch (d) {
      case CsvDefect::kCutMidRow:
        text = "a,b\n1,2\n3,";
        expect = "line 3 has no line end";
        break;
      case CsvDefect::kUnclosedQuote:
        text = "a,b\n\"1,2\n";
        expect = "line 2 has an unclosed quote";
        break;
      case CsvDefect::kMissingField:
        text = "a,b\n1,2\n3\n";
        expect = "line 3 has 1 fields";
        break;
      case CsvDefect::kExtraField:
        text = "a,b\n1,2,3\n";
        expect = "line 2 has 3 fields";
        break;
    }
    try {
      parse_csv(text, "sweep.csv");
      ADD_FAILURE() << "defect " << static_cast<int>(d) << " was accepted";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("sweep.csv"), std::string::npos) << e.what();
    }
  }
}

TEST(Gnuplot, ScriptHoldsTheDataAndSkipsRatioZeroOnALogAxis) {
  const std::string s = gnuplot_script(small_plot(), "o.png", "o.svg");
  EXPECT_NE(s.find("$d0 << EOD\n0.001 80 0\n0.01 40 0\n0.1 10 0\nEOD"), std::string::npos) << s;
  EXPECT_NE(s.find("0.1 85 2\n"), std::string::npos);
  EXPECT_NE(s.find("filledcurves"), std::string::npos);  // the random spread
  EXPECT_NE(s.find("set logscale x"), std::string::npos);
  EXPECT_NE(s.find("\"test \\\"plot\\\"\""), std::string::npos);  // quotes escaped
  EXPECT_NE(s.find("set output \"o.png\""), std::string::npos);
  EXPECT_NE(s.find("set output \"o.svg\""), std::string::npos);
}

TEST(Gnuplot, MismatchedSeriesIsRefused) {
  PlotSpec spec = small_plot();
  spec.panels[0].series[0].y.pop_back();
  EXPECT_THROW(gnuplot_script(spec, "a.png", "a.svg"), UsageError);
  spec.panels.clear();
  EXPECT_THROW(gnuplot_script(spec, "a.png", "a.svg"), UsageError);
}

TEST(Gnuplot, RendersPngAndSvg) {
  testing::TempDir dir;
  render_plot(small_plot(), dir.file("p.png"), dir.file("p.svg"), dir.file("p.gp"));
  auto png = read_file(dir.file("p.png"));
  ASSERT_GT(png.size(), 1000u);
  EXPECT_EQ(std::string(png.begin() + 1, png.begin() + 4), "PNG");
  EXPECT_NE(text_of(dir.file("p.svg")).find("<svg"), std::string::npos);
  // The kept script redraws the same files: it names them, not the temporary files.
  const std::string gp = text_of(dir.file("p.gp"));
  EXPECT_NE(gp.find("set output \"" + dir.file("p.png") + "\""), std::string::npos) << gp;
  EXPECT_EQ(gp.find(".tmp-"), std::string::npos);
}

TEST(Gnuplot, MissingGnuplotIsAClearErrorAndWritesNothing) {
  testing::TempDir dir;
  const std::string old_path = std::getenv("PATH") ? std::getenv("PATH") : "";
  ::setenv("PATH", dir.path().c_str(), 1);  // an empty folder: no gnuplot on PATH
  try {
    render_plot(small_plot(), dir.file("p.png"), dir.file("p.svg"));
    ADD_FAILURE() << "rendered without gnuplot";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("gnuplot-nox"), std::string::npos) << e.what();
  }
  ::setenv("PATH", old_path.c_str(), 1);
  EXPECT_FALSE(file_exists(dir.file("p.png")));
  EXPECT_FALSE(file_exists(dir.file("p.svg")));
}

}  // namespace
}  // namespace corelocker
