#include "tern/migrate/preflight.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
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
  EXPECT_EQ(ClassifyOpenFile("/memfd:tern-stream (deleted)", dir), OpenFileKind::kFine)
      << "a memfd is dumped with the job";
}

// A scratch directory with no symlink on its path (temp_directory_path may have one).
class ScratchDir {
 public:
  ScratchDir() {
    path_ = std::filesystem::canonical(std::filesystem::temp_directory_path()).string() +
            "/tern-pf-" + std::to_string(getpid());
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(PreflightTest, ComparesFilesAtTheDestination) {
  ScratchDir scratch;
  const std::string path = scratch.path() + "/data";
  std::ofstream(path) << "12345";
  auto source = FingerprintFile(path);
  ASSERT_TRUE(source) << source.error().message;
  EXPECT_EQ(source->size, 5u);
  EXPECT_EQ(source->sha256, "5994471abb01112afcc18159f6cc74b4f511b99806da59b3caf5a9c173cacfc5");
  EXPECT_TRUE(CompareFiles({*source}, "node2").empty());

  OutsideFile bigger = *source;
  bigger.size = 6;
  auto problems = CompareFiles({bigger}, "node2");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("differs: size"), std::string::npos) << problems[0];

  OutsideFile missing = *source;
  missing.path = path + ".gone";
  problems = CompareFiles({missing}, "node2");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("does not exist"), std::string::npos) << problems[0];

  OutsideFile unhashed = *source;
  unhashed.sha256.clear();  // an older source sends size and mtime only
  problems = CompareFiles({unhashed}, "node2");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("no content hash"), std::string::npos) << problems[0];
}

// Same size, same mtime, different bytes: the old size+mtime check let this pass.
TEST(PreflightTest, SameSizeAndMtimeButOtherContentIsRefused) {
  ScratchDir scratch;
  const std::string path = scratch.path() + "/data";
  std::ofstream(path) << "secret-A";
  auto source = FingerprintFile(path);
  ASSERT_TRUE(source) << source.error().message;
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);
  std::ofstream(path, std::ios::trunc) << "secret-B";
  const timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  auto problems = CompareFiles({*source}, "node2");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("content (SHA-256)"), std::string::npos) << problems[0];
}

// A user's symlink at the path (to a file with the very content expected) is not followed:
// CRIU, as root, would open what it points to.
TEST(PreflightTest, ASymlinkAtTheDestinationIsRefused) {
  ScratchDir scratch;
  const std::string real = scratch.path() + "/real";
  const std::string path = scratch.path() + "/data";
  std::ofstream(path) << "same";
  auto source = FingerprintFile(path);
  ASSERT_TRUE(source) << source.error().message;
  std::filesystem::rename(path, real);
  std::filesystem::create_symlink(real, path);
  auto problems = CompareFiles({*source}, "node2");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("cannot be compared"), std::string::npos) << problems[0];
  EXPECT_NE(problems[0].find("symbolic link"), std::string::npos) << problems[0];
  // A symlink on a directory of the path counts as much as one at its end.
  const std::string linked_dir = scratch.path() + "/via";
  std::filesystem::create_directory_symlink(scratch.path(), linked_dir);
  OutsideFile through = *source;
  through.path = linked_dir + "/real";
  EXPECT_FALSE(FingerprintFile(through.path));
}

TEST(PreflightTest, OwnerAndModeMustMatch) {
  ScratchDir scratch;
  const std::string path = scratch.path() + "/data";
  std::ofstream(path) << "same";
  ::chmod(path.c_str(), 0644);
  auto source = FingerprintFile(path);
  ASSERT_TRUE(source) << source.error().message;
  OutsideFile other_owner = *source;
  other_owner.uid += 1;
  auto problems = CompareFiles({other_owner}, "node2");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("owner"), std::string::npos) << problems[0];
  ::chmod(path.c_str(), 0666);
  problems = CompareFiles({*source}, "node2");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("mode 666 vs 644"), std::string::npos) << problems[0];
}

// A FIFO is refused at once, not read (which would block the pre-flight forever).
TEST(PreflightTest, AFifoIsRefusedWithoutBlocking) {
  ScratchDir scratch;
  const std::string path = scratch.path() + "/fifo";
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  auto file = FingerprintFile(path);
  ASSERT_FALSE(file);
  EXPECT_NE(file.error().message.find("not a regular file"), std::string::npos)
      << file.error().message;
}

