// Balancer: decides where jobs run — initial placement of new jobs, and preemptive migration of
// running ones by cost and benefit, as MOSIX does. It does no I/O and reads no clock: the view
// of the cluster, this node's jobs and the measured costs of past migrations come in; decisions
// with their reasons (in words and numbers) go out. The agent runs it every `interval`; tern-sim
// runs the same code on simulated nodes. docs/balancer.md has the policy.
//
// Contract:
//  - Place(): the alive, non-draining node with the least (demand + 1) / capacity among those
//    with fresh information; self on ties (within `imbalance`), or while self has a free CPU
//    when `place_local_when_free` is set. Its own recent placements and moves count against a
//    node until newer information about it arrives.
//  - Decide(): at most max_outgoing - outgoing_in_flight migrations. Memory ushering first, then
//    drain, then CPU balancing by expected gain (remaining time ~ age) against cost (memory over
//    the measured rate, plus the measured freeze), with hysteresis: a job that moved stays
//    `stay_after_move`, a failed one is not retried for `retry_after_failure`, a move needs the
//    load gap to exceed `imbalance` and the gain to exceed min_gain_ratio x cost. IPC affinity
//    counts: talking jobs are pulled together, not apart. Pinned and refused jobs are skipped
//    with their reason.
//  - Information about a node is fresh for 5 x interval; staler nodes are not chosen.
//  - Reasons of SkipNotes do not change from one call to the next while nothing changes, so the
//    driver can report each once.
//
// Thread-safety: not thread-safe; driven from one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "tern/balancer/load_vector.hpp"

namespace tern::balancer {

struct NodeState {
  std::uint64_t id = 0;
  std::string name;
  bool self = false;
  bool alive = true;
  bool draining = false;
  double capacity = 1;  // CPUs
  double demand = 0;    // CPUs wanted
  double speed = 1;
  std::uint64_t mem_limit_bytes = 0;
  std::uint64_t mem_used_bytes = 0;
  std::chrono::milliseconds age{0};  // of this information
};

// A node as the Balancer sees it, from its gossiped load vector `age` old. Figures an older
// agent (or one without a node cgroup) sends as 0 fall back: capacity to cpus x speed, demand
// to its jobs' runnable (else CPU share), memory to MemTotal and its jobs' RSS. The caller sets
// self and alive. One mapping for the agent and tern-sim.
NodeState NodeStateFromLoad(const LoadVector& load, std::chrono::milliseconds age);

struct LocalJob {
  std::string id;
  double cpu_share = 0;
  double runnable = 0;
  double io_bytes_per_s = 0;
  double age_s = 0;
  std::uint64_t rss_bytes = 0;
  bool pinned = false;
  std::string refused;  // why the pre-flight refuses to move it ("" = it can move)
  // IPC affinity: the node each talking peer runs on and the bytes/s exchanged with it.
  std::vector<std::pair<std::uint64_t, double>> peer_nodes;
};

struct MigrationCosts {
  double bytes_per_s = 200e6;
  double freeze_s = 0.15;
  int samples = 0;
};

struct BalancerOptions {
  bool enabled = true;
  std::chrono::milliseconds interval{3000};
  std::chrono::milliseconds min_age{5000};
  std::chrono::milliseconds stay_after_move{30000};
  std::chrono::milliseconds retry_after_failure{120000};
  int max_outgoing = 1;
  double min_gain_ratio = 2.0;
  double imbalance = 0.2;
  // Place keeps a new job here while this node has a free CPU for it (demand + 1 <= capacity),
  // however much less loaded another node is: most jobs are short, a remote start costs, and
  // Decide moves the ones that turn out long and crowded (Harchol-Balter and Downey).
  bool place_local_when_free = false;
  // false: placements and moves come without their `reason` (tern-sim: millions of placements an
  // hour whose words nobody reads, each costing a few string formats); the choices are the same.
  bool reasons = true;
  double memory_high = 0.9;
  std::uint64_t postcopy_above_bytes = 256ull << 20;
};

struct MigrateDecision {
  std::string job;
  std::uint64_t to = 0;
  std::string to_name;
  bool postcopy = false;
  std::string kind;    // "balance", "memory", "affinity", "drain"
  std::string reason;  // words and numbers, for `tern events`
};

struct SkipNote {
  std::string job;
  std::string reason;
};

struct Decisions {
  std::vector<MigrateDecision> migrate;
  std::vector<SkipNote> skipped;
};

struct Placement {
  std::uint64_t node = 0;
  std::string name;
  std::string reason;
};

class Balancer {
 public:
  using Millis = std::chrono::milliseconds;
  explicit Balancer(BalancerOptions options);

