#include "balancer_service.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <tern/jobs/job_supervisor.hpp>
#include <tern/migrate/preflight.hpp>

#include "tern/agent/cluster.hpp"
#include "tern/agent/migration_driver.hpp"

namespace tern::agent {
namespace {

using nlohmann::json;

std::string Join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& part : parts) out += (out.empty() ? "" : "; ") + part;
  return out;
}

std::string Seconds(std::chrono::milliseconds time) {
  char text[32];
  std::snprintf(text, sizeof text, "%.0f s", std::chrono::duration<double>(time).count());
  return text;
}

}  // namespace

// A running job of this node, as gathered on the io thread for the scanner.
struct BalancerService::Candidate {
  balancer::LocalJob job;
  pid_t pid = 0;
  std::string dir;
  std::set<std::string> direct;
  std::string channel;       // the IPC channel the agent holds ("" before a job has one)
  bool own_network = false;  // a `--net` job: its TCP and UDP sockets move with it
};

BalancerService::BalancerService(boost::asio::io_context& io, const AgentConfig& config,
                                 jobs::JobSupervisor& supervisor, Cluster& cluster,
                                 MigrationDriver& migrations, Hooks hooks)
    : io_(io),
      config_(config),
      supervisor_(supervisor),
      cluster_(cluster),
      migrations_(migrations),
      hooks_(std::move(hooks)),
      balancer_(config.balancer),
      timer_(io) {}

BalancerService::~BalancerService() {
  Stop();
  *alive_ = false;
  scanner_.join();
}

std::string BalancerService::DrainFile() const { return config_.state_dir + "/draining"; }

void BalancerService::Start() {
  std::error_code error;
  draining_ = std::filesystem::exists(DrainFile(), error);
  if (draining_)
    spdlog::info("this node is draining (`tern undrain {}` ends it)", cluster_.self().name);
  if (!enabled()) {
    spdlog::info(
        "the balancer is off ([balancer] enabled = false): jobs move only by `tern migrate`");
    return;
  }
  Schedule();
}

void BalancerService::Stop() {
  stopped_ = true;
  timer_.cancel();
}

balancer::Balancer::Millis BalancerService::Now() const {
  return std::chrono::duration_cast<balancer::Balancer::Millis>(std::chrono::steady_clock::now() -
                                                                epoch_);
}

void BalancerService::Publish(json fields) {
  if (hooks_.publish) hooks_.publish("balancer", std::move(fields));
}

Expected<void> BalancerService::SetDraining(bool draining) {
  if (draining != draining_) {
    std::error_code error;
    if (draining) {
      std::ofstream file(DrainFile(), std::ios::trunc);
      file << "draining since a `tern drain`; `tern undrain` ends it\n";
      if (!file) return Fail("cannot write " + DrainFile() + ": " + std::strerror(errno));
    } else if (!std::filesystem::remove(DrainFile(), error) && error) {
      return Fail("cannot remove " + DrainFile() + ": " + error.message());
    }
    draining_ = draining;
  }
  std::string reason = draining
                           ? "takes no new jobs and moves its movable jobs away by live migration"
                           : "takes new jobs again";
  if (draining && !enabled()) {
    reason =
        "takes no new jobs; its jobs stay: the balancer is off here ([balancer] enabled = "
        "false)";
  }
  spdlog::info("node {} {}", cluster_.self().name, reason);
  Publish({{"action", draining ? "drain" : "undrain"},
           {"to", cluster_.self().name},
           {"reason", cluster_.self().name + " " + reason}});
  return {};
}

std::vector<balancer::NodeState> BalancerService::View() const {
  std::vector<balancer::NodeState> view;
  for (const auto& node : cluster_.Nodes()) {
    auto state = ToNodeState(node);
    if (state.self) {
      // Our own flag and memory sample are newer than the load vector of the last heartbeat.
      state.draining = draining_;
      state.alive = true;
      if (sampled_mem_limit_ > 0) {
        state.mem_limit_bytes = sampled_mem_limit_;
        state.mem_used_bytes = sampled_mem_used_;
      }
    }
    view.push_back(std::move(state));
  }
  return view;
}

void BalancerService::OnMemorySample(std::uint64_t used_bytes, std::uint64_t limit_bytes) {
  sampled_mem_used_ = used_bytes;
  sampled_mem_limit_ = limit_bytes;
  if (stopped_ || !config_.balancer.enabled || limit_bytes == 0) return;
  if (static_cast<double>(used_bytes) <=
      config_.balancer.memory_high * static_cast<double>(limit_bytes)) {
    return;
  }
  const auto now = Now();
  if (now - last_pressure_round_ < std::chrono::seconds(1)) return;
  last_pressure_round_ = now;
  Tick();
}

