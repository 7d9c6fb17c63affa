// tern-init: PID 1 of a job's PID namespace.
//
//   tern-init --status-file PATH -- CMD ARGS...
//
// It runs CMD as its child, forwards the signals a user sends to the job (TERM, INT, HUP, QUIT,
// USR1, USR2) to every process of the namespace, reaps every process that ends (it is the
// namespace's reaper), and when CMD ends writes its status atomically to PATH as JSON —
// {"exit_code":N} or {"signal":N}, with "ended_at" — then exits the same way (128+signal).
// The agent reads that file, which is how an agent restarted while the job ran learns how it
// ended. Tiny on purpose: no threads, no allocations after start-up beyond stdio.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>

namespace {

constexpr int kForwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

int Usage() {
  std::fprintf(stderr, "usage: tern-init --status-file PATH -- CMD [ARGS...]\n");
  return 2;
}

void WriteStatus(const std::string& path, int status) {
  char ended[32];
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  std::strftime(ended, sizeof ended, "%Y-%m-%dT%H:%M:%SZ", &utc);
  char text[128];
  if (WIFSIGNALED(status)) {
    std::snprintf(text, sizeof text, "{\"signal\":%d,\"ended_at\":\"%s\"}\n", WTERMSIG(status),
                  ended);
  } else {
    std::snprintf(text, sizeof text, "{\"exit_code\":%d,\"ended_at\":\"%s\"}\n",
                  WEXITSTATUS(status), ended);
  }
  const std::string temporary = path + ".tmp";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::fprintf(stderr, "tern-init: cannot write %s: %s\n", temporary.c_str(),
                 std::strerror(errno));
    return;
  }
  const ssize_t length = static_cast<ssize_t>(std::strlen(text));
  const bool ok = ::write(fd, text, static_cast<size_t>(length)) == length && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(temporary.c_str(), path.c_str()) != 0) {
    std::fprintf(stderr, "tern-init: cannot write %s: %s\n", path.c_str(), std::strerror(errno));
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string status_file;
  int first = 1;
  while (first < argc) {
    const std::string arg = argv[first];
    if (arg == "--status-file" && first + 1 < argc) {
      status_file = argv[first + 1];
      first += 2;
    } else if (arg == "--") {
      ++first;
      break;
    } else if (arg == "-h" || arg == "--help") {
      std::printf(
          "usage: tern-init --status-file PATH -- CMD [ARGS...]\n"
          "The first process of a tern job (ternd starts it; not for direct use): runs CMD,\n"
          "reaps orphans in the job's PID namespace and writes CMD's exit status to PATH.\n");
      return 0;
    } else {
      return Usage();
    }
  }
  if (status_file.empty() || first >= argc) return Usage();

  sigset_t all;
  sigfillset(&all);
  sigset_t previous;
  sigprocmask(SIG_BLOCK, &all, &previous);

  const pid_t child = fork();
  if (child < 0) {
    std::fprintf(stderr, "tern-init: fork: %s\n", std::strerror(errno));
    return 127;
  }
  if (child == 0) {
    sigprocmask(SIG_SETMASK, &previous, nullptr);
    execvp(argv[first], argv + first);
    std::fprintf(stderr, "tern-init: cannot run %s: %s\n", argv[first], std::strerror(errno));
    _exit(127);
  }

  // PID 1 gets only the signals it handles; waiting synchronously for them keeps this loop
  // free of async-signal-safety concerns.
  int child_status = 0;
  bool child_done = false;
  while (!child_done) {
    siginfo_t info{};
    if (sigwaitinfo(&all, &info) < 0) continue;
    if (info.si_signo == SIGCHLD) {
      int status = 0;
      pid_t pid;
      while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == child) {
          child_status = status;
          child_done = true;
        }
      }
      continue;
    }
    for (int forwarded : kForwarded) {
      if (info.si_signo == forwarded) {
        kill(-1, forwarded);  // from PID 1: every other process of the namespace
        break;
      }
    }
  }
  WriteStatus(status_file, child_status);
  // Leaving kills whatever else still runs in the namespace: the job is its command.
  if (WIFSIGNALED(child_status)) return 128 + WTERMSIG(child_status);
  return WEXITSTATUS(child_status);
}
