// Job files are opened as root in a directory the job's user controls (issue 14, items 2, 3).
#include "tern/jobs/job_file.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace tern::jobs {
namespace {
namespace fs = std::filesystem;

class JobFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("tern-job-file-" + std::to_string(getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_ / "job" / "sub");
    std::ofstream(root_ / "secret") << "root only";
    std::ofstream(root_ / "job" / "stdout") << "hello";
  }
  void TearDown() override { fs::remove_all(root_); }
  std::string Job() const { return (root_ / "job").string(); }

  fs::path root_;
};

TEST_F(JobFileTest, ReadsARegularFileAndAMissingOneIsEmpty) {
  auto text = ReadJobFile(Job(), "stdout", 100);
  ASSERT_TRUE(text) << text.error().message;
  EXPECT_EQ(*text, "hello");
  auto missing = OpenJobFile(Job(), "stderr", O_RDONLY);
  ASSERT_TRUE(missing) << missing.error().message;
  EXPECT_FALSE(missing->valid());
  EXPECT_EQ(ReadJobFile(Job(), "stderr", 100).value(), "");
  EXPECT_FALSE(ReadJobFile(Job(), "stdout", 4)) << "larger than the bound";
  std::uint64_t size = 0;
  auto fd = OpenJobFile(Job(), "stdout", O_RDONLY);
  ASSERT_TRUE(fd && fd->valid());
  EXPECT_EQ(ReadRange(fd->get(), 1, 3, size).value(), "ell");
  EXPECT_EQ(size, 5u);
  EXPECT_EQ(ReadRange(fd->get(), 9, 3, size).value(), "");
}

TEST_F(JobFileTest, NeverFollowsASymlink) {
  fs::remove(root_ / "job" / "stdout");
  fs::create_symlink(root_ / "secret", root_ / "job" / "stdout");
  auto text = ReadJobFile(Job(), "stdout", 100);
  ASSERT_FALSE(text) << "read through a symlink: " << *text;
  EXPECT_NE(text.error().message.find("stdout"), std::string::npos) << text.error().message;
  // A symlinked directory on the way, and a relative link climbing out, fare no better.
  fs::remove_all(root_ / "job" / "sub");
  fs::create_directory_symlink(root_, root_ / "job" / "sub");
  EXPECT_FALSE(ReadJobFile(Job(), "sub/secret", 100));
  fs::create_symlink("../secret", root_ / "job" / "up");
  EXPECT_FALSE(ReadJobFile(Job(), "up", 100));
  EXPECT_FALSE(ReadJobFile(Job(), "../secret", 100));
  // Creating through a dangling symlink must not create its target either.
  fs::create_symlink(root_ / "created", root_ / "job" / "stderr");
  EXPECT_FALSE(OpenJobFile(Job(), "stderr", O_WRONLY | O_CREAT | O_APPEND, 0640));
  EXPECT_FALSE(fs::exists(root_ / "created"));
}

TEST_F(JobFileTest, AFifoIsRefusedWithoutBlocking) {
  ASSERT_EQ(::mkfifo((root_ / "job" / "status.json").c_str(), 0666), 0);
  // Blocking here would hang the test: the fix opens with O_NONBLOCK and checks the type.
  auto text = ReadJobFile(Job(), "status.json", 4096);
  ASSERT_FALSE(text);
  EXPECT_NE(text.error().message.find("not a regular file"), std::string::npos)
      << text.error().message;
  EXPECT_FALSE(OpenJobFile(Job(), "status.json", O_WRONLY | O_CREAT | O_APPEND, 0640));
  EXPECT_FALSE(OpenJobFile(Job(), "sub", O_RDONLY)) << "a directory is not a job file";
}

}  // namespace
}  // namespace tern::jobs