balancer::Placement BalancerService::Place() { return balancer_.Place(View(), Now()); }

void BalancerService::Placed(const std::string& job, const balancer::Placement& placement) {
  Publish(
      {{"action", "place"}, {"job", job}, {"to", placement.name}, {"reason", placement.reason}});
}

void BalancerService::OnMigrationEvent(const json& fields) {
  const std::string event = fields.value("event", "");
  const std::string job = fields.value("job", "");
  if (event == "started") {
    if (fields.value("from", "") == cluster_.self().name) outgoing_.insert(job);
    return;
  }
  if (event == "moved" || event == "failed") outgoing_.erase(job);
  if (event == "moved" && fields.value("from", "") == cluster_.self().name) costs_.OnMoved(fields);
}

void BalancerService::OnJobChanged(const jobs::JobRecord& record) {
  if (record.state != jobs::JobState::kRunning) {
    arrivals_.erase(record.id);
    return;
  }
  auto known = arrivals_.find(record.id);
  const std::size_t before = known == arrivals_.end() ? 0 : known->second;
  arrivals_[record.id] = record.migrations.size();
  if (record.migrations.size() > before && record.migrations.back().is_object() &&
      record.migrations.back().value("to", "") == cluster_.self().name) {
    balancer_.OnJobArrived(record.id, Now());
  }
}

void BalancerService::Schedule() {
  if (stopped_) return;
  timer_.expires_after(config_.balancer.interval);
  timer_.async_wait([this](const boost::system::error_code& error) {
    if (error || stopped_) return;
    Tick();
    Schedule();
  });
}

void BalancerService::Tick() {
  if (scanning_) return;  // the last scan has not come back yet: skip this interval
  const auto now = Now();
  const auto wall = std::chrono::system_clock::now();
  std::map<std::string, balancer::JobLoad> loads;
  for (const auto& node : cluster_.Nodes()) {
    if (!node.self || !node.load) continue;
    for (const auto& job : node.load->jobs) loads[job.job_id] = job;
  }
  std::vector<Candidate> candidates;
  std::set<std::string> running;
  for (const auto& record : supervisor_.List()) {
    if (record.state != jobs::JobState::kRunning) continue;
    running.insert(record.id);
    const double share = cpu_.Update(record.id, record.cpu_seconds, now);
    // A job that is moving now is not a candidate (its move is counted as in flight).
    if (!record.migrating_id.empty() || moving_.count(record.id) != 0) continue;
    Candidate candidate;
    balancer::LocalJob& job = candidate.job;
    job.id = record.id;
    job.pinned = record.pinned;
    job.rss_bytes = record.rss_bytes;
    job.age_s = std::max(0.0, std::chrono::duration<double>(wall - record.submitted_at).count());
    if (auto load = loads.find(record.id); load != loads.end()) {
      job.cpu_share = load->second.cpu_share;
      job.runnable = load->second.runnable;
      job.io_bytes_per_s = load->second.io_bytes_per_s;
      if (load->second.rss_bytes > 0) job.rss_bytes = load->second.rss_bytes;
      if (load->second.age_s > 0) job.age_s = load->second.age_s;
    }
    // Until the load vector carries per-job CPU figures, this node measures its own.
    if (job.cpu_share <= 0) job.cpu_share = share;
    if (job.runnable <= 0) job.runnable = job.cpu_share;
    if (!job.pinned) {
      if (hooks_.ipc_blocker) job.refused = hooks_.ipc_blocker(record.id);
      if (hooks_.direct_sockets) {
        for (auto& socket : hooks_.direct_sockets(record.id)) candidate.direct.insert(socket);
      }
      if (hooks_.channel) candidate.channel = hooks_.channel(record.id);
    }
    candidate.pid = record.pid;
    candidate.dir = record.dir;
    candidate.own_network = !record.net_address.empty();
    candidates.push_back(std::move(candidate));
  }
  cpu_.KeepOnly(running);
  skips_.KeepOnly(running);
  scanning_ = true;
  // Only a drain or a shortage of memory moves an idle job; otherwise the scan of jobs that
  // want no CPU is work for nothing (a node of 100 sleeping jobs walked 100 fd tables every
  // interval). The move itself runs the full pre-flight anyway.
  const bool idle_jobs_may_move =
      draining_ || (sampled_mem_limit_ > 0 &&
                    static_cast<double>(sampled_mem_used_) >
                        config_.balancer.memory_high * static_cast<double>(sampled_mem_limit_));
  // The pre-flight's /proc scan of each movable job (cheap, but file I/O: not on this thread).
  boost::asio::post(scanner_, [this, alive = alive_, idle_jobs_may_move,
                               candidates = std::move(candidates)]() mutable {
    const auto now = std::chrono::steady_clock::now();
    std::erase_if(scans_, [&](const auto& entry) {
      return now - entry.second.at >= kRescanAfter ||
             std::none_of(candidates.begin(), candidates.end(),
                          [&](const Candidate& c) { return c.job.id == entry.first; });
    });
    for (auto& candidate : candidates) {
      if (candidate.job.pinned || !candidate.job.refused.empty()) continue;
      if (!idle_jobs_may_move && candidate.job.runnable < 0.1) continue;
      auto cached = scans_.find(candidate.job.id);
      if (cached == scans_.end()) {
        const auto scan = migrate::ScanJob(candidate.pid, candidate.dir, candidate.direct,
                                           candidate.own_network, candidate.channel);
        cached = scans_
                     .emplace(candidate.job.id,
                              CachedScan{Join(scan.blockers), scan.rss_bytes, candidate.pid, now})
                     .first;
      }
      candidate.job.refused = cached->second.blockers;
      if (cached->second.rss_bytes > 0) candidate.job.rss_bytes = cached->second.rss_bytes;
    }
    boost::asio::post(io_, [this, alive, candidates = std::move(candidates)]() mutable {
      if (!*alive) return;
      scanning_ = false;
      if (!stopped_) Decide(std::move(candidates));
    });
  });
}

