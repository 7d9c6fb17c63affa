// AgentApi: the /v1 API of docs/api.md, answered from this agent's state and, for anything
// that lives on another node, by forwarding the call to that node's agent.
//
// Contract:
//  - Handle() answers every call exactly once through `done`, possibly later (after peers
//    answered). Unknown paths answer 404, wrong methods 405, bad input 400 with one line.
//  - Job ids may be unique prefixes; a call that names a job resolves it cluster-wide
//    (exact id first, then prefix; 0 matches → 404, several → 409) and runs where the job is.
//  - A forwarded call (call.forwarded) is answered from local state only: one hop, no loops.
//  - Writes need an identified caller (Unix socket, an admin token, or a peer relaying one); a
//    job runs as its caller, and only uid 0 may name another user.
//  - A user sees and acts on their own jobs only: other users' jobs are left out of listings
//    and events, and a call naming one answers 403 (JobViewerOf). Root, admin and read-only
//    tokens see every job; logs need the job's user or root.
//
// Thread-safety: not thread-safe; everything runs on the agent's io_context thread.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "tern/agent/api_call.hpp"

namespace tern::jobs {
class JobSupervisor;
}

namespace tern::agent {

class BalancerService;
class Cluster;
class EventBus;
class FaultHook;
class MigrationDriver;
class MigrationHistory;

// Whose jobs `caller` may see: nullopt for every job (root, tokens), else only that uid's.
std::optional<uid_t> JobViewerOf(const ApiCaller& caller);

class AgentApi {
 public:
  AgentApi(jobs::JobSupervisor& supervisor, Cluster& cluster, MigrationDriver& migrations,
           std::string version);

  void Handle(ApiCall call, ApiDone done);
  // How many IPC rights a job on this node holds (shown as "ipc_rights" in its status).
  // What /v1/info says about load measurement (`tern doctor` shows it): {"taskstats": {"ok",
  // "detail"}, "cgroup": {"ok", "detail"}}.
  void SetMeasurement(nlohmann::json measurement) { measurement_ = std::move(measurement); }
  void SetIpcRightCount(std::function<std::size_t(const std::string& job)> count) {
    ipc_rights_ = std::move(count);
  }
  // Placement, drain and pin go through `balancer`; GET /v1/events/recent reads `events`.
  void SetBalancer(BalancerService* balancer, EventBus* events) {
    balancer_ = balancer;
    events_ = events;
  }
  // GET /v1/migrations reads `history` (this node's), and asks the other agents for theirs.
  void SetMigrationHistory(const MigrationHistory* history) { history_ = history; }
  // GET/POST/DELETE /v1/faults (root only, this node only) read, arm and disarm `hook`.
  void SetFaultHook(FaultHook* hook) { faults_ = hook; }

 private:
  struct JobMatch;

  void Info(const ApiCall& call, ApiDone done);
  void Faults(const ApiCall& call, ApiDone done);
  void ListJobs(const ApiCall& call, ApiDone done);
  void SubmitJob(const ApiCall& call, ApiDone done);
  void ListNodes(const ApiCall& call, ApiDone done);
  // POST /v1/nodes/{name}/drain|undrain, answered by that node.
  void NodeCall(const ApiCall& call, const std::string& name, const std::string& action,
                ApiDone done);
  // GET /v1/events/recent: the kept events of every node (or this one), merged by time.
  void RecentEvents(const ApiCall& call, ApiDone done);
  // GET /v1/migrations: every node's recent migrations, newest first.
  void ListMigrations(const ApiCall& call, ApiDone done);
  // Starts the job here, or on `node` (forwarded), as SubmitJob decided.
  void SubmitTo(const ApiCall& call, nlohmann::json body, const std::string& node,
                std::function<void(const std::string& job)> placed, ApiDone done);
  // GET /v1/jobs/{id}, POST /v1/jobs/{id}/cancel|migrate|pin|unpin, GET /v1/jobs/{id}/logs.
  void JobCall(ApiCall call, const std::string& id, const std::string& action, ApiDone done);
  void LocalJobCall(const ApiCall& call, const std::string& id, const std::string& action,
                    ApiDone done);

  jobs::JobSupervisor& supervisor_;
  Cluster& cluster_;
  MigrationDriver& migrations_;
  std::string version_;
  nlohmann::json measurement_ = nlohmann::json::object();
  std::function<std::size_t(const std::string&)> ipc_rights_;
  BalancerService* balancer_ = nullptr;
  EventBus* events_ = nullptr;
  const MigrationHistory* history_ = nullptr;
  FaultHook* faults_ = nullptr;
};

}  // namespace tern::agent
