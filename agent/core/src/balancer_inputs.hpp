// The Balancer's inputs as the agent builds them, and the text of its events. Plain logic, no
// I/O and no clock (times come in), so that each piece is tested on its own
// (tests/agent/core/balancer_inputs_test.cpp); BalancerService does the I/O.
//
//  - ToNodeState(): one row of the cluster view (Cluster::Nodes()) as a balancer::NodeState.
//    Figures a node does not measure yet (0 in its load vector) fall back to what it does
//    send: capacity = cpus × speed, demand = its jobs' runnable (else CPU share) sum, memory
//    limit = MemTotal, memory used = its jobs' RSS sum. A node with no load vector yet is not
//    alive to the balancer (nothing is known about it).
//  - MigrationCostEstimator: the transfer rate and freeze of this node's past migrations, from
//    the "moved" migration events (running means; the defaults of MigrationCosts until then).
//  - CpuShareMeter: a job's CPU share from the growth of its cpu_seconds between samples, for
//    when the load vector does not carry one.
//  - SkipNotes: whether a job's skip reason is news — its words changed, or only its figures
//    changed and `repeat_after` has passed since it was last told.
//
// Thread-safety: plain values; not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tern/balancer/balancer.hpp>
#include <vector>

#include "tern/agent/cluster.hpp"

namespace tern::agent {

balancer::NodeState ToNodeState(const NodeView& node);

class MigrationCostEstimator {
 public:
  // Fields of a "migration" event with event "moved" (bytes, freeze_ms, phases_ms) whose
  // source is this node. Moves of less than kMinRateBytes tell the freeze but not the rate
  // (their time is all fixed costs).
  void OnMoved(const nlohmann::json& stats);
  const balancer::MigrationCosts& costs() const { return costs_; }
  static constexpr std::uint64_t kMinRateBytes = 16ull << 20;

 private:
  balancer::MigrationCosts costs_;
  int rate_samples_ = 0;
};

class CpuShareMeter {
 public:
  using Millis = std::chrono::milliseconds;
  // The job's CPUs used since its previous sample (0 at its first).
  double Update(const std::string& job, double cpu_seconds, Millis now);
  // Forgets jobs not in `jobs`.
  void KeepOnly(const std::set<std::string>& jobs);

 private:
  struct Sample {
    double cpu_seconds = 0;
    Millis at{0};
    double share = 0;
  };
  std::map<std::string, Sample> samples_;
};

class SkipNotes {
 public:
  using Millis = std::chrono::milliseconds;
  explicit SkipNotes(Millis repeat_after = std::chrono::seconds(60))
      : repeat_after_(repeat_after) {}
  // True when `reason` should be told for `job` now (and remembers it as told).
  bool ShouldTell(const std::string& job, const std::string& reason, Millis now);
  void KeepOnly(const std::set<std::string>& jobs);
  // `reason` with every number replaced by '#': two reasons with the same words are one.
  static std::string Words(const std::string& reason);

 private:
  struct Told {
    std::string reason;
    Millis at{0};
  };
  Millis repeat_after_;
  std::map<std::string, Told> told_;
};

// The "balancer" event fields of a decision to move a job.
nlohmann::json MigrateEvent(const balancer::MigrateDecision& decision);

}  // namespace tern::agent
