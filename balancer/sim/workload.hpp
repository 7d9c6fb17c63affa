// Workload: the nodes and the stream of jobs tern-sim runs, drawn from a seed so that every policy
// sees exactly the same cluster and the same jobs.
//
// Nodes are of mixed size and speed; jobs arrive as a Poisson process at uniformly chosen nodes
// (where a user submits), their CPU work follows a bounded Pareto distribution with alpha ~1 (the
// lifetimes Harchol-Balter and Downey measured for UNIX processes: P(L > t) ~ 1/t above 1 s),
// their memory a log-normal one.
//
// Thread-safety: a Workload is used from one thread.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace tern::sim {

struct WorkloadOptions {
  std::size_t nodes = 16;
  double load = 0.7;          // target utilisation: offered work over total capacity
  double pareto_alpha = 1.0;  // lifetimes
  double work_min_s = 1.0;
  double work_max_s = 3600.0;
  double rss_median_mib = 64;
  double rss_sigma = 1.2;  // of ln(rss)
  double rss_max_mib = 4096;
  double explicit_node = 0;  // fraction of jobs submitted with --node: placement cannot move them
  // Every node 1 core of speed 1 with 4 GiB (Harchol-Balter and Downey's identical hosts) instead
  // of the mixed sizes and speeds.
  bool homogeneous = false;
  std::uint64_t seed = 1;
};

struct NodeSpec {
  double cores = 1;
  double speed = 1;  // relative to the reference CPU work is measured on
  std::uint64_t mem_limit_bytes = 0;
  double link_bytes_per_s = 125e6;  // 1 Gbit/s
  double capacity() const { return cores * speed; }
};

struct JobSpec {
  double arrival_s = 0;
  double work_s = 0;  // CPU seconds on the reference CPU
  std::uint64_t rss_bytes = 0;
  std::uint32_t origin = 0;    // node index it is submitted on
  bool explicit_node = false;  // `tern submit --node`: starts on `origin` whatever the policy
};

class Workload {
 public:
  explicit Workload(const WorkloadOptions& options);
  const std::vector<NodeSpec>& nodes() const { return nodes_; }
  // The jobs arriving in [from, to), in order; call with consecutive intervals.
  void Arrivals(double from, double to, std::vector<JobSpec>& out);
  double mean_work_s() const { return mean_work_s_; }
  double arrival_rate() const { return rate_; }

 private:
  double Work();
  WorkloadOptions options_;
  std::vector<NodeSpec> nodes_;
  std::mt19937_64 rng_;
  double mean_work_s_ = 0;
  double rate_ = 0;  // jobs per second
  double next_arrival_ = 0;
};

}  // namespace tern::sim
