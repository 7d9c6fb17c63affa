// HostLoadSampler: this node's load as the balancer sees it — run queue and load average
// (/proc/loadavg), CPU count and speed (/proc/cpuinfo), memory (/proc/meminfo, MemAvailable as
// "free"), and network throughput of the node's non-loopback links read over rtnetlink (libnl),
// so that it is the node's own network namespace that is measured.
//
// Contract: Sample() never fails; a source that cannot be read leaves its fields at 0 and is
// named once in `problems`. Throughput is the rate since the previous Sample().
//
// Thread-safety: not thread-safe; the agent samples from its io_context thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "tern/balancer/load_vector.hpp"

namespace tern::agent {

struct HostLoad {
  // The host's figures in the gossip unit's own fields: load1, runnable, cpus, cpu_mhz,
  // mem_total_bytes, mem_free_bytes (MemAvailable) and link_bytes_per_s; the rest stay empty.
  balancer::LoadVector figures;
  std::uint64_t net_rx_bytes = 0;  // counters since boot, of the non-loopback links
  std::uint64_t net_tx_bytes = 0;
  std::vector<std::string> problems;
};

class HostLoadSampler {
 public:
  HostLoad Sample(std::chrono::steady_clock::time_point now);

 private:
  bool have_previous_ = false;
  std::uint64_t previous_net_bytes_ = 0;
  std::chrono::steady_clock::time_point previous_time_{};
};

}  // namespace tern::agent
