// ClusterSim: N simulated nodes running the real Gossip and Balancer (balancer/) on one workload,
// in a time-stepped loop whose cost per step is proportional to the nodes and jobs, never to
// N x N: each node's Balancer sees only the bounded sample its Gossip holds, as in MOSIX.
//
// Model (docs/balancer.md, "Simulator"): jobs are CPU-bound and share a node's cores equally
// (processor sharing; a job runs at speed x min(1, cores / jobs)); a migrating job stops at the
// source and runs again at the destination after rss / link rate + freeze; gossip messages are
// lost with probability `loss` and arrive one step late; a step's placements and decisions are
// simultaneous (each node sees the jobs others sent it during a step from the next one on).
//
// Thread-safety: one run per object, from one thread (which uses `node_threads` workers).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "tern/balancer/balancer.hpp"
#include "workload.hpp"

namespace tern::sim {

enum class Policy {
  kNone,         // run where submitted, never move
  kRandom,       // a uniformly random node, never move
  kLeastLoaded,  // Balancer::Place on the gossip view, never move
  kTern,         // Balancer::Place and Balancer::Decide
  kAgeOnly,      // run where submitted, then Balancer::Decide (the lifetime-based rule alone)
  kIdeal,        // the cluster as one machine, every core shared by every job (pooled_sim.hpp)
};
std::string ToString(Policy policy);
bool ParsePolicy(const std::string& name, Policy& policy);

struct SimOptions {
  WorkloadOptions workload;
  double hours = 1;
  double step_s = 0.2;
  std::chrono::milliseconds gossip_interval{1000};
  std::size_t gossip_window = 16;
  std::chrono::milliseconds gossip_max_age{30000};
  // GossipOptions::view_max: entries a node's view keeps (0: no bound). Twice the window: the
  // Balancer's sample is the same as with no bound (docs/balancer.md, "Simulator").
  std::size_t view_max = 32;
  double gossip_loss = 0.02;
  std::size_t sample = 16;  // nodes of the view the Balancer decides on (the freshest)
  double freeze_s = 0.15;
  // A job placed on another node than the one it was submitted on starts there this much later:
  // the forwarded submit (measured on a local cluster: docs/balancer.md, "Simulator").
  double remote_start_s = 0.05;
  balancer::BalancerOptions balancer;  // the agent's defaults unless told otherwise
  // Threads one run splits each step over, by chunks of consecutive nodes (gossip delivery and
  // ticks, placements and decisions, landings, the jobs' progress); the results do not depend
  // on it.
  unsigned node_threads = 1;
};

struct SimResult {
  Policy policy = Policy::kNone;
  std::size_t nodes = 0;
  std::uint64_t jobs_done = 0;
  std::uint64_t jobs_started = 0;
  double mean_slowdown = 0;
  double mean_slowdown_long = 0;   // jobs of more than 10 s of work
  double mean_slowdown_moved = 0;  // jobs that moved at least once
  std::uint64_t jobs_moved = 0;
  double mean_response_s = 0;
  double migrations_per_job = 0;
  double remote_starts_per_job = 0;  // placed on another node than where submitted
  double utilisation = 0;            // work of the finished jobs over capacity x time
  double gossip_bytes_per_node_s = 0;
  double mean_view_age_s = 0;
  double mean_view_size = 0;
  double mean_sample_age_s = 0;  // of the `sample` freshest entries the Balancer decides on
  double wall_s = 0;             // how long the simulation itself took (filled in by the caller)
};

SimResult RunSim(const SimOptions& options, Policy policy);

// Bytes one gossip entry takes on the wire (JSON, docs/balancer.md), estimated from the fields a
// load vector carries: a fixed part and one part per job.
std::size_t EstimateEntryBytes(int jobs);

}  // namespace tern::sim
