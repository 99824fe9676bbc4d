#include <gtest/gtest.h>
#include <dirent.h>

#include "temp_dir.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {

namespace {
int count_entries(const std::string& dir) {
  int n = 0;
  DIR* d = opendir(dir.c_str());
  while (auto* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}
}  // namespace

TEST(AtomicFile, WritesAndReadsBack) {
  testing::TempDir dir;
  write_file_atomic(dir.file("a.bin"), std::vector<uint8_t>{1, 2, 3});
  EXPECT_EQ(read_file(dir.file("a.bin")), (std::vector<uint8_t>{1, 2, 3}));
  write_file_atomic(dir.file("a.bin"), std::string("xy"));
  EXPECT_EQ(read_file(dir.file("a.bin")).size(), 2u);
  EXPECT_EQ(count_entries(dir.path()), 1);  // no temporary left behind
}

TEST(AtomicFile, UncommittedPendingFileLeavesNothing) {
  testing::TempDir dir;
  {
    PendingFile p(dir.file("b.bin"));
    EXPECT_TRUE(file_exists(p.temp_path()));
  }
  EXPECT_EQ(count_entries(dir.path()), 0);
}

TEST(AtomicFile, ErrorsNameThePath) {
  try {
    read_file("/nonexistent/corelocker/x.bin");
    FAIL();
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/corelocker/x.bin"), std::string::npos);
  }
  EXPECT_THROW(write_file_atomic("/nonexistent/corelocker/x.bin", std::string("x")), IoError);
}

}  // namespace corelocker
