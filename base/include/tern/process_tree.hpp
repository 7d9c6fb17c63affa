// The processes of a job: every process of its PID namespace, found from /proc, and what the
// agent does to all of them at once (resume them, take their TCP sockets out of repair mode).
// Used by the job supervisor, the direct calls, and migration.
//
// Thread-safety: the functions are thread-safe (each reads /proc afresh).
#pragma once

#include <sys/types.h>

#include <vector>

namespace tern {

// Every pid of the PID namespace whose init is `init_pid` (init included), from /proc.
std::vector<pid_t> NamespacePids(pid_t init_pid);
// SIGCONT to every process of the job: resumes a tree left stopped by dump or restore.
void ResumeTree(pid_t init_pid);
// A dump with --tcp-established leaves the job's TCP sockets in repair mode (CRIU unlocks
// only a tree it lets run); a job resumed after such a dump (a failed move) needs them out of
// it first, or its connections hang. Takes each socket of the job's processes with
// pidfd_getfd and turns TCP_REPAIR off (a window probe wakes the peer). Returns how many.
int EndTcpRepair(pid_t init_pid);

}  // namespace tern
