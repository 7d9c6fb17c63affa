// Subprocesses of the agent that are not jobs — CRIU above all — run without a shell, with
// their output captured and a deadline.
//
// ternd is a child subreaper and reaps orphans on SIGCHLD; children started here are
// registered so that this reaper leaves their exit status to whoever waits for them
// (IsManagedChild). Registration happens under the same lock as the fork, so no child can be
// reaped by the wrong party in between.
//
// Thread-safety: RunSubprocess and BackgroundProcess are thread-safe; run them off the agent's
// io_context thread (they block).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <tern/expected.hpp>
#include <utility>
#include <vector>

namespace tern {

struct SubprocessResult {
  int exit_code = -1;  // -1 if killed by a signal
  int signal = 0;
  bool timed_out = false;
  std::string output;  // stdout and stderr, interleaved
};

struct SubprocessOptions {
  std::chrono::milliseconds timeout{std::chrono::seconds(120)};
  // Extra fds for the child: {fd in the child, fd in the parent}.
  std::vector<std::pair<int, int>> inherit_fds;
};

Expected<SubprocessResult> RunSubprocess(const std::vector<std::string>& argv,
                                         const SubprocessOptions& options = {});

// A long-running helper (criu page-server, lazy-pages): killed and reaped when destroyed.
class BackgroundProcess {
 public:
  BackgroundProcess() = default;
  static Expected<BackgroundProcess> Start(
      const std::vector<std::string>& argv, const std::string& log_path,
      const std::vector<std::pair<int, int>>& inherit_fds = {});
  BackgroundProcess(BackgroundProcess&& other) noexcept;
  BackgroundProcess& operator=(BackgroundProcess&& other) noexcept;
  ~BackgroundProcess();

  pid_t pid() const { return pid_; }
  bool Running();
  // Waits up to `timeout` for it to end on its own; kills it afterwards. Returns its exit code.
  int Finish(std::chrono::milliseconds timeout);
  // Waits up to `timeout` for it to end; its exit code (-1 if a signal ended it), or nothing
  // if it still runs.
  std::optional<int> Wait(std::chrono::milliseconds timeout);

 private:
  explicit BackgroundProcess(pid_t pid) : pid_(pid) {}
  int ExitCode() const;
  pid_t pid_ = -1;
  int status_ = 0;
};

// For the agent's reaper: true while someone waits for this child.
bool IsManagedChild(pid_t pid);
// Held by the reaper while it decides which zombies to reap.
std::mutex& ChildRegistryMutex();

}  // namespace tern
