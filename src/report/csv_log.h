// A CSV file written row by row: the header on open, each row appended, flushed and synced as
// soon as it is known, so that a run stopped at any moment (Ctrl-C, kill, power loss) leaves a
// file whose every line is a complete row. This is the one deliberate exception to "all writes
// are atomic": a partial result is the point.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

namespace corelocker {

class CsvLog {
 public:
  // Creates (truncates) `path` and writes the header row. Throws IoError.
  CsvLog(const std::string& path, const std::vector<std::string>& header);
  ~CsvLog();
  CsvLog(const CsvLog&) = delete;
  CsvLog& operator=(const CsvLog&) = delete;

  // Appends one row (as many fields as the header), then flushes and fsyncs. Fields holding a
  // comma, quote or newline are quoted. Throws UsageError (field count) / IoError.
  void append(const std::vector<std::string>& row);
  const std::string& path() const { return path_; }

 private:
  void write_line(const std::vector<std::string>& fields);
  std::string path_;
  size_t columns_;
  std::FILE* f_ = nullptr;
};

// Parses CSV text written by CsvLog (quoted fields allowed; no newlines inside fields).
// Throws FormatError naming the line whose field count differs from the header's.
std::vector<std::vector<std::string>> parse_csv(const std::string& text, const std::string& what);

}  // namespace corelocker
