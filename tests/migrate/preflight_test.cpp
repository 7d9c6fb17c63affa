#include "tern/migrate/preflight.hpp"

#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace tern::migrate {
namespace {

TEST(PreflightTest, ClassifiesWhatAJobHoldsOpen) {
  const std::string dir = "/var/lib/tern/jobs/n.1";
  EXPECT_EQ(ClassifyOpenFile("/dev/null", dir), OpenFileKind::kFine);
  EXPECT_EQ(ClassifyOpenFile("pipe:[123]", dir), OpenFileKind::kFine);
  EXPECT_EQ(ClassifyOpenFile("anon_inode:[eventfd]", dir), OpenFileKind::kFine);
  EXPECT_EQ(ClassifyOpenFile("/dev/pts/3", dir), OpenFileKind::kTerminal);
  EXPECT_EQ(ClassifyOpenFile("/dev/tty", dir), OpenFileKind::kTerminal);
  EXPECT_EQ(ClassifyOpenFile("socket:[99]", dir), OpenFileKind::kSocket);
  EXPECT_EQ(ClassifyOpenFile("/dev/sda", dir), OpenFileKind::kDevice);
  EXPECT_EQ(ClassifyOpenFile(dir + "/stdout", dir), OpenFileKind::kInsideJob);
  EXPECT_EQ(ClassifyOpenFile("/var/lib/tern/jobs/n.10/stdout", dir), OpenFileKind::kOutsideJob)
      << "a sibling job's directory is not ours";
  EXPECT_EQ(ClassifyOpenFile("/etc/hosts", dir), OpenFileKind::kOutsideJob);
}

TEST(PreflightTest, ComparesFilesAtTheDestination) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("tern-pf-" + std::to_string(getpid()))).string();
  std::ofstream(path) << "12345";
  struct stat info {};
  ASSERT_EQ(::stat(path.c_str(), &info), 0);
  OutsideFile same{path, 5, static_cast<std::int64_t>(info.st_mtime)};
  EXPECT_TRUE(CompareFiles({same}, "node2").empty());
  OutsideFile bigger{path, 6, same.mtime};
  auto problems = CompareFiles({bigger}, "node2");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("differs"), std::string::npos);
  OutsideFile missing{path + ".gone", 1, 0};
  problems = CompareFiles({missing}, "node2");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("no such file"), std::string::npos);
  std::filesystem::remove(path);
}

TEST(PreflightTest, ScanOfAVanishedJobSaysSo) {
  auto scan = ScanJob(999999, "/nonexistent");
  ASSERT_FALSE(scan.blockers.empty());
  EXPECT_NE(scan.blockers[0].find("no running process"), std::string::npos);
}

// A process in a PID namespace of its own holding `fd` (inherited); killed with the test.
class JobWithFd {
 public:
  explicit JobWithFd(int fd) {
    int ready[2];
    EXPECT_EQ(::pipe(ready), 0);
    middle_ = ::fork();
    if (middle_ == 0) {
      if (::unshare(CLONE_NEWPID) != 0) ::_exit(1);
      const pid_t init = ::fork();
      if (init == 0) {
        ::pause();
        ::_exit(0);
      }
      (void)!::write(ready[1], &init, sizeof init);
      ::waitpid(init, nullptr, 0);
      ::_exit(0);
    }
    ::close(ready[1]);
    EXPECT_EQ(::read(ready[0], &init_, sizeof init_), static_cast<ssize_t>(sizeof init_));
    ::close(ready[0]);
    (void)fd;  // held by the fork
  }
  ~JobWithFd() {
    if (init_ > 0) ::kill(init_, SIGKILL);
    if (middle_ > 0) ::waitpid(middle_, nullptr, 0);
  }
  pid_t init() const { return init_; }

 private:
  pid_t middle_ = -1;
  pid_t init_ = -1;
};

TEST(PreflightTest, DirectCallSocketsDoNotKeepAJobFromMoving) {
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
  struct stat info {};
  // pair[0] is fd 3, which a scan takes for the job's channel; pair[1] is any other socket.
  ASSERT_EQ(::fstat(pair[1], &info), 0);
  const std::string socket = "socket:[" + std::to_string(info.st_ino) + "]";
  JobWithFd job(pair[1]);
  ASSERT_GT(job.init(), 0) << "needs root to make a PID namespace";

  auto scan = ScanJob(job.init(), "/nonexistent");
  bool refused = false;
  for (const auto& blocker : scan.blockers) refused |= blocker.find(socket) != std::string::npos;
  EXPECT_TRUE(refused) << "any other socket keeps the job from moving";

  scan = ScanJob(job.init(), "/nonexistent", {socket});
  for (const auto& blocker : scan.blockers) EXPECT_EQ(blocker.find(socket), std::string::npos);
  EXPECT_GE(scan.direct_sockets, 1);
  ::close(pair[0]);
  ::close(pair[1]);
}

}  // namespace
}  // namespace tern::migrate