  Placement Place(const std::vector<NodeState>& view, Millis now);
  Decisions Decide(const std::vector<NodeState>& view, const std::vector<LocalJob>& jobs,
                   const MigrationCosts& costs, int outgoing_in_flight, Millis now);
  void OnMigrationStarted(const std::string& job, std::uint64_t to, Millis now);
  void OnMigrationEnded(const std::string& job, bool moved, Millis now);
  void OnJobArrived(const std::string& job, Millis now);
  const BalancerOptions& options() const { return options_; }

  // Hints only, no effect on decisions (tern-sim: thousands of balancers in one process, each
  // cold in cache at its turn). Called some turns ahead, Prefetch() first: this object, then
  // PrefetchPlans() (which reads it) the plans and the first entries of the job maps.
  void Prefetch() const {
    const auto* first = reinterpret_cast<const char*>(this);
    for (std::size_t byte = 0; byte < sizeof(*this); byte += 64) __builtin_prefetch(first + byte);
  }
  void PrefetchPlans() const {
    auto lines = [](const auto& plans) {
      const auto* first = reinterpret_cast<const char*>(plans.data());
      for (std::size_t byte = 0; byte < plans.size() * sizeof(plans[0]); byte += 64) {
        __builtin_prefetch(first + byte);
      }
    };
    lines(planned_);
    lines(placed_);
    if (!arrived_.empty()) __builtin_prefetch(&*arrived_.begin());
    if (!failed_.empty()) __builtin_prefetch(&*failed_.begin());
  }

 private:
  // Load this balancer sent to a node by a move (a placement: PlacedPlan) that the node's
  // information may not show yet: counted until information sampled after `at` arrives.
  struct Planned {
    std::string job;
    std::uint64_t node = 0;
    double demand = 0;
    std::int64_t rss_bytes = 0;
    Millis at{0};
    bool in_flight = false;  // a move not ended yet: counted whatever the information's age
    bool outgoing = false;   // the source's side of a move: negative demand and memory
  };
  struct Candidate;

  void Prune(const std::vector<NodeState>& view, Millis now);
  struct PlannedLoad {
    double demand = 0;
    std::int64_t rss_bytes = 0;
  };
  // Per node of `view` (same order): the planned load its information does not show yet.
  std::vector<PlannedLoad> PlannedLoads(const std::vector<NodeState>& view, Millis now) const;
  bool Fresh(const NodeState& node) const;
  std::optional<std::string> Held(const LocalJob& job, Millis now) const;

  BalancerOptions options_;
  // The moves' plans, by job, then in the order planned (a multimap's order, in one block:
  // tern-sim runs thousands of balancers, each walking its plans at every placement and
  // decision).
  std::vector<Planned> planned_;
  // The placements' plans, in the order planned, apart: most plans are placements, and a
  // placement's is a node and a time (a job's whole CPU, kPlacedDemand, and no memory), 16 bytes
  // where a Planned takes 72 (tern-sim: the plans are a cache miss per line at every turn).
  struct PlacedPlan {
    std::uint64_t node = 0;
    Millis at{0};
  };
  static constexpr double kPlacedDemand = 1.0;
  std::vector<PlacedPlan> placed_;
  void Plan(Planned plan);
  std::span<Planned> PlansOf(const std::string& job);
  std::map<std::string, Millis> arrived_;  // job -> when it arrived here (or moved)
  std::map<std::string, Millis> failed_;   // job -> when its last move failed
  // At or before the oldest time in arrived_ / failed_ (max when empty): Prune walks a map only
  // when an entry may have expired.
  Millis arrived_oldest_ = Millis::max();
  Millis failed_oldest_ = Millis::max();
};

}  // namespace tern::balancer
