#include "tern/subprocess.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <thread>

namespace tern {
namespace {

// Never destroyed, on purpose: a detached reaper thread (PageRelayProcess::LetRun) may still
// unregister its child while the process exits and runs static destructors (ASan saw that
// use after free in PageRelayProcessTest).
std::set<pid_t>& Registry() {
  static auto* const registry = new std::set<pid_t>();
  return *registry;
}

void Unregister(pid_t pid) {
  std::lock_guard lock(ChildRegistryMutex());
  Registry().erase(pid);
}

// Forks and execs argv with the given fd layout; registers the child. Returns its pid.
Expected<pid_t> Spawn(const std::vector<std::string>& argv, int output_fd,
                      const std::vector<std::pair<int, int>>& inherit) {
  if (argv.empty()) return Fail("no program to run");
  std::vector<char*> args;
  for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  std::lock_guard lock(ChildRegistryMutex());
  const pid_t pid = ::fork();
  if (pid < 0) return Fail(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    const int null_fd = ::open("/dev/null", O_RDONLY);
    ::dup2(null_fd, 0);
    ::dup2(output_fd, 1);
    ::dup2(output_fd, 2);
    // Move inherited fds to high numbers first so that mapping them cannot clobber each other.
    std::vector<std::pair<int, int>> moved;
    int scratch = 1000;
    for (const auto& [child_fd, parent_fd] : inherit) {
      ::dup2(parent_fd, scratch);
      moved.emplace_back(child_fd, scratch++);
    }
    for (const auto& [child_fd, temporary] : moved) ::dup2(temporary, child_fd);
    int highest = 2;
    for (const auto& [child_fd, temporary] : moved) highest = std::max(highest, child_fd);
    for (int fd = 3; fd < 1000 + static_cast<int>(moved.size()) + 1; ++fd) {
      bool keep = false;
      for (const auto& [child_fd, temporary] : moved) keep |= fd == child_fd;
      if (!keep) ::close(fd);
    }
    ::syscall(SYS_close_range, 1000u + moved.size(), ~0u, 0u);
    sigset_t empty;
    sigemptyset(&empty);
    ::sigprocmask(SIG_SETMASK, &empty, nullptr);
    ::execvp(args[0], args.data());
    std::fprintf(stderr, "cannot run %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  Registry().insert(pid);
  return pid;
}

}  // namespace

std::mutex& ChildRegistryMutex() {
  static std::mutex mutex;
  return mutex;
}

bool IsManagedChild(pid_t pid) { return Registry().count(pid) != 0; }

Expected<SubprocessResult> RunSubprocess(const std::vector<std::string>& argv,
                                         const SubprocessOptions& options) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return Fail(std::string("pipe: ") + std::strerror(errno));
  auto pid = Spawn(argv, pipe_fds[1], options.inherit_fds);
  ::close(pipe_fds[1]);
  if (!pid) {
    ::close(pipe_fds[0]);
    return Unexpected<Error>{pid.error()};
  }
  SubprocessResult result;
  const auto deadline = std::chrono::steady_clock::now() + options.timeout;
  char buffer[4096];
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      ::kill(*pid, SIGKILL);
      break;
    }
    pollfd poll_fd{pipe_fds[0], POLLIN, 0};
    const int ready = ::poll(&poll_fd, 1, static_cast<int>(std::min<long>(left.count(), 1000)));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    const ssize_t n = ::read(pipe_fds[0], buffer, sizeof buffer);
    if (n <= 0) break;
    result.output.append(buffer, static_cast<size_t>(n));
  }
  ::close(pipe_fds[0]);
  int status = 0;
  while (::waitpid(*pid, &status, 0) < 0 && errno == EINTR) {
  }
  Unregister(*pid);
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  return result;
}

Expected<BackgroundProcess> BackgroundProcess::Start(
    const std::vector<std::string>& argv, const std::string& log_path,
    const std::vector<std::pair<int, int>>& inherit_fds) {
  const int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log < 0) return Fail("cannot open " + log_path + ": " + std::strerror(errno));
  auto pid = Spawn(argv, log, inherit_fds);
  ::close(log);
  if (!pid) return Unexpected<Error>{pid.error()};
  return BackgroundProcess(*pid);
}

BackgroundProcess::BackgroundProcess(BackgroundProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)), status_(other.status_) {}

BackgroundProcess& BackgroundProcess::operator=(BackgroundProcess&& other) noexcept {
  if (this != &other) {
    Finish(std::chrono::milliseconds(0));
    pid_ = std::exchange(other.pid_, -1);
    status_ = other.status_;
  }
  return *this;
}

BackgroundProcess::~BackgroundProcess() { Finish(std::chrono::milliseconds(0)); }

bool BackgroundProcess::Running() {
  if (pid_ < 0) return false;
  const pid_t done = ::waitpid(pid_, &status_, WNOHANG);
  if (done == pid_) {
    Unregister(pid_);
    pid_ = -1;
    return false;
  }
  return true;
}

std::optional<int> BackgroundProcess::Wait(std::chrono::milliseconds timeout) {
  if (!Running()) return ExitCode();
  // A pidfd turns readable when the process ends: woken by the exit itself, not by a timer
  // (this waits inside a job's freeze).
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (Running()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    if (pidfd >= 0) {
      pollfd ended{pidfd, POLLIN, 0};
      ::poll(&ended, 1, static_cast<int>(std::min<long>(left.count(), 1000)));
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min<long>(left.count(), 5)));
    }
  }
  if (pidfd >= 0) ::close(pidfd);
  if (pid_ >= 0) return std::nullopt;
  return ExitCode();
}

int BackgroundProcess::ExitCode() const { return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1; }

int BackgroundProcess::Finish(std::chrono::milliseconds timeout) {
  if (timeout.count() > 0) Wait(timeout);
  if (pid_ >= 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
    Unregister(pid_);
    pid_ = -1;
  }
  return ExitCode();
}

}  // namespace tern
