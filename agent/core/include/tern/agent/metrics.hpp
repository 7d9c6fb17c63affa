// Metrics: GET /metrics, the agent's figures in the Prometheus text exposition format (0.0.4),
// from plain inputs the agent gathers (docs/api.md lists the metrics).
//
// Contract: RenderMetrics writes each family once, with `# HELP` and `# TYPE`, label values
// escaped (\\, \", \n); counters end in `_total`; histograms have cumulative `_bucket`s ending
// in le="+Inf", `_sum` and `_count`, in seconds. Every sample carries `node` (this agent's node;
// for tern_node_* the node described, as this agent sees it through gossip).
//
// Thread-safety: pure functions; SelfUsage reads /proc/self.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tern/agent/migration_history.hpp"
#include "tern/balancer/load_vector.hpp"

namespace tern::agent {

struct NodeMetrics {
  std::string name;
  bool alive = false;
  bool draining = false;
  balancer::LoadVector load;  // the latest the node gossiped (empty when none arrived)
};

struct MetricsInput {
  std::string node;
  std::vector<NodeMetrics> nodes;
  std::map<std::string, std::uint64_t> jobs_by_state;  // this node's jobs
  const MigrationHistory* migrations = nullptr;
  std::uint64_t ipc_local_bytes = 0;    // between jobs, through this node's port router
  std::uint64_t ipc_remote_frames = 0;  // IPC frames sent to other nodes
  std::uint64_t ipc_remote_bytes = 0;
  std::uint64_t gossip_bytes_sent = 0;
  std::uint64_t gossip_bytes_received = 0;
  std::uint64_t gossip_frames_sent = 0;
  std::uint64_t peer_bytes_sent = 0;
  std::size_t peer_links_open = 0;
  std::size_t event_streams = 0;
  double cpu_seconds = 0;
  std::uint64_t rss_bytes = 0;
  double start_time_seconds = 0;
};

// This process's CPU seconds (user + system), resident bytes and start time (Unix seconds).
struct SelfUsage {
  double cpu_seconds = 0;
  std::uint64_t rss_bytes = 0;
  double start_time_seconds = 0;
};
SelfUsage ReadSelfUsage();

std::string RenderMetrics(const MetricsInput& input);

}  // namespace tern::agent
