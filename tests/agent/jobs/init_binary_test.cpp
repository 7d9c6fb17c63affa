// Where tern-init runs from: a checkout other users cannot reach (/root is 0700) must not keep
// their jobs from starting. Needs root (owners and modes of real files).
#include "tern/jobs/init_binary.hpp"

#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tern/jobs/job_supervisor.hpp"

namespace tern::jobs {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string ReadFile(const fs::path& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

class InitBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "these tests set owners and modes of files: run them as root "
                                "(deploy/test does)";
    base_ = fs::temp_directory_path() /
            ("tern-init-" + std::to_string(getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(base_);
    fs::create_directories(base_ / "private" / "bin");
    fs::create_directories(base_ / "state");
    ::chmod(base_.c_str(), 0755);
    ::chmod((base_ / "state").c_str(), 0755);
    // A checkout under /root: the directory above the binary is 0700.
    ::chmod((base_ / "private").c_str(), 0700);
    ::chmod((base_ / "private" / "bin").c_str(), 0755);
    private_init_ = base_ / "private" / "bin" / "tern-init";
    fs::copy_file(TERN_INIT_PATH, private_init_);
    ::chmod(private_init_.c_str(), 0755);
  }
  void TearDown() override { fs::remove_all(base_); }

  fs::path base_;
  fs::path private_init_;
};

TEST_F(InitBinaryTest, AnInitEveryUserCanRunIsUsedAsItIs) {
  const fs::path open_init = base_ / "tern-init";
  fs::copy_file(TERN_INIT_PATH, open_init);
  ::chmod(open_init.c_str(), 0755);
  EXPECT_EQ(WhyOthersCannotRun(open_init), "");
  auto placed = PlaceInit(open_init, (base_ / "state").string());
  ASSERT_TRUE(placed) << placed.error().message;
  EXPECT_EQ(placed->path, open_init.string());
  EXPECT_FALSE(placed->copied);
  EXPECT_TRUE(placed->others_can_run);
  EXPECT_FALSE(fs::exists(base_ / "state" / "libexec"));
}

TEST_F(InitBinaryTest, AnInitBehindAPrivateDirectoryIsCopiedIntoTheStateDir) {
  const std::string why = WhyOthersCannotRun(private_init_);
  EXPECT_NE(why.find((base_ / "private").string() + " is mode 0700"), std::string::npos) << why;

  auto placed = PlaceInit(private_init_, (base_ / "state").string());
  ASSERT_TRUE(placed) << placed.error().message;
  EXPECT_TRUE(placed->copied);
  EXPECT_TRUE(placed->others_can_run) << placed->problem;
  EXPECT_EQ(placed->path, (base_ / "state" / "libexec" / "tern-init").string());
  EXPECT_NE(placed->why_copied.find("0700"), std::string::npos) << placed->why_copied;
  struct stat copy {};
  struct stat source {};
  ASSERT_EQ(::stat(placed->path.c_str(), &copy), 0);
  ASSERT_EQ(::stat(private_init_.c_str(), &source), 0);
  EXPECT_EQ(copy.st_uid, 0u);
  EXPECT_EQ(copy.st_mode & 07777, 0755u);
  EXPECT_EQ(copy.st_size, source.st_size);
  // Same bytes and time on every node: a migrated job finds "its" executable again.
  EXPECT_EQ(copy.st_mtim.tv_sec, source.st_mtim.tv_sec);
  EXPECT_EQ(ReadFile(placed->path), ReadFile(private_init_));

  // An agent restart leaves an identical copy alone (running jobs may have it mapped).
  auto again = PlaceInit(private_init_, (base_ / "state").string());
  ASSERT_TRUE(again);
  struct stat copy_again {};
  ASSERT_EQ(::stat(again->path.c_str(), &copy_again), 0);
  EXPECT_EQ(copy_again.st_ino, copy.st_ino);
}

TEST_F(InitBinaryTest, AChangedInitReplacesTheCopy) {
  auto placed = PlaceInit(private_init_, (base_ / "state").string());
  ASSERT_TRUE(placed);
  struct stat before {};
  ASSERT_EQ(::stat(placed->path.c_str(), &before), 0);
  {
    std::ofstream grow(private_init_, std::ios::app);
    grow << "another build";
  }
  auto replaced = PlaceInit(private_init_, (base_ / "state").string());
  ASSERT_TRUE(replaced);
  struct stat after {};
  ASSERT_EQ(::stat(replaced->path.c_str(), &after), 0);
  EXPECT_NE(after.st_ino, before.st_ino);
  EXPECT_EQ(ReadFile(replaced->path), ReadFile(private_init_));
}

TEST_F(InitBinaryTest, AnInitOthersCanWriteIsNotRunAsIs) {
  const fs::path writable = base_ / "tern-init";
  fs::copy_file(TERN_INIT_PATH, writable);
  ::chmod(writable.c_str(), 0777);
  EXPECT_NE(WhyOthersCannotRun(writable).find("can be written by users other than root"),
            std::string::npos);
  auto placed = PlaceInit(writable, (base_ / "state").string());
  ASSERT_TRUE(placed);
  EXPECT_TRUE(placed->copied);
}

TEST_F(InitBinaryTest, AMissingInitIsAClearError) {
  auto placed = PlaceInit((base_ / "nowhere" / "tern-init").string(), (base_ / "state").string());
  ASSERT_FALSE(placed);
  EXPECT_NE(placed.error().message.find("tern-init not found at " + (base_ / "nowhere").string()),
            std::string::npos)
      << placed.error().message;
}

// The case the issue found: a checkout under /root; the supervisor starts other users' jobs.
TEST_F(InitBinaryTest, AJobOfAnotherUserStartsFromAPrivateCheckout) {
  passwd* nobody = getpwnam("nobody");
  ASSERT_NE(nobody, nullptr) << "this machine has no user 'nobody'";
  boost::asio::io_context io;
  std::map<std::string, JobRecord> last;
  SupervisorOptions options{(base_ / "state").string(), "", "testnode", private_init_.string(),
                            300ms};
  JobSupervisor supervisor(io, options, [&](const JobRecord& job) { last[job.id] = job; });
  ASSERT_TRUE(supervisor.init());
  EXPECT_TRUE(supervisor.init()->copied);

  SubmitRequest request;
  request.argv = {"id", "-u"};
  request.uid = nobody->pw_uid;
  request.gid = nobody->pw_gid;
  request.user = "nobody";
  auto job = supervisor.Submit(request);
  ASSERT_TRUE(job) << job.error().message;
  ASSERT_EQ(job->state, JobState::kRunning) << job->error;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline && !IsFinal(last[job->id].state)) {
    io.restart();
    io.run_for(50ms);
  }
  EXPECT_EQ(last[job->id].exit_code, 0);
  EXPECT_EQ(ReadFile(job->dir + "/stdout"), std::to_string(nobody->pw_uid) + "\n");
}

// A state dir no other user can enter: root's jobs run, others fail with a message that says why.
TEST_F(InitBinaryTest, AnUnreachableStateDirFailsOtherUsersJobsClearly) {
  passwd* nobody = getpwnam("nobody");
  ASSERT_NE(nobody, nullptr) << "this machine has no user 'nobody'";
  const fs::path state = base_ / "private" / "state";
  fs::create_directories(state);
  boost::asio::io_context io;
  SupervisorOptions options{state.string(), "", "testnode", private_init_.string(), 300ms};
  JobSupervisor supervisor(io, options, [](const JobRecord&) {});
  ASSERT_TRUE(supervisor.init());
  EXPECT_FALSE(supervisor.init()->others_can_run);
  EXPECT_NE(supervisor.init()->problem.find("0700"), std::string::npos);

  SubmitRequest request;
  request.argv = {"true"};
  request.uid = nobody->pw_uid;
  request.gid = nobody->pw_gid;
  request.user = "nobody";
  auto job = supervisor.Submit(request);
  ASSERT_TRUE(job);
  EXPECT_EQ(job->state, JobState::kFailed);
  EXPECT_NE(job->error.find("jobs of users other than root cannot start on this node"),
            std::string::npos)
      << job->error;
  request.uid = 0;
  request.gid = 0;
  request.user = "root";
  auto root_job = supervisor.Submit(request);
  ASSERT_TRUE(root_job);
  EXPECT_EQ(root_job->state, JobState::kRunning) << root_job->error;
}

}  // namespace
}  // namespace tern::jobs
