// LoadVector: what one agent measured about its node at one moment — the unit of load gossip.
//
// `seq` increases with every sample of the same origin node, so that of two vectors about one
// node the one with the larger seq is the newer, whichever way gossip carried them.
//
// Thread-safety: a plain value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tern::balancer {

struct JobLoad {
  std::string job_id;
  double cpu_share = 0;  // CPUs used over the last sample (1.0 = one CPU busy)
  std::uint64_t rss_bytes = 0;
  double io_bytes_per_s = 0;
};

struct LoadVector {
  std::uint64_t node_id = 0;
  std::string node_name;
  std::string address;      // peer transport host:port
  std::string api_address;  // TCP API host:port
  std::uint64_t seq = 0;
  std::int64_t sampled_at_ms = 0;  // origin's wall clock; informational only
  double load1 = 0;
  int runnable = 0;
  int cpus = 0;
  double cpu_mhz = 0;
  std::uint64_t mem_total_bytes = 0;
  std::uint64_t mem_free_bytes = 0;
  int jobs_running = 0;
  std::vector<JobLoad> jobs;
};

}  // namespace tern::balancer