void BalancerService::Decide(std::vector<Candidate> candidates) {
  const auto now = Now();
  std::vector<balancer::LocalJob> jobs;
  jobs.reserve(candidates.size());
  for (auto& candidate : candidates) {
    // A job that ended or started moving while it was scanned is no longer a candidate.
    auto record = supervisor_.Get(candidate.job.id);
    if (!record || record->state != jobs::JobState::kRunning || !record->migrating_id.empty()) {
      continue;
    }
    candidate.job.pinned = record->pinned;
    jobs.push_back(std::move(candidate.job));
  }
  const int in_flight = static_cast<int>(std::max(outgoing_.size(), moving_.size()));
  auto decisions = balancer_.Decide(View(), jobs, costs_.costs(), in_flight, now);
  for (const auto& skip : decisions.skipped) {
    if (skips_.ShouldTell(skip.job, skip.reason, now)) {
      Publish({{"action", "skip"}, {"job", skip.job}, {"reason", skip.reason}});
    }
  }
  for (const auto& decision : decisions.migrate) StartMove(decision);
}

void BalancerService::StartMove(const balancer::MigrateDecision& decision) {
  const auto now = Now();
  auto record = supervisor_.Get(decision.job);
  if (!record || record->state != jobs::JobState::kRunning) return;
  spdlog::info("balancer: move job {} to {} ({}): {}", decision.job, decision.to_name,
               decision.kind, decision.reason);
  Publish(MigrateEvent(decision));
  balancer_.OnMigrationStarted(decision.job, decision.to, now);
  moving_.insert(decision.job);
  ApiCall call;
  call.method = "POST";
  call.target = "/v1/jobs/" + decision.job + "/migrate";
  call.body =
      json{{"node", decision.to_name}, {"mode", decision.postcopy ? "postcopy" : "precopy"}}.dump();
  call.caller.uid = 0;
  call.caller.gid = 0;
  call.caller.identified = true;
  call.caller.via = "balancer";
  migrations_.Migrate(call, *record, [this, alive = alive_, decision](ApiResult result) {
    if (!*alive) return;
    moving_.erase(decision.job);
    const bool moved = result.status == 200;
    balancer_.OnMigrationEnded(decision.job, moved, Now());
    if (moved) return;  // the migration's own "moved" event tells the rest
    const std::string error = ErrorMessageOf(result);
    spdlog::warn("balancer: moving job {} to {} failed: {}", decision.job, decision.to_name, error);
    Publish({{"action", "failed"},
             {"job", decision.job},
             {"to", decision.to_name},
             {"kind", decision.kind},
             {"reason",
              error + "; not tried again for " + Seconds(config_.balancer.retry_after_failure)}});
  });
}

}  // namespace tern::agent
