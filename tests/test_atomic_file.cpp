#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <string>
#include <vector>

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

// Pages of `path` in the page cache (mincore of a mapping, which reads nothing in).
size_t cached_pages(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  struct stat st {};
  ::fstat(fd, &st);
  const size_t size = static_cast<size_t>(st.st_size),
               page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  std::vector<unsigned char> in((size + page - 1) / page);
  ::mincore(m, size, in.data());
  ::munmap(m, size);
  ::close(fd);
  size_t n = 0;
  for (unsigned char c : in) n += c & 1;
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

// A replacement frees the old file's cached pages before it is written (so that it reuses them),
// without touching the old file: abandoned, the old file is whole.
TEST(AtomicFile, ReplacementDropsTheOldFilesCacheButKeepsTheFile) {
  testing::TempDir dir;
  struct statfs fs {};
  if (::statfs(dir.path().c_str(), &fs) == 0 && fs.f_type == 0x01021994) {
    GTEST_SKIP() << "tmpfs pages cannot be dropped";
  }
  std::vector<uint8_t> old(4 << 20);
  for (size_t i = 0; i < old.size(); ++i) old[i] = static_cast<uint8_t>(i * 7 + 3);
  write_file_atomic(dir.file("m.bin"), old);  // flushed: its pages are clean
  ASSERT_EQ(read_file(dir.file("m.bin")), old);
  ASSERT_GT(cached_pages(dir.file("m.bin")), 512u);
  {
    PendingFile p(dir.file("m.bin"));
    EXPECT_EQ(cached_pages(dir.file("m.bin")), 0u);
    write_file_atomic(p.temp_path(), std::string("new"));
  }  // not committed
  EXPECT_EQ(read_file(dir.file("m.bin")), old);
  EXPECT_EQ(count_entries(dir.path()), 1);
}

TEST(AtomicFile, SameFileSeesThroughSpellingsAndLinks) {
  testing::TempDir dir;
  ASSERT_EQ(::mkdir(dir.file("sub").c_str(), 0755), 0);
  const std::string d = dir.path();
  EXPECT_TRUE(same_file(d + "/x", d + "/./x"));  // neither exists yet: same folder entry
  EXPECT_TRUE(same_file(d + "/x", d + "/sub/../x"));
  EXPECT_FALSE(same_file(d + "/x", d + "/y"));
  EXPECT_FALSE(same_file(d + "/x", d + "/sub/x"));
  write_file_atomic(d + "/x", std::string("x"));
  ASSERT_EQ(::symlink((d + "/x").c_str(), (d + "/sym").c_str()), 0);
  ASSERT_EQ(::link((d + "/x").c_str(), (d + "/hard").c_str()), 0);
  EXPECT_TRUE(same_file(d + "/sym", d + "/x"));
  EXPECT_TRUE(same_file(d + "/hard", d + "/x"));
  write_file_atomic(d + "/y", std::string("x"));
  EXPECT_FALSE(same_file(d + "/x", d + "/y"));  // equal bytes, other files
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
