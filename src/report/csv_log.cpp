#include "report/csv_log.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/error.h"

namespace corelocker {

CsvLog::CsvLog(const std::string& path, const std::vector<std::string>& header)
    : path_(path), columns_(header.size()) {
  f_ = std::fopen(path.c_str(), "w");
  if (!f_) throw IoError("cannot create '" + path + "': " + std::strerror(errno));
  write_line(header);
}

CsvLog::~CsvLog() {
  if (f_) std::fclose(f_);
}

void CsvLog::append(const std::vector<std::string>& row) {
  if (row.size() != columns_) {
    throw UsageError("CSV '" + path_ + "': row has " + std::to_string(row.size()) +
                     " fields, header has " + std::to_string(columns_));
  }
  write_line(row);
}

void CsvLog::write_line(const std::vector<std::string>& fields) {
  std::string line;
  for (size_t i = 0; i < fields.size(); ++i) {
    if (i) line += ',';
    const std::string& v = fields[i];
    if (v.find_first_of(",\"\n\r") == std::string::npos) {
      line += v;
      continue;
    }
    line += '"';
    for (char c : v) {
      if (c == '\n' || c == '\r') c = ' ';
      if (c == '"') line += '"';
      line += c;
    }
    line += '"';
  }
  line += '\n';
  // One fwrite per row and an immediate flush: the kernel then holds whole rows only.
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0 ||
      ::fsync(::fileno(f_)) != 0) {
    throw IoError("cannot write to '" + path_ + "': " + std::strerror(errno));
  }
}

std::vector<std::vector<std::string>> parse_csv(const std::string& text, const std::string& what) {
  std::vector<std::vector<std::string>> rows;
  size_t pos = 0, line_no = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) {
      throw FormatError(what + ": line " + std::to_string(line_no + 1) +
                        " has no line end (cut off)");
    }
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    std::vector<std::string> fields(1);
    bool quoted = false;
    for (size_t i = 0; i < line.size(); ++i) {
      const char c = line[i];
      if (quoted) {
        if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
          fields.back() += '"';
          ++i;
        } else if (c == '"') {
          quoted = false;
        } else {
          fields.back() += c;
        }
      } else if (c == '"') {
        quoted = true;
      } else if (c == ',') {
        fields.emplace_back();
      } else {
        fields.back() += c;
      }
    }
    if (quoted)
      throw FormatError(what + ": line " + std::to_string(line_no) + " has an unclosed quote");
    if (!rows.empty() && fields.size() != rows.front().size()) {
      throw FormatError(what + ": line " + std::to_string(line_no) + " has " +
                        std::to_string(fields.size()) + " fields, the header has " +
                        std::to_string(rows.front().size()));
    }
    rows.push_back(std::move(fields));
  }
  return rows;
}

}  // namespace corelocker
