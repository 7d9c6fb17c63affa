// Region memory as the agent keeps it: sealed memfds a job can map but not resize.
#include "memfd_regions.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace tern::ipc {
namespace {

// Issue 14, finding 5: a job that shrank its region's memfd under the agent made the agent
// (and every other job mapping it) fault on the missing pages. The memfd's size is sealed.
TEST(MemfdRegionsTest, AJobCannotShrinkOrGrowItsRegionNorSealItAgainstTheAgent) {
  MemfdRegions regions;
  const ipc::ObjectId id{1, 7};
  ASSERT_TRUE(regions.Create(id, 64 * 1024));
  const int fd = regions.Fd(id);
  ASSERT_GE(fd, 0);
  // What the job receives is the same file (SCM_RIGHTS); a reopen through /proc too.
  const int job_fd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  ASSERT_GE(job_fd, 0);
  EXPECT_EQ(::ftruncate(job_fd, 4096), -1) << "shrinking must fail";
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::ftruncate(job_fd, 128 * 1024), -1) << "growing must fail";
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::fcntl(job_fd, F_ADD_SEALS, F_SEAL_WRITE), -1) << "no seal may be added";
  EXPECT_EQ(errno, EPERM);
  const int reopened = ::open(("/proc/self/fd/" + std::to_string(job_fd)).c_str(), O_RDWR);
  ASSERT_GE(reopened, 0);
  EXPECT_EQ(::ftruncate(reopened, 0), -1);
  ::close(reopened);
  struct stat info {};
  ASSERT_EQ(::fstat(fd, &info), 0);
  EXPECT_EQ(info.st_size, 64 * 1024);
  // The job's writes through a mapping are what the agent reads, at any offset.
  void* map = ::mmap(nullptr, 64 * 1024, PROT_READ | PROT_WRITE, MAP_SHARED, job_fd, 0);
  ASSERT_NE(map, MAP_FAILED);
  static_cast<char*>(map)[40000] = 'j';
  ::munmap(map, 64 * 1024);
  ::close(job_fd);
  auto read = regions.Read(id, 40000, 3);
  ASSERT_TRUE(read);
  EXPECT_EQ(*read, std::string("j\0\0", 3));
  // Reads stop at the end; writes past it are refused.
  EXPECT_EQ(regions.Read(id, 64 * 1024 - 2, 100)->size(), 2u);
  EXPECT_TRUE(regions.Write(id, 64 * 1024 - 2, "ok"));
  EXPECT_FALSE(regions.Write(id, 64 * 1024 - 1, "no"));
  EXPECT_FALSE(regions.Read(id, 64 * 1024 + 1, 1));
  regions.Destroy(id);
  EXPECT_EQ(regions.Fd(id), -1);
}

}  // namespace
}  // namespace tern::ipc