TEST(PreflightTest, AFileTooBigToHashIsRefused) {
  ScratchDir scratch;
  const std::string path = scratch.path() + "/big";
  std::ofstream(path) << std::string(4096, 'x');
  auto file = FingerprintFile(path, 1024);
  ASSERT_FALSE(file);
  EXPECT_NE(file.error().message.find("more than"), std::string::npos) << file.error().message;
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
  // pair[0] goes to fd 3, which a scan takes for the job's channel (an end handed over apart,
  // so not the job's own); pair[1] is any other socket, connected to it. A test runner may
  // have left fd 3 open, so it is put there explicitly.
  if (pair[0] != 3) {
    ASSERT_EQ(::dup2(pair[0], 3), 3);
    ::close(pair[0]);
    pair[0] = 3;
  }
  struct stat info {};
  ASSERT_EQ(::fstat(pair[1], &info), 0);
  const std::string socket = "socket:[" + std::to_string(info.st_ino) + "]";
  JobWithFd job(pair[1]);
  ASSERT_GT(job.init(), 0) << "needs root to make a PID namespace";

  auto scan = ScanJob(job.init(), "/nonexistent");
  bool refused = false;
  for (const auto& blocker : scan.blockers) refused |= blocker.find(socket) != std::string::npos;
  std::string all;
  for (const auto& blocker : scan.blockers) all += blocker + "\n";
  EXPECT_TRUE(refused) << "any other socket keeps the job from moving; blockers:\n" << all;

  scan = ScanJob(job.init(), "/nonexistent", {socket});
  for (const auto& blocker : scan.blockers) EXPECT_EQ(blocker.find(socket), std::string::npos);
  EXPECT_GE(scan.direct_sockets, 1);
  // A Unix one whose peer the job does not hold (a same-node direct connection: pair[0] is
  // the channel, handed over apart) is dumped as external and restored closed: listed once.
  EXPECT_EQ(scan.direct_unix, std::vector<std::string>{socket});
  // Both ends direct and held by the job (a job streaming to its own port): a pair inside the
  // job, which CRIU dumps whole.
  ASSERT_EQ(::fstat(pair[0], &info), 0);
  const std::string other = "socket:[" + std::to_string(info.st_ino) + "]";
  scan = ScanJob(job.init(), "/nonexistent", {socket, other});
  EXPECT_TRUE(scan.direct_unix.empty());
  ::close(pair[0]);
  ::close(pair[1]);
}

// Sockets' kinds come from the job's network namespace's tables (docs/networking.md "What the
// pre-flight refuses").
TEST(PreflightTest, ATcpSocketNeedsTheJobsOwnNetworkAndTheRefusalSaysUseNet) {
  // Opened first, so that the socket is not in fd 3, which a scan takes for the job's channel.
  const int placeholder = ::open("/dev/null", O_RDONLY);
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GT(listener, 3);
  sockaddr_in any{};
  any.sin_family = AF_INET;
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&any), sizeof any), 0);
  ASSERT_EQ(::listen(listener, 1), 0);
  struct stat info {};
  ASSERT_EQ(::fstat(listener, &info), 0);
  const std::string socket = "socket:[" + std::to_string(info.st_ino) + "]";
  JobWithFd job(listener);
  ASSERT_GT(job.init(), 0) << "needs root to make a PID namespace";

  auto scan = ScanJob(job.init(), "/nonexistent");
  std::string refusal;
  for (const auto& blocker : scan.blockers) {
    if (blocker.find(socket) != std::string::npos) refusal = blocker;
  }
  EXPECT_NE(refusal.find("TCP socket"), std::string::npos) << refusal;
  EXPECT_NE(refusal.find("tern submit --net"), std::string::npos) << refusal;

  scan = ScanJob(job.init(), "/nonexistent", {}, /*own_network=*/true);
  for (const auto& blocker : scan.blockers) EXPECT_EQ(blocker.find(socket), std::string::npos);
  ::close(listener);
  if (placeholder >= 0) ::close(placeholder);
}

TEST(PreflightTest, AUnixSocketPairInsideTheJobMovesWithIt) {
  // Opened after fd 3 is taken, so that neither end is the slot of the job's channel.
  const int placeholder = ::open("/dev/null", O_RDONLY);
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
  ASSERT_GT(pair[0], 3);
  JobWithFd job(pair[0]);
  ASSERT_GT(job.init(), 0) << "needs root to make a PID namespace";
  auto scan = ScanJob(job.init(), "/nonexistent");
  for (const auto& blocker : scan.blockers) {
    EXPECT_EQ(blocker.find("socket"), std::string::npos) << blocker;
  }
  ::close(pair[0]);
  ::close(pair[1]);
  if (placeholder >= 0) ::close(placeholder);
}

}  // namespace
}  // namespace tern::migrate
