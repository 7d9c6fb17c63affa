// Pre-flight: can this job move, before anything is frozen? The source scans the job's
// processes (every process of its PID namespace) and the destination checks what the job
// would find there. Each problem is one line a person can act on.
//
// Classification of what a process holds open is a pure function (ClassifyOpenFile) so that
// the rules are testable without /proc.
//
// Thread-safety: reentrant.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace tern::migrate {

struct OutsideFile {
  std::string path;
  std::uint64_t size = 0;
  std::int64_t mtime = 0;  // seconds
};

struct JobScan {
  std::vector<std::string> blockers;  // reasons the job cannot move
  std::vector<OutsideFile> outside;   // files open outside the job directory
  std::uint64_t rss_bytes = 0;
  int processes = 0;
  std::string channel;     // "socket:[INODE]": the job's IPC channel to its agent (not a blocker)
  int direct_sockets = 0;  // open ends of the job's direct call connections (not blockers)
};

enum class OpenFileKind { kFine, kInsideJob, kOutsideJob, kTerminal, kSocket, kDevice };

// `target` is the readlink of /proc/PID/fd/N.
OpenFileKind ClassifyOpenFile(const std::string& target, const std::string& job_dir);

// `direct` lists the job's direct call connections ("socket:[INODE]", docs/ipc.md "Direct
// calls"): the agent shuts them down before the move and CRIU restores them closed, so they do
// not keep the job from moving.
JobScan ScanJob(pid_t init_pid, const std::string& job_dir,
                const std::set<std::string>& direct = {});

// The job's IPC channel as /proc shows it ("socket:[INODE]"), from fd 3 of its init; "" if none.
// It is dumped as an external socket and re-attached to the new agent at restore.
std::string JobChannelSocket(pid_t init_pid);
// "unix[INODE]" for criu dump --external, from "socket:[INODE]".
std::string ExternalUnixSocket(const std::string& channel);

// At the destination: the files the job holds outside its directory must be there and alike.
std::vector<std::string> CompareFiles(const std::vector<OutsideFile>& files,
                                      const std::string& node_name);

}  // namespace tern::migrate
