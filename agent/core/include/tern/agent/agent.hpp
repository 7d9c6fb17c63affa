// Agent: one ternd — its identity, its jobs, its place in the cluster and its API servers,
// wired together on one io_context.
//
// Contract: Start() brings everything up in dependency order (state dir and node id, jobs
// re-adopted from the state dir, cluster transport, API sockets) and fails with one line if any
// of it cannot start. Stop() closes listeners and links; running jobs are left running so that
// a restarted agent re-adopts them.
//
// Thread-safety: not thread-safe; construct, Start and Stop on the io_context thread.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <memory>
#include <string>
#include <tern/balancer/load_vector.hpp>

#include "tern/agent/config.hpp"
#include "tern/agent/host_load.hpp"
#include "tern/agent/migration_history.hpp"
#include "tern/agent/node_identity.hpp"

namespace tern::jobs {
class JobSupervisor;
}
namespace tern::http {
class HttpServer;
}

namespace tern::ipc {
class IpcService;
}  // namespace tern::ipc

namespace tern::agent {

class AgentApi;
class ClusterEventFeed;
class FaultHook;
class BalancerService;
class JobUsageSampler;
class NodeCgroup;
class Cluster;
class EventBus;
class MigrationDriver;

class Agent {
 public:
  Agent(boost::asio::io_context& io, AgentConfig config, std::string version);
  ~Agent();

  Expected<void> Start();
  void Stop();

 private:
  void ScheduleSample();
  balancer::LoadVector LocalLoad();
  // This node's memory (node cgroup, else the jobs' RSS sum, against the host's memory).
  void FillMemory(balancer::LoadVector& load, std::uint64_t rss_sum) const;
  // GET /metrics (docs/api.md).
  std::string Metrics() const;

  boost::asio::io_context& io_;
  AgentConfig config_;
  std::string version_;
  NodeIdentity identity_;
  HostLoadSampler sampler_;
  HostLoad last_host_load_;
  std::unique_ptr<NodeCgroup> node_cgroup_;  // null: no [node] cgroup, or it cannot be used
  std::unique_ptr<JobUsageSampler> job_usage_;
  // Before events_: the bus's listener feeds it until the bus is gone.
  MigrationHistory migration_history_;
  std::unique_ptr<EventBus> events_;
  std::unique_ptr<ipc::IpcService> ipc_;
  std::unique_ptr<jobs::JobSupervisor> supervisor_;
  std::unique_ptr<Cluster> cluster_;
  std::unique_ptr<FaultHook> faults_;  // before migrations_, which fires it
  std::unique_ptr<MigrationDriver> migrations_;
  std::unique_ptr<BalancerService> balancer_;
  std::unique_ptr<AgentApi> api_;
  std::unique_ptr<ClusterEventFeed> feed_;
  std::unique_ptr<http::HttpServer> http_;
  boost::asio::steady_timer sample_timer_;
};

}  // namespace tern::agent
