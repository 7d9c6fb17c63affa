// LoadVector: what one agent measured about its node at one moment — the unit of load gossip.
//
// `seq` increases with every sample of the same origin node, so that of two vectors about one
// node the one with the larger seq is the newer, whichever way gossip carried them.
//
// Thread-safety: a plain value.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace tern::balancer {

struct JobLoad {
  std::string job_id;
  double cpu_share = 0;  // CPUs used over the last sample (1.0 = one CPU busy)
  std::uint64_t rss_bytes = 0;
  double io_bytes_per_s = 0;  // read + write (taskstats, or /proc/PID/io)
  double runnable = 0;        // CPUs the job wants: mean runnable tasks (state R) of its tree
  double age_s = 0;           // seconds since the job was submitted (not since it arrived)
  bool pinned = false;
  // IPC affinity: bytes/s exchanged through ports with other jobs, the top 8 by rate.
  std::vector<std::pair<std::string, double>> peers;
};

// The figures a Balancer reads (NodeStateFromLoad) come first, in the first two cache lines of
// a 64-byte aligned vector, then the others a receiver checks (Implausible), in the third:
// tern-sim reads thousands of vectors per step, each cold in cache, and its hints load only
// those lines (DecisionEnd, CheckedEnd).
struct alignas(64) LoadVector {
  std::uint64_t node_id = 0;
  // Issue 13 (docs/balancer.md): figures that differ per node even when nodes share a kernel.
  double capacity = 0;  // CPUs its jobs can use: the node cgroup's quota, else cpus x speed
  double speed = 1.0;   // relative CPU speed, 1.0 when unknown
  double demand = 0;    // CPUs its jobs want: the sum of their `runnable`
  std::uint64_t mem_limit_bytes = 0;  // the node cgroup's memory limit, else MemTotal
  std::uint64_t mem_used_bytes = 0;   // the node cgroup's usage, else the jobs' RSS sum
  std::uint64_t mem_total_bytes = 0;
  int cpus = 0;
  bool draining = false;  // takes no new jobs and moves its jobs away
  std::vector<JobLoad> jobs;
  std::string node_name;
  std::uint64_t seq = 0;
  // What only Implausible() reads (of Gossip and the Balancer).
  int runnable = 0;
  int jobs_running = 0;
  double load1 = 0;
  double cpu_mhz = 0;
  double link_bytes_per_s = 0;  // rx+tx of the node's non-loopback links
  // Not read by Gossip or the Balancer.
  std::uint64_t mem_free_bytes = 0;
  std::int64_t sampled_at_ms = 0;  // origin's wall clock; informational only
  std::string address;             // peer transport host:port
  std::string api_address;         // TCP API host:port
};

// Where the figures NodeStateFromLoad() reads end, and those Implausible() reads (hints load up
// to there).
inline const char* DecisionEnd(const LoadVector& load) {
  return reinterpret_cast<const char*>(&load.runnable);
}
inline const char* CheckedEnd(const LoadVector& load) {
  return reinterpret_cast<const char*>(&load.mem_free_bytes);
}

// Why `load` cannot be believed (NaN or infinity, negative figures, absurd sizes, no node id),
// or "" when it can. Gossip drops such entries and logs the reason.
std::string Implausible(const LoadVector& load);

}  // namespace tern::balancer
