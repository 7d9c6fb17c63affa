#include "tern/agent/agent.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <filesystem>
#include <tern/http/server.hpp>
#include <tern/ipc/node/ipc_service.hpp>
#include <tern/jobs/job_supervisor.hpp>

#include "api_access.hpp"
#include "balancer_service.hpp"
#include "fault_actions.hpp"
#include "fault_hook.hpp"
#include "job_usage.hpp"
#include "node_cgroup.hpp"
#include "tern/agent/agent_api.hpp"
#include "tern/agent/cluster.hpp"
#include "tern/agent/cluster_events.hpp"
#include "tern/agent/dashboard.hpp"
#include "tern/agent/event_bus.hpp"
#include "tern/agent/metrics.hpp"
#include "tern/agent/migration_driver.hpp"
#include "tern/agent/target.hpp"

namespace tern::agent {

Agent::Agent(boost::asio::io_context& io, AgentConfig config, std::string version)
    : io_(io), config_(std::move(config)), version_(std::move(version)), sample_timer_(io) {}

Agent::~Agent() { Stop(); }

Expected<void> Agent::Start() {
  auto identity = LoadOrCreateNodeIdentity(config_.state_dir, config_.node_name);
  if (!identity) return Unexpected<Error>{identity.error()};
  identity_ = *identity;
  // The state dir is traversable but not listable (0711): jobs, running as their users, reach
  // their own directories below it by path; no user can list the jobs, records or migrations.
  chmod(config_.state_dir.c_str(), 0711);
  std::error_code ignored;
  std::filesystem::create_directories(config_.run_dir, ignored);
  chmod(config_.run_dir.c_str(), 0755);

  jobs::SupervisorOptions job_options;
  job_options.state_dir = config_.state_dir;
  job_options.jobs_dir = config_.jobs_dir;
  job_options.node_name = identity_.name;
  job_options.init_path = config_.init_path;
  job_options.cancel_grace = config_.cancel_grace;
  job_options.net = {config_.net_pool, config_.net_subnet, config_.net_uplink};
  if (job_options.net.enabled()) {
    if (auto prepared = jobs::PrepareNodeNetwork(job_options.net); prepared) {
      spdlog::info("job network: pool {}, jobs homed here from {}, uplink {}", config_.net_pool,
                   config_.net_subnet, config_.net_uplink);
    } else {
      spdlog::error("[net] cannot be set up: {}; --net jobs cannot start here",
                    prepared.error().message);
      job_options.net = {};
    }
  }
  if (!config_.cgroup.empty()) {
    auto cgroup = NodeCgroup::Open(config_.cgroup, config_.cgroup_create);
    if (cgroup) {
      node_cgroup_ = std::make_unique<NodeCgroup>(std::move(*cgroup));
      job_options.cgroup_procs = node_cgroup_->ProcsFiles();
      const double quota = node_cgroup_->CpuQuota();
      const std::uint64_t limit = node_cgroup_->MemoryLimit();
      spdlog::info("jobs run in cgroup {}: {} CPU, memory limit {}", node_cgroup_->Describe(),
                   quota > 0 ? fmt::format("{:.2f}", quota) : std::string("no quota,"),
                   limit > 0 ? fmt::format("{} MiB", limit >> 20) : std::string("none"));
    } else {
      spdlog::error("[node] cgroup '{}' cannot be used: {}; jobs run without it", config_.cgroup,
                    cgroup.error().message);
    }
  }
  job_usage_ = std::make_unique<JobUsageSampler>();
  spdlog::info("job usage from {}", job_usage_->source());
  // Events name jobs; a user sees only their own jobs' events (docs/security.md).
  events_ = std::make_unique<EventBus>(
      identity_.name, [this](const std::string& job) -> std::optional<uid_t> {
        if (!supervisor_) return std::nullopt;
        auto record = supervisor_->Get(job);
        return record ? std::optional<uid_t>(record->uid) : std::nullopt;
      });
  events_->Listen([this](const nlohmann::json& event, const std::string&) {
    migration_history_.OnEvent(event);
  });
  // Cluster comes later; IPC frames find it through this pointer once it exists.
  ipc_ = std::make_unique<ipc::IpcService>(
      io_, identity_.id,
      [this](std::uint64_t node, std::vector<ipc::Frame> frames) {
        return cluster_ && cluster_->SendIpc(node, std::move(frames));
      },
      [this](std::uint64_t node) { return cluster_ ? cluster_->IpcBacklog(node) : 0; },
      config_.ipc_limits);
  ipc_->SetJobUidSource([this](const std::string& job) -> std::optional<std::uint32_t> {
    const auto record = supervisor_ ? supervisor_->Get(job) : std::nullopt;
    if (!record) return std::nullopt;
    return static_cast<std::uint32_t>(record->uid);
  });
  ipc_->SetDirectHooks(
      [this](std::uint64_t node) -> std::string {
        if (!cluster_) return "";
        for (const auto& view : cluster_->Nodes()) {
          if (view.id != node) continue;
          // "host:port" of its cluster listener: the host is where its direct listener is.
          const auto colon = view.address.rfind(':');
          return colon == std::string::npos ? view.address : view.address.substr(0, colon);
        }
        return "";
      },
      [this](const std::string& job) -> int {
        if (!supervisor_) return 0;
        const auto record = supervisor_->Get(job);
        return record ? static_cast<int>(record->pid) : 0;
      });
  // Jobs whose channel breaks (this agent killed and restarted) re-attach here.
  if (auto listening = ipc_->ListenForJobs(config_.run_dir + "/ipc", config_.secret); !listening) {
    spdlog::error("IPC: jobs cannot re-attach after an agent restart: {}",
                  listening.error().message);
  }
  job_options.open_ipc_channel = [this](const std::string& job) { return ipc_->OpenChannel(job); };
  supervisor_ =
      std::make_unique<jobs::JobSupervisor>(io_, job_options, [this](const jobs::JobRecord& job) {
        // A job that ended gives up its IPC rights at once (peers get their notifications).
        if (job.state != jobs::JobState::kRunning) ipc_->CloseChannel(job.id);
        spdlog::info("job {} ({}) is {}", job.id, job.name, jobs::ToString(job.state));
        if (balancer_) balancer_->OnJobChanged(job);
        events_->Publish("job", jobs::ToJson(job, std::chrono::system_clock::now()));
      });
  const auto& init = supervisor_->init();
  if (!init) return Unexpected<Error>{init.error()};
  if (init->copied) {
    spdlog::warn(
        "tern-init at {} cannot be run by every user ({}): jobs run the agent's copy at {}",
        config_.init_path, init->why_copied, init->path);
  }
  if (!init->others_can_run) {
    spdlog::error(
        "jobs of users other than root cannot start on this node: tern-init at {} "
        "cannot be run by them ({}); install tern-init in a directory every user can "
        "enter and set [jobs] init_path",
        init->path, init->problem);
  }
  supervisor_->Adopt();

  cluster_ = std::make_unique<Cluster>(io_, config_, identity_);
  migrations_ = std::make_unique<MigrationDriver>(io_, config_, *supervisor_, *cluster_);
  if (node_cgroup_) migrations_->SetCgroupRoots(node_cgroup_->CriuRoots());
  migrations_->SetPublisher([this](const std::string& type, nlohmann::json fields) {
    if (balancer_ && type == "migration") balancer_->OnMigrationEvent(fields);
    events_->Publish(type, std::move(fields));
  });
  // Why the IPC layer keeps a job here ("" if it may move): for `tern migrate` and the balancer.
  auto move_blocker = [this](const std::string& job) -> std::string {
    const auto sharing = ipc_->JobsSharingRegions(job);
    if (!sharing.empty()) {
      std::string others;
      for (const auto& other : sharing) others += (others.empty() ? "" : ", ") + other;
      return "the job shares a memory region with " + others +
             " on this node (jobs that share a region move together or not at all)";
    }
    return ipc_->MoveBlocker(job);
  };
  migrations_->SetIpcHooks(
      {.blocker = move_blocker,
       .rights = [this](const std::string& job) { return ipc_->RightCount(job); },
       .channel = [this](const std::string& job) { return ipc_->ChannelSocket(job); },
       .open = [this](const std::string& job) { return ipc_->OpenChannelForMove(job); },
       .close = [this](const std::string& job) { ipc_->CloseChannel(job); },
       .hand_off = [this](const std::string& job, std::uint64_t to,
                          int init_pid) { return ipc_->HandOff(job, to, init_pid); },
       .take_over = [this](const std::string& job,
                           std::string_view state) { return ipc_->TakeOver(job, state); },
       .settle_hand_off = [this](const std::string& job) { ipc_->SettleHandOff(job); },
       .forget_moved = [this](const std::string& job) { ipc_->ForgetMovedJob(job); },
       .direct_sockets = [this](const std::string& job) { return ipc_->DirectSockets(job); },
       .suspend_direct = [this](const std::string& job) { ipc_->SuspendDirect(job); },
       .resume_direct = [this](const std::string& job) { ipc_->ResumeDirect(job); }});
  balancer_ = std::make_unique<BalancerService>(
      io_, config_, *supervisor_, *cluster_, *migrations_,
      BalancerService::Hooks{
          .ipc_blocker = move_blocker,
          .direct_sockets = [this](const std::string& job) { return ipc_->DirectSockets(job); },
          .channel = [this](const std::string& job) { return ipc_->ChannelSocket(job); },
          .publish = [this](const std::string& type,
                            nlohmann::json fields) { events_->Publish(type, std::move(fields)); }});
  api_ = std::make_unique<AgentApi>(*supervisor_, *cluster_, *migrations_, version_);
  api_->SetBalancer(balancer_.get(), events_.get());
  api_->SetMigrationHistory(&migration_history_);
  faults_ = std::make_unique<FaultHook>(config_.testing_faults);
  if (config_.testing_faults) {
    spdlog::warn("[testing] faults is on: an admin may arm faults that kill this agent");
    LiftLeftoverLinkFaults(config_.cluster_advertise);
    faults_->Restore(LoadArmedFaults(config_.state_dir));
    faults_->SetOnChange([state_dir = config_.state_dir](const std::vector<FaultPlan>& armed) {
      SaveArmedFaults(armed, state_dir);
    });
  }
  api_->SetFaultHook(faults_.get());
  migrations_->SetFaultHook(faults_.get());
  feed_ = std::make_unique<ClusterEventFeed>(io_, *cluster_, *events_);
  {
    nlohmann::json cgroup = {{"ok", node_cgroup_ != nullptr}};
    if (node_cgroup_) {
      cgroup["detail"] = node_cgroup_->Describe();
    } else {
      cgroup["detail"] =
          config_.cgroup.empty()
              ? "none configured ([node] cgroup)"
              : "'" + config_.cgroup + "' unusable: " +
                    NodeCgroup::Open(config_.cgroup, config_.cgroup_create).error().message;
    }
    api_->SetMeasurement(
        {{"taskstats", {{"ok", job_usage_->taskstats()}, {"detail", job_usage_->source()}}},
         {"cgroup", std::move(cgroup)}});
  }
  api_->SetIpcRightCount([this](const std::string& job) { return ipc_->RightCount(job); });
  cluster_->SetRequestHandler(
      [this](ApiCall call, ApiDone done) { api_->Handle(std::move(call), std::move(done)); });
  cluster_->SetLoadProvider([this] { return LocalLoad(); });
  cluster_->SetIpcHandlers(
      [this](std::uint64_t node, ipc::FrameType type, std::string payload) {
        return ipc_->OnNodeFrame(node, type, std::move(payload));
      },
      [this](std::uint64_t node, bool up) {
        if (up) {
          ipc_->NodeUp(node);
        } else {
          ipc_->NodeDown(node);
        }
      });
  cluster_->SetNodeStateListener([this](std::uint64_t node_id, balancer::MemberState state) {
    migrations_->OnNodeState(node_id, state == balancer::MemberState::kAlive);
    events_->Publish("node", {{"name", cluster_->NameOf(node_id)},
                              {"state", std::string(balancer::ToString(state))}});
  });
  last_host_load_ = sampler_.Sample(std::chrono::steady_clock::now());
  for (const auto& problem : last_host_load_.problems) spdlog::warn("load sampling: {}", problem);
  if (auto started = cluster_->Start(); !started) return started;

  http::ServerOptions http_options;
  if (!config_.api_listen.empty()) {
    auto tls = TcpApiTls(config_);
    if (!tls) return Unexpected<Error>{tls.error()};
    http_options.tcp_tls = *tls;
  }
  http_options.max_connections = config_.api_max_connections;
  http_options.request_timeout = config_.api_request_timeout;
  http_options.event_queue_limit = config_.api_event_queue_bytes;
  http_options.authenticate_tcp = [tokens_file = config_.api_tokens_file](
                                      const http::Request& header, http::Caller& caller) {
    return AuthenticateTcp(tokens_file, header, caller);
  };
  http_ = std::make_unique<http::HttpServer>(
      io_,
      [this](const http::Request& request, const http::Caller& caller, http::Responder responder) {
        ApiCall call;
        call.method = std::string(request.method_string());
        call.target = std::string(request.target());
        call.body = request.body();
        call.caller = ApiCallerOf(caller);
        if (request.method() == boost::beast::http::verb::get) {
          const Target target = ParseTarget(call.target);
          if (target.path == "/v1/events" && target.query.count("local") != 0) {
            std::int64_t since = -1;
            try {
              if (target.query.count("since") != 0) since = std::stoll(target.Get("since", ""));
            } catch (const std::exception&) {
              since = -1;  // a since that is not a number replays as if there were none
            }
            events_->Subscribe(responder.StartEventStream(), since, JobViewerOf(call.caller));
            return;
          }
          if (target.path == "/v1/events") {
            // The browser's EventSource resends the last id it saw; curl and tern use ?cursor=.
            std::string text = std::string(request["Last-Event-ID"]);
            if (text.empty()) text = target.Get("cursor", "");
            std::optional<EventCursor> cursor;
            if (!text.empty()) {
              auto parsed = ParseEventCursor(text);
              if (!parsed) {
                responder.Send(http::ErrorResponse(400, parsed.error().message));
                return;
              }
              cursor = std::move(*parsed);
            }
            feed_->Subscribe(responder.StartEventStream(), std::move(cursor),
                             JobViewerOf(call.caller));
            return;
          }
          if (const DashboardAsset* asset = FindDashboardAsset(target.path)) {
            http::Response response =
                http::TextResponse(200, std::string(asset->data), std::string(asset->content_type));
            for (const auto& [name, value] : DashboardResponseHeaders()) response.set(name, value);
            responder.Send(std::move(response));
            return;
          }
          if (target.path == "/metrics") {
            responder.Send(
                http::TextResponse(200, Metrics(), "text/plain; version=0.0.4; charset=utf-8"));
            return;
          }
        }
        api_->Handle(std::move(call), [responder](ApiResult result) mutable {
          http::Response response{static_cast<boost::beast::http::status>(result.status), 11};
          response.set(boost::beast::http::field::content_type, result.content_type);
          for (const auto& [name, value] : result.headers) response.set(name, value);
          response.body() = std::move(result.body);
          response.prepare_payload();
          responder.Send(std::move(response));
        });
      },
      std::move(http_options));
  if (auto listening = http_->ListenUnix(config_.api_unix_socket, 0666); !listening) {
    return listening;
  }
  if (!config_.api_listen.empty()) {
    if (auto listening = http_->ListenTcp(config_.api_listen); !listening) return listening;
  }
  spdlog::info("ternd {} node {} ({}): API on {} and {}, {} job(s) adopted", version_,
               identity_.name, NodeIdHex(identity_.id), config_.api_unix_socket,
               config_.api_listen.empty() ? "(no TCP)" : config_.api_listen,
               supervisor_->RunningCount());
  ScheduleSample();
  balancer_->Start();
  return {};
}

void Agent::Stop() {
  sample_timer_.cancel();
  if (feed_) feed_->Stop();
  if (balancer_) balancer_->Stop();
  if (http_) http_->Stop();
  if (cluster_) cluster_->Stop();
  if (ipc_) ipc_->Stop();
}

void Agent::ScheduleSample() {
  sample_timer_.expires_after(std::chrono::seconds(1));
  sample_timer_.async_wait([this](const boost::system::error_code& error) {
    if (error) return;
    const auto now = std::chrono::steady_clock::now();
    last_host_load_ = sampler_.Sample(now);
    // One sampler for every job figure: `tern ps` (the records), the load vector and the
    // balancer read the same sample; jobs that used no CPU lately are read less often.
    std::map<std::string, pid_t> running;
    supervisor_->ForEachRunning(
        [&](const jobs::JobRecord& job) { running.emplace(job.id, job.pid); });
    const std::optional<double> node_cpu =
        node_cgroup_ ? node_cgroup_->CpuSeconds() : std::optional<double>();
    for (const auto& id : job_usage_->Sample(running, now, node_cpu)) {
      if (const auto usage = job_usage_->Get(id)) {
        supervisor_->SetUsage(id, usage->cpu_seconds, usage->rss_bytes);
      }
    }
    ipc_->SampleTraffic(now);
    if (balancer_) {
      // The memory-pressure round reacts to this sample: it stays every second, read from the
      // node cgroup (or the jobs' latest RSS), whatever the jobs' own schedule.
      std::uint64_t rss_sum = 0;
      for (const auto& [id, pid] : running) {
        if (const auto usage = job_usage_->Get(id)) rss_sum += usage->rss_bytes;
      }
      balancer::LoadVector memory;
      FillMemory(memory, rss_sum);
      balancer_->OnMemorySample(memory.mem_used_bytes, memory.mem_limit_bytes);
    }
    ScheduleSample();
  });
}

void Agent::FillMemory(balancer::LoadVector& load, std::uint64_t rss_sum) const {
  load.mem_total_bytes = last_host_load_.figures.mem_total_bytes;
  load.mem_free_bytes = last_host_load_.figures.mem_free_bytes;
  load.mem_limit_bytes = load.mem_total_bytes;
  load.mem_used_bytes = rss_sum;
  if (!node_cgroup_) return;
  if (const auto used = node_cgroup_->MemoryUsage()) load.mem_used_bytes = *used;
  if (const std::uint64_t limit = node_cgroup_->MemoryLimit(); limit > 0) {
    load.mem_limit_bytes = limit;
    load.mem_free_bytes = limit > load.mem_used_bytes ? limit - load.mem_used_bytes : 0;
  }
}

std::string Agent::Metrics() const {
  MetricsInput input;
  input.node = identity_.name;
  for (const auto& node : cluster_->Nodes()) {
    NodeMetrics row;
    row.name = node.name;
    row.alive = node.state == "alive";
    if (node.load) {
      row.draining = node.load->draining;
      row.load = *node.load;
    }
    if (node.self && balancer_) row.draining = balancer_->draining();
    input.nodes.push_back(std::move(row));
  }
  for (const char* state : {"running", "exited", "killed", "cancelled", "failed", "lost"}) {
    input.jobs_by_state[state] = 0;
  }
  for (const auto& job : supervisor_->List()) ++input.jobs_by_state[jobs::ToString(job.state)];
  input.migrations = &migration_history_;
  input.ipc_local_bytes = ipc_->local_bytes_total();
  const ClusterTraffic traffic = cluster_->Traffic();
  input.ipc_remote_frames = traffic.ipc_frames_sent;
  input.ipc_remote_bytes = traffic.ipc_bytes_sent;
  input.gossip_bytes_sent = traffic.gossip_bytes_sent;
  input.gossip_bytes_received = traffic.gossip_bytes_received;
  input.gossip_frames_sent = traffic.gossip_frames_sent;
  input.peer_bytes_sent = traffic.bytes_sent;
  input.peer_links_open = traffic.links_open;
  input.event_streams = feed_->streams() + events_->subscribers();
  const SelfUsage usage = ReadSelfUsage();
  input.cpu_seconds = usage.cpu_seconds;
  input.rss_bytes = usage.rss_bytes;
  input.start_time_seconds = usage.start_time_seconds;
  return RenderMetrics(input);
}

balancer::LoadVector Agent::LocalLoad() {
  // Speed 1.0 is a 2 GHz CPU; a CPU that does not say its clock counts as 1.0.
  constexpr double kReferenceMhz = 2000;
  balancer::LoadVector load = last_host_load_.figures;
  const auto wall_now = std::chrono::system_clock::now();
  load.sampled_at_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(wall_now.time_since_epoch()).count();
  load.speed = load.cpu_mhz > 0 ? load.cpu_mhz / kReferenceMhz : 1.0;
  load.jobs_running = static_cast<int>(supervisor_->RunningCount());
  load.draining = balancer_ && balancer_->draining();
  std::uint64_t rss_sum = 0;
  supervisor_->ForEachRunning([&](const jobs::JobRecord& job) {
    balancer::JobLoad job_load;
    job_load.job_id = job.id;
    job_load.rss_bytes = job.rss_bytes;
    job_load.pinned = job.pinned;
    if (const auto usage = job_usage_->Get(job.id)) {
      job_load.cpu_share = usage->cpu_share;
      job_load.rss_bytes = usage->rss_bytes;
      job_load.io_bytes_per_s = usage->io_bytes_per_s;
      job_load.runnable = usage->runnable;
    }
    if (job.submitted_at != jobs::TimePoint{}) {
      job_load.age_s =
          std::max(0.0, std::chrono::duration<double>(wall_now - job.submitted_at).count());
    }
    job_load.peers = ipc_->TopPeers(job.id, 8);
    load.demand += job_load.runnable;
    rss_sum += job_load.rss_bytes;
    load.jobs.push_back(std::move(job_load));
  });
  load.capacity = load.cpus * load.speed;
  if (node_cgroup_) {
    if (const double quota = node_cgroup_->CpuQuota(); quota > 0) {
      load.capacity = std::min(quota, static_cast<double>(std::max(load.cpus, 1)));
    }
  }
  FillMemory(load, rss_sum);
  return load;
}

}  // namespace tern::agent
