// MigrationDriver, destination side: the calls from the source (Handle), DestinationMachine's
// actions carried out, its steps, the page receiver, reports, recovery at start-up, blocked
// moves and `tern recover`.
#include "migration_driver_parts.hpp"

namespace tern::agent {
using namespace driver;  // the driver's own helpers (migration_driver_parts.hpp)

void MigrationDriver::Handle(const ApiCall& call, const std::vector<std::string>& segments,
                             ApiDone done) {
  // segments: v1 migrations [prepare | MID [restore|commit|abort|ipc-state]]
  // A migration id names a directory under the state directory: only its known shape passes.
  if (segments.size() >= 3 && segments[2] != "prepare" && !jobs::IsValidMigrationId(segments[2])) {
    done(ErrorResult(400, "'" + segments[2] + "' is not a migration id"));
    return;
  }
  if (segments.size() == 3 && call.method == "GET") {
    AnswerQuery(migrate::OutcomeQuery{segments[2]}, done);
    return;
  }
  if (!call.forwarded) {
    done(ErrorResult(403,
                     "migration steps are sent by agents, not users; use "
                     "POST /v1/jobs/{id}/migrate (tern migrate)"));
    return;
  }
  auto request = migrate::DecodeRequest(call.method, call.target, call.body);
  if (!request) {
    const bool unknown = request.error().message.rfind("no such migration call", 0) == 0;
    done(ErrorResult(unknown ? 404 : 400, request.error().message));
    return;
  }
  if (auto* prepare = std::get_if<migrate::PrepareRequest>(&*request)) {
    Prepare(call, std::move(*prepare), std::move(done));
  } else if (std::holds_alternative<migrate::OutcomeQuery>(*request) ||
             std::holds_alternative<migrate::IpcStateQuery>(*request)) {
    AnswerQuery(*request, std::move(done));
  } else {
    ToIncoming(*request, std::move(done));
  }
}

namespace {

// The destination machine's patience: a restored copy that hears no commit asks its source
// after 20 s (as the driver always did), and is blocked (shown to the user) after a minute of
// silence; a prepared move with no images asks whether the source still moves the job.
migrate::DestinationOptions DestinationTimings() {
  migrate::DestinationOptions options;
  options.images_patience = std::chrono::seconds(30);
  options.silence = std::chrono::seconds(20);
  options.answer_timeout = std::chrono::seconds(5);
  options.block_after = std::chrono::seconds(60);
  options.blocked_ask_interval = std::chrono::seconds(10);
  options.ipc_patience = std::chrono::seconds(30);
  return options;
}

bool Settled(migrate::DestinationPhase phase) {
  switch (phase) {
    case migrate::DestinationPhase::kDone:
    case migrate::DestinationPhase::kDryRunPassed:
    case migrate::DestinationPhase::kRefused:
    case migrate::DestinationPhase::kAborted:
      return true;
    default:
      return false;
  }
}

}  // namespace

void MigrationDriver::Prepare(const ApiCall& call, migrate::PrepareRequest prepare, ApiDone done) {
  if (incoming_.count(prepare.id) != 0) {
    done(ErrorResult(409, "migration " + prepare.id + " is being received here already"));
    return;
  }
  auto job = jobs::FromPersistentJson(json::parse(prepare.job, nullptr, false));
  if (!job) {
    done(ErrorResult(400, job.error().message));
    return;
  }
  if (!jobs::IsValidJobId(job->id) || prepare.id.rfind(job->id + "-", 0) != 0) {
    done(ErrorResult(400, "malformed prepare request: bad migration or job id"));
    return;
  }
  // The call's via is "peer NODE": the source is the agent that sent it.
  const std::string source =
      call.caller.via.rfind("peer ", 0) == 0 ? call.caller.via.substr(5) : job->node;
  const std::string node = cluster_.self().name;
  jobs::UniqueFd job_netns;
  const auto here = supervisor_.Get(job->id);
  if (!job->net_address.empty() &&
      !(here && here->state == jobs::JobState::kRunning)) {  // refused below if it runs here
    // A `--net` job lands in a namespace of its own with its address, prepared now so that
    // CRIU (parked or not) can be handed it; the node side stays down until the commit.
    auto prepared =
        supervisor_.net().enabled()
            ? jobs::CreateJobNetwork(job->id, job->net_address, /*node_side_up=*/false)
            : Expected<jobs::UniqueFd>(Fail(
                  "node " + node + " has no job network ([net] in its config) for a --net job"));
    if (!prepared) {
      done(ErrorResult(409, "cannot move job " + job->id + " here: " + prepared.error().message));
      return;
    }
    if (prepare.dry_run) {
      (void)jobs::RemoveJobLink(job->id);
    } else {
      job_netns = std::move(*prepared);
    }
  }
  auto [machine, actions] =
      migrate::DestinationMachine::Start(prepare, source, DestinationTimings(), Now());
  auto incoming = std::make_shared<Incoming>(std::move(machine));
  incoming->id = prepare.id;
  incoming->job = std::move(*job);
  incoming->source = source;
  incoming->cgroup_roots = cgroup_roots_;
  incoming->rss = prepare.rss_bytes;
  incoming->closed_sockets = prepare.closed_sockets;
  incoming->lazy = prepare.mode == migrate::MoveMode::kPostCopy;
  incoming->dry_run = prepare.dry_run;
  incoming->lazy_source = {prepare.lazy_source.address, prepare.lazy_source.port};
  incoming->lazy_relay_kind = prepare.lazy_relay;
  incoming->images = MigrationDir(prepare.id) + "/images";
  incoming->job_netns = std::move(job_netns);
  incoming->timer = std::make_unique<boost::asio::steady_timer>(io_);
  incoming->waiting[migrate::Request(migrate::PrepareRequest{}).index()] = std::move(done);
  incoming_[incoming->id] = incoming;
  ExecuteIncoming(incoming, std::move(actions));
}

void MigrationDriver::ToIncoming(const migrate::Request& request, ApiDone done) {
  const migrate::Message message = migrate::ToMessage(request);
  const std::string& id = migrate::IdOf(message);
  auto found = incoming_.find(id);
  if (found == incoming_.end()) {
    if (std::holds_alternative<migrate::RestoreRequest>(request)) {
      done(ErrorResult(404, "no migration " + id + " is being received here"));
    } else if (std::holds_alternative<migrate::CommitRequest>(request)) {
      // Already committed (a repeated commit), or never restored here.
      auto job = supervisor_.Get(id.substr(0, id.rfind('-')));
      if (job && job->state == jobs::JobState::kRunning && job->node == cluster_.self().name) {
        done(JsonResult(200, jobs::ToJson(*job, std::chrono::system_clock::now()).dump()));
      } else {
        done(ErrorResult(404, "no restored copy of migration " + id + " here"));
      }
    } else {
      done(JsonResult(200, "{}"));  // an abort of a move this node does not hold
    }
    return;
  }
  auto incoming = found->second;
  if (incoming->waiting.count(request.index()) != 0) {
    // The first such call is still being answered; this one changes nothing.
    done(ErrorResult(409, "a " + std::string(migrate::NameOf(message)) + " of migration " + id +
                              " is in progress"));
    return;
  }
  if (const auto* commit = std::get_if<migrate::CommitRequest>(&request)) {
    incoming->commit_stats = commit->stats;
  }
  incoming->waiting[request.index()] = std::move(done);
  ExecuteIncoming(incoming, incoming->machine.OnMessage(message, Now()));
}

void MigrationDriver::ExecuteIncoming(const std::shared_ptr<Incoming>& incoming,
                                      migrate::MachineActions actions) {
  // Every machine event ends here: the one place that sees each phase the move enters.
  if (const int phase = static_cast<int>(incoming->machine.phase());
      phase != incoming->phase_seen) {
    incoming->phase_seen = phase;
    if (!incoming->dry_run) {
      FaultPoint(false, migrate::ToString(incoming->machine.phase()), incoming->job.id,
                 incoming->id);
    }
  }
  for (auto& action : actions) {
    if (auto* send = std::get_if<migrate::SendAction>(&action)) {
      if (auto request = AsRequest(send->message)) {
        AskSource(incoming, std::move(*request));
        continue;
      }
      auto reply = AsReply(send->message);
      if (!reply) continue;
      if (auto* restored = std::get_if<migrate::RestoreReply>(&*reply)) {
        restored->restore_ms = incoming->restore_ms;
        restored->pages_bytes = PagesBytes(incoming->images);
      } else if (auto* committed = std::get_if<migrate::CommitReply>(&*reply);
                 committed && committed->status == 200 && incoming->adopted.is_object()) {
        committed->job = incoming->adopted.dump();
      }
      auto waiting = incoming->waiting.find(reply->index());
      if (waiting == incoming->waiting.end()) continue;  // nobody asks any more
      ApiDone done = std::move(waiting->second);
      incoming->waiting.erase(waiting);
      auto wire = migrate::Encode(*reply);
      done(ApiResult{wire.status, wire.content_type, std::move(wire.body), {}});
    } else if (auto* run = std::get_if<migrate::RunStepAction>(&action)) {
      RunDestinationStep(incoming, run->step);
    } else if (std::holds_alternative<migrate::CancelStepAction>(action)) {
      // The running step stops before CRIU restores if it can; its result still comes back.
      incoming->abort_requested = true;
    } else if (auto* persist = std::get_if<migrate::PersistAction>(&action)) {
      if (auto saved = store_.Save(persist->record); !saved) {
        // The destination has no failure path for a record: it goes on, and a restart that
        // misses the record asks nothing (the source then learns "unknown" by its own calls).
        spdlog::error("migration {}: cannot record the move: {}", incoming->id,
                      saved.error().message);
      }
    } else if (auto* forget = std::get_if<migrate::ForgetAction>(&action)) {
      store_.Forget(forget->id);
    } else if (std::holds_alternative<migrate::DiscardCopyAction>(action)) {
      DiscardCopy(incoming);
    } else if (auto* install = std::get_if<migrate::InstallIpcStateAction>(&action)) {
      // Its rights, and the answers it has not read, are in place before it runs again.
      if (ipc_.take_over) {
        if (auto taken = ipc_.take_over(incoming->job.id, install->state); !taken) {
          spdlog::error("migration {}: job {} resumes without its IPC rights: {}", incoming->id,
                        incoming->job.id, taken.error().message);
        }
      }
    } else if (std::holds_alternative<migrate::ResumeJobAction>(action)) {
      ResumeCopy(incoming);
    } else if (std::holds_alternative<migrate::KillJobAction>(action)) {
      if (!jobs::SignalPidfd(incoming->restored_pidfd.get(), SIGKILL)) {
        spdlog::warn("migration {}: the copy (pid {}) is gone already", incoming->id,
                     incoming->restored_pid);
      }
    } else if (auto* report = std::get_if<migrate::ReportAction>(&action)) {
      ReportIncoming(incoming, *report);
    } else if (auto* arm = std::get_if<migrate::ArmTimerAction>(&action)) {
      incoming->timer->expires_at(
          Clock::time_point(std::chrono::duration_cast<Clock::duration>(arm->at)));
      incoming->timer->async_wait(
          [this, incoming, token = arm->token](const boost::system::error_code& error) {
            if (error) return;
            ExecuteIncoming(incoming, incoming->machine.OnTimer(token, Now()));
          });
    }
  }
  const auto phase = incoming->machine.phase();
  auto found = incoming_.find(incoming->id);
  if (!Settled(phase) || found == incoming_.end() || found->second != incoming) return;
  incoming_.erase(found);
  incoming->timer->cancel();  // its handler holds the move: let it go
  if (phase == migrate::DestinationPhase::kDone) {
    // Resumed for good: nothing about this move needs deciding any more. A GiB of images
    // takes a while to remove: not on the io thread.
    store_.Forget(incoming->id);
    OffThread(
        [dir = MigrationDir(incoming->id)] {
          migrate::RemoveImageTree(dir);
          return 0;
        },
        [](int) {});
  } else if (incoming->job_netns.valid() && !supervisor_.Get(incoming->job.id)) {
    // Refused after its namespace was prepared: never routed here, it just goes.
    incoming->job_netns.Reset();
    (void)jobs::RemoveJobLink(incoming->job.id);
  }
  for (auto& [index, done] : incoming->waiting) {
    done(ErrorResult(409, "migration " + incoming->id + " is " +
                              std::string(migrate::ToString(phase)) + " here"));
  }
  incoming->waiting.clear();
}

void MigrationDriver::AskSource(const std::shared_ptr<Incoming>& incoming,
                                migrate::Request request) {
  // No answer is no decision: a source that cannot be reached now is asked again later.
  if (LostByFault(request, incoming->id)) return;
  const auto node = cluster_.AliveNodeByName(incoming->source);
  if (!node) return;
  auto wire = migrate::Encode(request);
  ApiCall call;
  call.method = std::move(wire.method);
  call.target = std::move(wire.target);
  call.body = std::move(wire.body);
  call.caller.uid = 0;
  call.caller.identified = true;
  cluster_.Call(*node, std::move(call), [this, incoming, request](ApiResult result) {
    auto reply = migrate::DecodeReply(request, {result.status, result.content_type, result.body});
    if (!reply) {
      spdlog::warn("migration {}: {}", incoming->id, reply.error().message);
      return;
    }
    ExecuteIncoming(incoming, incoming->machine.OnMessage(migrate::ToMessage(*reply), Now()));
  });
}

void MigrationDriver::IncomingStepDone(const std::shared_ptr<Incoming>& incoming,
                                       migrate::StepResult result) {
  boost::asio::post(io_, [this, incoming, result = std::move(result)] {
    ExecuteIncoming(incoming, incoming->machine.OnStepDone(result, Now()));
  });
}

void MigrationDriver::RunDestinationStep(const std::shared_ptr<Incoming>& incoming,
                                         const migrate::StepRequest& step) {
  switch (step.kind) {
    case migrate::StepKind::kCheck:
      CheckHere(incoming, step.prepare ? *step.prepare : migrate::PrepareRequest{});
      return;
    case migrate::StepKind::kPrepareReceive:
      StartReceiver(incoming, step.prepare ? *step.prepare : migrate::PrepareRequest{});
      return;
    case migrate::StepKind::kRestore:
      RestoreHere(incoming, step.restore ? *step.restore : migrate::RestoreRequest{});
      return;
    case migrate::StepKind::kPullPages:
      PullPages(incoming);
      return;
    default:
      IncomingStepDone(incoming, {step.id, step.kind, false, false,
                                  std::string("no such destination step: ") +
                                      std::string(migrate::ToString(step.kind))});
      return;
  }
}

void MigrationDriver::CheckHere(const std::shared_ptr<Incoming>& incoming,
                                const migrate::PrepareRequest& prepare) {
  struct stat dir_info {};
  incoming->shared_dir = ::stat(incoming->job.dir.c_str(), &dir_info) == 0 &&
                         static_cast<std::uint64_t>(dir_info.st_dev) == prepare.dir_device &&
                         static_cast<std::uint64_t>(dir_info.st_ino) == prepare.dir_inode;
  const std::string node = cluster_.self().name;
  const std::uint64_t rss = prepare.rss_bytes;
  OffThread(
      [criu_config = config_.criu_path, outside = prepare.outside, node, cpuinfo = prepare.cpuinfo,
       scratch = MigrationDir(incoming->id) + "/cpuinfo"] {
        auto criu = migrate::CheckCriu(migrate::FindCriu(criu_config));
        std::string cpu_problem;
        if (cpuinfo.empty()) {
          cpu_problem = "the source sent no CPU description";
        } else if (criu.works) {
          auto checked = migrate::CheckCpuinfo(criu.path, scratch, cpuinfo);
          if (!checked) cpu_problem = checked.error().message;
        }
        return std::make_tuple(criu, migrate::CompareFiles(outside, node), cpu_problem);
      },
      [this, incoming, rss,
       node](std::tuple<migrate::CriuCheck, std::vector<std::string>, std::string> result) {
        auto& [criu, file_problems, cpu_problem] = result;
        incoming->criu = criu.path;
        json checks = json::array();
        std::vector<std::string> problems = file_problems;
        checks.push_back({{"check", "CPU compatibility (criu cpuinfo) on " + node},
                          {"ok", cpu_problem.empty()},
                          {"detail", cpu_problem.empty() ? "compatible" : cpu_problem}});
        if (!cpu_problem.empty()) problems.push_back("on " + node + ": " + cpu_problem);
        checks.push_back({{"check", "criu on " + node},
                          {"ok", criu.works},
                          {"detail", criu.works ? "criu " + criu.version : criu.problem}});
        if (!criu.works) problems.push_back("on " + node + ": " + criu.problem);
        const std::string tls_problem = PageServerTlsProblem();
        checks.push_back(
            {{"check", "page transfer inside TLS on " + node},
             {"ok", tls_problem.empty()},
             {"detail", tls_problem.empty() ? "the node's certificate and key" : tls_problem}});
        if (!tls_problem.empty()) problems.push_back("on " + node + ": " + tls_problem);
        checks.push_back(
            {{"check", "files outside the job directory on " + node},
             {"ok", file_problems.empty()},
             {"detail", file_problems.empty() ? "present and alike" : Join(file_problems)}});
        const std::uint64_t available = MemAvailable();
        const bool memory_ok = available > rss + (64ull << 20);
        checks.push_back(
            {{"check", "job directory"},
             {"ok", true},
             {"detail", incoming->shared_dir ? node + " shares it: nothing to copy"
                                             : "copied to " + node + " with the job"}});
        checks.push_back({{"check", "memory on " + node},
                          {"ok", memory_ok},
                          {"detail", std::to_string(available >> 20) + " MiB free, the job uses " +
                                         std::to_string(rss >> 20) + " MiB"}});
        if (!memory_ok) problems.push_back(node + " has too little free memory for the job");
        auto existing = supervisor_.Get(incoming->job.id);
        if (existing && existing->state == jobs::JobState::kRunning) {
          problems.push_back("job " + incoming->job.id + " already runs on " + node);
        }
        if (incoming->lazy && incoming->lazy_relay_kind != kLazyRelayTls) {
          // An older source would send the job's memory in the clear.
          problems.push_back("the source " + incoming->source +
                             " would send the job's memory outside TLS (an older agent): "
                             "upgrade it, or move the job by pre-copy");
        }
        migrate::StepResult step{incoming->id, migrate::StepKind::kCheck, problems.empty()};
        step.checks = checks.dump();
        step.shared_dir = incoming->shared_dir;
        if (!problems.empty()) {
          step.error =
              "job " + incoming->job.id + " cannot move to " + node + ": " + Join(problems);
        }
        IncomingStepDone(incoming, std::move(step));
      });
}

void MigrationDriver::StartReceiver(const std::shared_ptr<Incoming>& incoming,
                                    const migrate::PrepareRequest& prepare) {
  const std::string node = cluster_.self().name;
  auto finish = [this, incoming](Expected<std::optional<migrate::Endpoint>> started) {
    migrate::StepResult step{incoming->id, migrate::StepKind::kPrepareReceive, started.has_value()};
    if (started) {
      step.page_server = *started;
    } else {
      step.error = started.error().message;
    }
    IncomingStepDone(incoming, std::move(step));
  };
  std::error_code ignored;
  migrate::RemoveImageTree(incoming->images);
  fs::create_directories(incoming->images, ignored);
  // Where the restore's window starts (restored_copy.hpp): CRIU's pid file is believed only
  // for a process that started after this was written.
  if (auto written = jobs::WriteFileAtomically(
          MigrationDir(incoming->id) + "/incoming.json",
          json{{"job", jobs::PersistentJson(incoming->job)}, {"shared_dir", incoming->shared_dir}}
              .dump());
      !written) {
    spdlog::error("migration {}: {}", incoming->id, written.error().message);
  }
  std::optional<migrate::Endpoint> endpoint;
  if (incoming->lazy) {
    if (auto pipes = migrate::EnsurePipeMaxSize(); !pipes) {
      finish(Fail("on " + node + ": " + pipes.error().message));
      return;
    }
    if (auto relay = DialLazyRelay(incoming); !relay) {
      finish(Fail("on " + node + ": cannot start the post-copy relay: " + relay.error().message));
      return;
    }
  } else {
    if (MountPreCopyImages(incoming->images, incoming->rss, MemAvailable())) {
      spdlog::info("migration {}: pages go to a tmpfs on {}", incoming->id, incoming->images);
    }
    migrate::PageServerTarget listen{HostOf(config_.cluster_advertise), FreePort(7200)};
    auto server = BackgroundProcess::Start(
        migrate::PageServerCommand(incoming->criu, incoming->images, listen, PageServerTls()),
        MigrationDir(incoming->id) + "/page-server.out");
    if (!server) {
      finish(Fail("cannot start the CRIU page server: " + server.error().message));
      return;
    }
    incoming->page_server = std::move(*server);
    incoming->page_server_port = listen.port;
    endpoint = migrate::Endpoint{listen.address, listen.port};
    // With a channel the parked `criu restore` starts beside the page server, and ParkCriu
    // waits for both; else the page server is waited for here, as it always was.
    if (!prepare.channel && !AwaitListening(incoming->page_server, listen.port)) {
      finish(Fail("the CRIU page server on " + node + " did not start (see " + incoming->images +
                  "/page-server.log)"));
      return;
    }
  }
  if (!prepare.channel) {  // an older source: CRIU starts at restore
    finish(endpoint);
    return;
  }
  ParkCriu(incoming, incoming->criu, *prepare.channel,
           [finish, endpoint, node](Expected<void> parked) {
             if (!parked) {
               finish(Fail("cannot start CRIU on " + node + ": " + parked.error().message));
               return;
             }
             finish(endpoint);
           });
}

void MigrationDriver::ReportIncoming(const std::shared_ptr<Incoming>& incoming,
                                     const migrate::ReportAction& report) {
  const std::string state(migrate::ToString(incoming->machine.phase()));
  // A "migration" event about this incoming move: who, from where, and `fields`.
  auto publish = [&](const char* event, json fields) {
    if (!publish_) return;
    fields.update(json{{"event", event},
                       {"id", incoming->id},
                       {"job", incoming->job.id},
                       {"from", incoming->source},
                       {"to", cluster_.self().name}});
    publish_("migration", std::move(fields));
  };
  switch (report.kind) {
    case migrate::ReportKind::kBlocked:
      spdlog::error("migration {}: job {} is blocked ({}): {}", incoming->id, incoming->job.id,
                    state, report.message);
      publish("blocked", {{"state", state}, {"error", report.message}});
      return;
    case migrate::ReportKind::kRecovered:
      spdlog::warn("migration {}: job {}: {}", incoming->id, incoming->job.id, report.message);
      publish("recovered", {{"detail", report.message}});
      if (incoming->recover_done) {
        auto done = std::move(incoming->recover_done);
        incoming->recover_done = nullptr;
        done(JsonResult(
            200,
            json{{"job", incoming->job.id}, {"migration", incoming->id}, {"result", report.message}}
                .dump()));
      }
      return;
    case migrate::ReportKind::kFailed:
      if (incoming->recover_done) {
        auto done = std::move(incoming->recover_done);
        incoming->recover_done = nullptr;
        done(ErrorResult(report.status, report.message));
        return;
      }
      spdlog::warn("migration {}: {}", incoming->id, report.message);
      return;
    default:
      spdlog::info("migration {}: {}", incoming->id, report.message);
      return;
  }
}

void MigrationDriver::RecoverIncoming() {
  for (const auto& record : store_.LoadAll()) {
    const auto* saved = std::get_if<migrate::DestinationRecord>(&record);
    if (!saved) continue;
    const std::string dir = MigrationDir(saved->id);
    auto job = jobs::FromPersistentJson(json::parse(saved->job, nullptr, false));
    // Believed only while the very process lives (RestoredCopy): a bare pid after a reboot or
    // a reuse names someone else's process, which must be neither adopted nor killed.
    jobs::UniqueFd pidfd;
    pid_t pid = 0;
    if (auto copy = FindRestoredCopy(dir)) {
      pidfd = jobs::OpenPidfd(*copy);
      if (pidfd.valid()) pid = copy->pid;
    }
    if (!job || (saved->stage == migrate::DestinationStage::kRestored && pid == 0)) {
      // Nothing restored here lives: nothing to decide.
      spdlog::warn("migration {}: its record says {}, but no restored copy lives: dropped",
                   saved->id, migrate::ToString(saved->stage));
      store_.Forget(saved->id);
      migrate::RemoveImageTree(dir);
      continue;
    }
    auto [machine, actions] =
        migrate::DestinationMachine::Recover(*saved, DestinationTimings(), Now());
    auto incoming = std::make_shared<Incoming>(std::move(machine));
    incoming->id = saved->id;
    incoming->job = std::move(*job);
    incoming->source = saved->source;
    incoming->shared_dir = saved->shared_dir;
    incoming->lazy = saved->mode == migrate::MoveMode::kPostCopy;
    incoming->images = dir + "/images";
    incoming->restored_pid = pid;
    incoming->restored_pidfd = std::move(pidfd);
    incoming->timer = std::make_unique<boost::asio::steady_timer>(io_);
    if (incoming->machine.phase() == migrate::DestinationPhase::kDone) {
      store_.Forget(saved->id);  // resumed for good before the restart
      continue;
    }
    spdlog::warn("migration {}: found its record ({}) for job {} after a restart; it is {}",
                 saved->id, migrate::ToString(saved->stage), incoming->job.id,
                 migrate::ToString(incoming->machine.phase()));
    incoming_[saved->id] = incoming;
    // Once the agent runs: the cluster is not joined yet, and a call now could only fail.
    boost::asio::post(io_, [this, incoming, actions = std::move(actions)]() mutable {
      ExecuteIncoming(incoming, std::move(actions));
    });
  }
}

std::optional<json> MigrationDriver::BlockedMove(const std::string& job) const {
  for (const auto& [mid, incoming] : incoming_) {
    if (incoming->job.id != job || !incoming->machine.blocked()) continue;
    const std::string state(migrate::ToString(incoming->machine.phase()));
    const bool pages_lost =
        incoming->machine.phase() == migrate::DestinationPhase::kBlockedPagesLost;
    return json{{"migration", mid},
                {"state", state},
                {"from", incoming->source},
                {"reason", incoming->machine.reason()},
                {"recover", pages_lost ? "tern recover " + job + " --discard"
                                       : "tern recover " + job +
                                             " --resume-here|--discard, "
                                             "once " +
                                             incoming->source + " is gone for good"}};
  }
  return std::nullopt;
}

std::vector<json> MigrationDriver::BlockedCopies() const {
  std::vector<json> copies;
  for (const auto& [mid, incoming] : incoming_) {
    // A copy that is not a job here yet (stopped, its source silent): listed as one, so that
    // `tern status` and `tern recover` find it.
    if (!incoming->machine.blocked() || supervisor_.Get(incoming->job.id)) continue;
    jobs::JobRecord shown = incoming->job;
    shown.node = cluster_.self().name;
    shown.pid = incoming->restored_pid;
    json entry = jobs::ToJson(shown, std::chrono::system_clock::now());
    entry["state"] = "blocked";
    entry["blocked"] = *BlockedMove(incoming->job.id);
    copies.push_back(std::move(entry));
  }
  return copies;
}

void MigrationDriver::Recover(const std::string& job, bool resume_here, ApiDone done) {
  std::shared_ptr<Incoming> found;
  for (const auto& [mid, incoming] : incoming_) {
    if (incoming->job.id == job) found = incoming;
  }
  if (!found) {
    done(ErrorResult(404, "no move of job " + job + " is held on " + cluster_.self().name));
    return;
  }
  if (found->recover_done) {
    done(ErrorResult(409, "a recovery of job " + job + " is in progress"));
    return;
  }
  found->recover_done = std::move(done);
  ExecuteIncoming(found, found->machine.OnRecover(resume_here ? migrate::RecoverChoice::kResumeHere
                                                              : migrate::RecoverChoice::kDiscard,
                                                  Now()));
  if (found->recover_done) {  // nothing reported: say where it stands
    auto answer = std::move(found->recover_done);
    found->recover_done = nullptr;
    answer(ErrorResult(409, "migration " + found->id + " is " +
                                std::string(migrate::ToString(found->machine.phase()))));
  }
}

}  // namespace tern::agent
