// LaunchJob: starts a job the way tern runs every job — as the child of tern-init, which is
// PID 1 of a new PID namespace (so the whole tree can be checkpointed and restored elsewhere
// without PID clashes), in its own session, as the given user with that user's groups, with
// cwd, stdout and stderr in the job directory, stdin from /dev/null, its IPC channel as fd 3
// (when given) and no other inherited fd.
//
// Contract: on success the returned pid is tern-init's host pid and a child of the caller.
// Failures before the job runs — the directory, the files, switching user, starting tern-init —
// return one line naming the step and the reason ("cannot switch to uid 1000: ..."); a command
// that cannot be executed is reported by tern-init on the job's stderr and ends with exit 127.
// Nothing runs as root unless uid is 0.
//
// Thread-safety: reentrant; safe to call from a multi-threaded process (the child runs only
// async-signal-safe code between clone and exec).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <tern/expected.hpp>
#include <tern/ipc/job_wire.hpp>
#include <vector>

namespace tern::jobs {

struct LaunchSpec {
  std::vector<std::string> argv;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string user;  // passwd name, for groups and HOME/USER/LOGNAME/SHELL
  std::map<std::string, std::string> env;
  std::string dir;        // job directory: created, owned by uid:gid
  std::string init_path;  // tern-init
  std::string job_id;
  std::string node;
  int ipc_fd = -1;  // the job's end of its IPC channel: becomes fd 3 (TERN_IPC_FD) in the job
  // cgroup.procs files of the node's cgroup: tern-init joins them before it starts, so that
  // every process of the job runs in that cgroup from its first instruction.
  std::vector<std::string> cgroup_procs;
  // `tern submit --net`: the job's own network namespace (CreateJobNetwork), entered before the
  // user switch, so that the job never holds CAP_NET_ADMIN there. -1: the node's network.
  int netns_fd = -1;
};

// The job's IPC channel is always this fd number (docs/ipc.md "The job's channel").
using ipc::kJobIpcFd;

struct LaunchedJob {
  pid_t pid = 0;
  std::uint64_t start_ticks = 0;
};

Expected<LaunchedJob> LaunchJob(const LaunchSpec& spec);

// Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot; 0 if gone.
std::uint64_t ProcessStartTicks(pid_t pid);

}  // namespace tern::jobs
