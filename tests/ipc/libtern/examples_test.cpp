// The examples as processes: outside tern they fail clearly; the single-job semaphore
// example runs to success against the fake agent.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <string>

#include "fake_agent.hpp"

namespace {

struct ExampleRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs `argv` with TERN_IPC_FD set to `job_fd` (unset if -1) and collects its output.
ExampleRun RunExample(std::vector<std::string> argv, int job_fd) {
  // Everything the child needs is prepared before fork: the parent has other threads.
  const std::string fd_text = std::to_string(job_fd);
  std::vector<char*> args;
  for (auto& arg : argv) args.push_back(arg.data());
  args.push_back(nullptr);
  int out[2];
  if (::pipe(out) != 0) return {};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out[1], 1);
    ::dup2(out[1], 2);
    if (job_fd >= 0) {
      ::fcntl(job_fd, F_SETFD, 0);  // the job inherits its channel
      ::setenv("TERN_IPC_FD", fd_text.c_str(), 1);
    } else {
      ::unsetenv("TERN_IPC_FD");
    }
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(out[1]);
  ExampleRun run;
  std::array<char, 4096> buffer;
  for (ssize_t n; (n = ::read(out[0], buffer.data(), buffer.size())) > 0;) {
    run.output.append(buffer.data(), static_cast<std::size_t>(n));
  }
  ::close(out[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

TEST(Examples, FailClearlyOutsideTern) {
  const ExampleRun run = RunExample({TERN_EXAMPLE_PINGPONG, "server"}, -1);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_NE(run.output.find("not running under tern: TERN_IPC_FD is not set"), std::string::npos)
      << run.output;
}

TEST(Examples, SemaphoreNeverExceedsItsSlots) {
  tern::testing::FakeAgent agent;
  const int job_fd = agent.TakeJobFd();
  const ExampleRun run = RunExample(
      {TERN_EXAMPLE_SEMAPHORE, "--slots", "2", "--workers", "5", "--rounds", "3", "--hold-ms", "5"},
      job_fd);
  ::close(job_fd);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("an extra release is refused: queue_full"), std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("at most 2 holders at once (limit 2)"), std::string::npos)
      << run.output;
}

}  // namespace
