// NodeCgroup: the cgroup this node's jobs run in ([node] cgroup, docs/config.md) — where a
// job's processes are placed and where the node's capacity and memory are read, so that nodes
// sharing one kernel (the local cluster) still differ in capacity and load.
//
// Contract: Open() finds the named cgroup in the hierarchies mounted here — cgroup v1 (the
// `cpu`, `cpuacct` and `memory` hierarchies, each on its own; a co-mounted pair shares a
// directory) when a v1 `cpu` hierarchy is mounted, else cgroup v2 (one directory) — and fails
// with one line when a directory is missing. A name with a leading '/' is a path from each
// hierarchy's root; any other name is relative to this process's own cgroup in it. Readers
// never fail: a figure that cannot be read is 0 / nullopt. The parsers below take file
// contents and reject malformed text with an Error.
//
// With `create` (an installed node's `[node] cgroup_create`) the name must be absolute: Open()
// makes the directory where it is missing, and in cgroup v1 also uses the `pids` hierarchy,
// systemd's own `name=systemd` one and a hybrid system's cgroup2 mount, so that a placed job
// is outside the agent's service in every hierarchy systemd tracks or limits units by. A
// controller hierarchy (cpu, cpuacct, memory, pids) where the directory cannot be made is
// left as it is (jobs stay in the agent's cgroup there and its figures are not read); the
// tracked ones (name=systemd, cgroup2) must succeed.
//
// Thread-safety: a value; its methods only read files (and Place writes one) and may be called
// from any thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <vector>

namespace tern::agent {

struct CgroupMount {
  std::string path;                      // where it is mounted
  bool v2 = false;                       // cgroup2
  std::vector<std::string> controllers;  // v1: from the mount options (cpu, cpuacct, ...)
  std::string name;                      // v1 named hierarchy: "systemd" for name=systemd
};

// /proc/self/mounts (or /proc/mounts) text: the cgroup and cgroup2 mounts in it.
std::vector<CgroupMount> ParseCgroupMounts(std::string_view mounts);
// /proc/PID/cgroup text: hierarchy controllers ("cpu,cpuacct"; "" for v2) -> path.
std::map<std::string, std::string> ParseProcCgroup(std::string_view text);
// cgroup v2 cpu.max ("50000 100000", "max 100000"): CPUs of quota, 0 when unlimited.
Expected<double> ParseCpuMax(std::string_view text);
// cgroup v1 cpu.cfs_quota_us and cpu.cfs_period_us: CPUs of quota, 0 when unlimited (-1).
Expected<double> ParseCfsQuota(std::string_view quota, std::string_view period);
// memory.max (v2) or memory.limit_in_bytes (v1): bytes, 0 when unlimited ("max", or v1's
// page-rounded LONG_MAX).
Expected<std::uint64_t> ParseMemoryLimit(std::string_view text);
// One unsigned number (memory.current, memory.usage_in_bytes, cpuacct.usage).
Expected<std::uint64_t> ParseCount(std::string_view text);
// cgroup v2 cpu.stat: usage_usec in seconds.
Expected<double> ParseCpuStatUsage(std::string_view text);

class NodeCgroup {
 public:
  // Reads /proc/self/mounts and /proc/self/cgroup.
  static Expected<NodeCgroup> Open(const std::string& name, bool create = false);
  // The same from given file contents (tests: mounts that point at a scratch directory).
  static Expected<NodeCgroup> Open(const std::string& name, std::string_view mounts,
                                   std::string_view self_cgroup, bool create = false);

  int version() const { return version_; }
  const std::string& name() const { return name_; }
  // CPUs the quota allows; 0 when the cgroup has none.
  double CpuQuota() const;
  // CPU time its processes used, in seconds (v1 needs a cpuacct hierarchy).
  std::optional<double> CpuSeconds() const;
  // Memory limit in bytes; 0 when the cgroup has none.
  std::uint64_t MemoryLimit() const;
  std::optional<std::uint64_t> MemoryUsage() const;
  // The cgroup.procs file of each of its directories: writing a pid there places it.
  std::vector<std::string> ProcsFiles() const;
  // Moves `pid` (a whole process) into the cgroup, in every hierarchy.
  Expected<void> Place(pid_t pid) const;
  // Whether /proc/PID/cgroup says `pid` is in it (in its cpu hierarchy, or v2's).
  bool Holds(pid_t pid) const;
  // `criu restore --cgroup-root` values that put a restored tree in this cgroup:
  // "cpu:/path" per v1 hierarchy it holds ("name=systemd:/path", ":/path" for a hybrid
  // system's cgroup2), "/path" for v2. Hierarchies it does not hold keep the job's path there.
  std::vector<std::string> CriuRoots() const;
  // "v1 cpu:/x memory:/y/x" — for logs and `tern doctor`.
  std::string Describe() const;

 private:
  struct Dir {
    std::string controllers;  // as in /proc/PID/cgroup ("cpu", "cpu,cpuacct"; "" for v2)
    std::string path;         // within the hierarchy
    std::string dir;          // on the file system
    // False: a v1 controller hierarchy where the created cgroup could not be made (mounted
    // read-only, as systemd-nspawn does): jobs stay in the agent's cgroup there (`path`).
    bool placed = true;
  };
  const Dir* Find(std::string_view controller) const;

  int version_ = 0;
  bool created_ = false;  // Open(..., create = true)
  std::string name_;
  std::vector<Dir> dirs_;  // v1: cpu first; v2: one
};

}  // namespace tern::agent
