// Whole-file reads and atomic writes: output goes to a temporary file in the target's folder and
// is renamed over the target only when complete, so no reader ever sees a half-written file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace corelocker {

// Reads a whole file. Throws IoError naming the path and the OS error.
std::vector<uint8_t> read_file(const std::string& path);

// Writes `bytes` to `path` atomically (temp file, fsync, rename). Throws IoError.
void write_file_atomic(const std::string& path, const std::vector<uint8_t>& bytes);
void write_file_atomic(const std::string& path, const std::string& bytes);

// A temporary sibling of `path` that becomes `path` on commit() and is removed otherwise.
// For writers that stream (LibTorch archives write to a filename).
class PendingFile {
 public:
  explicit PendingFile(std::string path);
  ~PendingFile();
  PendingFile(const PendingFile&) = delete;
  PendingFile& operator=(const PendingFile&) = delete;

  // Path of the temporary file to write to.
  const std::string& temp_path() const { return temp_; }
  // fsyncs the temporary file and renames it over the target. Throws IoError.
  void commit();

 private:
  std::string path_;
  std::string temp_;
  bool committed_ = false;
};

// True when `a` and `b` name the same file: the same folder entry once the folders are resolved
// ("k.clk", "./k.clk" and "d/../k.clk" are one; a rename onto either replaces the same entry), or
// two names (links) of one existing file.
bool same_file(const std::string& a, const std::string& b);

// True when `path` names an existing file.
bool file_exists(const std::string& path);

}  // namespace corelocker
