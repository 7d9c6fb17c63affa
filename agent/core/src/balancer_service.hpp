// BalancerService: runs this node's balancer::Balancer (docs/balancer.md "The agent side").
// Every [balancer] interval_ms it builds the Balancer's inputs — the cluster view from
// Cluster::Nodes(), this node's running jobs with their load, pinned flag and the pre-flight's
// blockers (a /proc scan on a worker thread, reused for 30 s, and the IPC blocker; never CRIU),
// the measured costs of this node's past migrations and its outgoing migrations in flight —
// calls Decide, and starts each decided move through MigrationDriver::Migrate (the same
// pre-flight and two-phase path as `tern migrate`). It also places new jobs (Place), keeps this
// node's drain flag (persisted as <state_dir>/draining) and tells a Balancer of jobs that
// arrived here.
//
// Contract:
//  - Every decision, placement, failure and drain change is a "balancer" event (fields action =
//    migrate | place | skip | failed | drain | undrain, job, to, kind, reason). A job's skip
//    reason is told when it changes (SkipNotes), not every interval.
//  - A failed move is an event; the Balancer keeps that job for retry_after_failure.
//  - With [balancer] enabled = false nothing is decided and nothing moves; Place() still
//    steers jobs off a draining node.
//
// Thread-safety: not thread-safe; every method and callback runs on the io_context thread
// (the pre-flight scans run on the service's own worker and report back to that thread).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tern/balancer/balancer.hpp>
#include <tern/expected.hpp>
#include <vector>

#include "balancer_inputs.hpp"
#include "tern/agent/config.hpp"

namespace tern::jobs {
class JobSupervisor;
struct JobRecord;
}  // namespace tern::jobs

namespace tern::agent {

class Cluster;
class MigrationDriver;

class BalancerService {
 public:
  struct Hooks {
    // Why the IPC layer will not let the job move ("" if it may).
    std::function<std::string(const std::string& job)> ipc_blocker;
    // The job's direct call sockets (not blockers: they are closed for a move).
    std::function<std::vector<std::string>(const std::string& job)> direct_sockets;
    // The job's IPC channel as the agent holds it ("socket:[INODE]" of the job's end; "": none).
    std::function<std::string(const std::string& job)> channel;
    // Publishes an event on the agent's EventBus.
    std::function<void(const std::string& type, nlohmann::json fields)> publish;
  };

  BalancerService(boost::asio::io_context& io, const AgentConfig& config,
                  jobs::JobSupervisor& supervisor, Cluster& cluster, MigrationDriver& migrations,
                  Hooks hooks);
  ~BalancerService();
  BalancerService(const BalancerService&) = delete;
  BalancerService& operator=(const BalancerService&) = delete;

  // Reads the drain flag and starts the interval timer (when enabled).
  void Start();
  void Stop();

  bool enabled() const { return config_.balancer.enabled; }
  bool draining() const { return draining_; }
  // Persists and announces this node's drain flag.
  Expected<void> SetDraining(bool draining);

  // Where a job submitted here without --node goes (node 0: nowhere, every node is draining
  // or unknown). Counts as a placement for the Balancer.
  balancer::Placement Place();
  // Announces where a job was placed and why.
  void Placed(const std::string& job, const balancer::Placement& placement);

  // Every "migration" event this node publishes (costs, outgoing moves in flight).
  void OnMigrationEvent(const nlohmann::json& fields);
  // Every change of a job record here (arrivals: a job whose newest migration ended here).
  void OnJobChanged(const jobs::JobRecord& record);

  // This node's memory as sampled now (every second). The view's own entry is as old as the
  // last heartbeat; memory can run out faster than an interval, so above `memory_high` this
  // runs a round at once (at most one a second) with these figures.
  void OnMemorySample(std::uint64_t used_bytes, std::uint64_t limit_bytes);

  // The view as the Balancer sees it now (this node's drain flag applied).
  std::vector<balancer::NodeState> View() const;

 private:
  struct Candidate;

  void Schedule();
  void Tick();
  void Decide(std::vector<Candidate> candidates);
  void StartMove(const balancer::MigrateDecision& decision);
  void Publish(nlohmann::json fields);
  balancer::Balancer::Millis Now() const;
  std::string DrainFile() const;

  boost::asio::io_context& io_;
  const AgentConfig& config_;
  jobs::JobSupervisor& supervisor_;
  Cluster& cluster_;
  MigrationDriver& migrations_;
  Hooks hooks_;
  balancer::Balancer balancer_;
  boost::asio::steady_timer timer_;
  std::uint64_t sampled_mem_used_ = 0;
  std::uint64_t sampled_mem_limit_ = 0;
  balancer::Balancer::Millis last_pressure_round_{-1'000'000};
  // The pre-flight's scans, by job, reused for kRescanAfter (only the scanner thread touches
  // them): a scan walks /proc for the job's processes and each one's fd table, and a busy node
  // would repeat it for every job every interval. A stale "movable" costs a move that the
  // migration's own full pre-flight refuses; a stale blocker, a move kRescanAfter later.
  struct CachedScan {
    std::string blockers;
    std::uint64_t rss_bytes = 0;
    pid_t pid = 0;  // the job's init when scanned: a job that came back is scanned afresh
    std::chrono::steady_clock::time_point at{};
  };
  static constexpr std::chrono::seconds kRescanAfter{30};
  std::map<std::string, CachedScan> scans_;
  boost::asio::thread_pool scanner_{1};
  // Completions posted back by the scanner check it: none run once the service is gone.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  bool draining_ = false;
  bool scanning_ = false;
  bool stopped_ = false;
  MigrationCostEstimator costs_;
  CpuShareMeter cpu_;
  SkipNotes skips_;
  // Jobs leaving this node now (the balancer's or `tern migrate`'s), by job: a move retried
  // after a CRIU hiccup starts again under a new migration id.
  std::set<std::string> outgoing_;
  std::set<std::string> moving_;                 // jobs this service is moving now
  std::map<std::string, std::size_t> arrivals_;  // job -> migrations its record listed
  std::chrono::steady_clock::time_point epoch_ = std::chrono::steady_clock::now();
};

}  // namespace tern::agent
