// MigrationDriver, source side: a move asked for (Migrate, its pre-flight), SourceMachine's
// actions carried out, its steps, timers and reports, recovery at start-up and the answers to
// the destination's questions.
#include "migration_driver_parts.hpp"

namespace tern::agent {
using namespace driver;  // the driver's own helpers (migration_driver_parts.hpp)

void MigrationDriver::Migrate(const ApiCall& call, const jobs::JobRecord& job, ApiDone done,
                              int attempt) {
  json body = json::parse(call.body.empty() ? "{}" : call.body, nullptr, false);
  if (!body.is_object()) {
    done(ErrorResult(400, "the request body must be a JSON object"));
    return;
  }
  const std::string destination = body.value("node", "");
  const std::string mode = body.value("mode", "precopy");
  const bool dry_run = body.value("dry_run", false);
  if (mode != "precopy" && mode != "postcopy") {
    done(ErrorResult(400, "mode must be precopy or postcopy"));
    return;
  }
  if (job.state != jobs::JobState::kRunning) {
    done(ErrorResult(409, "job " + job.id + " is not running (" + jobs::ToString(job.state) + ")"));
    return;
  }
  if (!job.migrating_id.empty()) {
    done(ErrorResult(409, "job " + job.id + " is already moving"));
    return;
  }
  if (auto pulling = pulling_.find(job.id); pulling != pulling_.end()) {
    // It came here by post-copy and part of its memory is still on the way (through the relay,
    // a few hundred ms for a small job): its dump would fail, so the move starts once it is in.
    spdlog::info("job {}: moving it once its memory has arrived from its last move", job.id);
    pulling->second.push_back([this, call, id = job.id, done = std::move(done), attempt]() mutable {
      auto current = supervisor_.Get(id);
      if (!current) {
        done(ErrorResult(404, "job " + id + " is gone"));
        return;
      }
      Migrate(call, *current, std::move(done), attempt);
    });
    return;
  }
  if (destination.empty() || destination == cluster_.self().name) {
    done(ErrorResult(400, "name another node to move job " + job.id + " to"));
    return;
  }
  if (!cluster_.AliveNodeByName(destination)) {
    done(ErrorResult(404, "node '" + destination + "' is not an alive member of the cluster"));
    return;
  }
  std::random_device entropy;
  char suffix[9];
  std::snprintf(suffix, sizeof suffix, "%08x", entropy());
  migrate::SourcePlan plan;
  plan.id = job.id + "-" + suffix;
  plan.job_id = job.id;
  plan.destination = destination;
  plan.mode = mode == "postcopy" ? migrate::MoveMode::kPostCopy : migrate::MoveMode::kPreCopy;
  plan.dry_run = dry_run;
  auto migration =
      std::make_shared<Outgoing>(migrate::SourceMachine(std::move(plan), SourceTimings()));
  const std::string& id = migration->machine.plan().id;
  migration->job = job;
  migration->identity = job.pid_start_ticks != 0
                            ? std::optional<jobs::ProcessIdentity>(jobs::ProcessIdentity{
                                  job.pid, job.pid_start_ticks, jobs::CurrentBootId()})
                            : jobs::IdentifyProcess(job.pid);
  migration->destination = destination;
  migration->caller = call.caller;
  migration->done = std::move(done);
  migration->call = call;
  migration->attempt = attempt;
  migration->timer = std::make_unique<boost::asio::steady_timer>(io_);
  outgoing_[id] = migration;
  if (publish_ && !dry_run) {
    publish_("migration", {{"event", "started"},
                           {"id", id},
                           {"job", job.id},
                           {"from", cluster_.self().name},
                           {"to", destination},
                           {"mode", mode}});
  }
  spdlog::info("migration {}: job {} {} -> {} ({}{})", id, job.id, cluster_.self().name,
               destination, mode, dry_run ? ", dry run" : "");
  Execute(migration, migration->machine.Start(Now()));
}

void MigrationDriver::FaultPoint(bool source, std::string_view phase, const std::string& job,
                                 const std::string& migration) {
  if (faults_ == nullptr) return;
  const auto side = source ? MoveSide::kSource : MoveSide::kDestination;
  if (auto hit = faults_->OnPhase(side, phase, job, migration)) {
    faults_->StartLosing(hit->plan, Clock::now());
    PerformFault(*hit, config_.state_dir, config_.cluster_advertise, io_);
  }
}

bool MigrationDriver::LostByFault(const migrate::Request& request, std::string_view id) {
  if (faults_ == nullptr) return false;
  const std::string_view kind = migrate::NameOf(migrate::ToMessage(request));
  if (!faults_->Loses(kind, Clock::now())) return false;
  spdlog::warn("fault: migration {}: the {} request is lost", id, kind);
  return true;
}

void MigrationDriver::Execute(const std::shared_ptr<Outgoing>& migration,
                              migrate::MachineActions actions, const ApiDone* answer) {
  const std::string id = migration->machine.plan().id;
  // Every machine event ends here: the one place that sees each phase the move enters (before
  // its actions, as a crash right after the transition would).
  if (const int phase = static_cast<int>(migration->machine.phase());
      phase != migration->phase_seen) {
    migration->phase_seen = phase;
    if (!migration->machine.plan().dry_run) {
      FaultPoint(true, migrate::ToString(migration->machine.phase()),
                 migration->machine.plan().job_id, id);
    }
  }
  for (auto& action : actions) {
    if (auto* send = std::get_if<migrate::SendAction>(&action)) {
      if (auto request = AsRequest(send->message)) {
        SendToDestination(migration, std::move(*request));
      } else if (auto reply = AsReply(send->message); reply && answer) {
        auto wire = migrate::Encode(*reply);
        (*answer)(ApiResult{wire.status, wire.content_type, std::move(wire.body), {}});
      }
    } else if (auto* run = std::get_if<migrate::RunStepAction>(&action)) {
      RunSourceStep(migration, run->step);
    } else if (auto* cancel = std::get_if<migrate::CancelStepAction>(&action)) {
      if (cancel->kind == migrate::StepKind::kDump &&
          migration->machine.plan().mode == migrate::MoveMode::kPreCopy) {
        // CRIU is streaming pages to the destination over a link that may be cut: destroying
        // that connection makes the dump fail cleanly (CRIU cures and thaws the job itself).
        // With TLS, CRIU connects to the page server itself, maybe only after the link was cut
        // (its SYNs then retry for a minute or more): destroy its connection until the dump
        // returns, not just once. A post-copy dump waits for no peer: it ends by itself.
        const auto target = migration->page_server;
        OffThread(
            [target, dumping = migration->dumping] {
              Expected<SubprocessResult> last = Fail("the dump had already returned");
              for (int round = 0; round < 480 && dumping->load(); ++round) {
                last = RunSubprocess(
                    {"ss", "-K", "dst", target.address, "dport", "=", std::to_string(target.port)});
                std::this_thread::sleep_for(std::chrono::milliseconds(250));
              }
              return last;
            },
            [](Expected<SubprocessResult>) {});
      }
    } else if (auto* persist = std::get_if<migrate::PersistAction>(&action)) {
      // Durable before anything after it is done: "frozen" before the freeze, "committed"
      // before the kill (a restarted agent must never resume a committed copy).
      if (auto saved = store_.Save(persist->record); !saved) {
        spdlog::error("migration {}: cannot record the move: {}", id, saved.error().message);
        Execute(migration, migration->machine.OnPersistFailed(Now()), answer);
        return;
      }
    } else if (const auto* settle = std::get_if<migrate::SettleIpcAction>(&action)) {
      if (ipc_.settle_hand_off) ipc_.settle_hand_off(settle->job_id);
    } else if (const auto* forget_moved = std::get_if<migrate::ForgetMovedIpcAction>(&action)) {
      if (ipc_.forget_moved) ipc_.forget_moved(forget_moved->job_id);
    } else if (auto* forget = std::get_if<migrate::ForgetAction>(&action)) {
      store_.Forget(forget->id);
    } else if (std::holds_alternative<migrate::ResumeJobAction>(action)) {
      ResumeSourceCopy(migration);
    } else if (std::holds_alternative<migrate::KillJobAction>(action)) {
      KillSourceCopy(migration);
    } else if (std::holds_alternative<migrate::HandOffIpcAction>(action)) {
      boost::asio::post(io_, [this, migration] {
        migrate::HandOffResult result;
        const auto node = cluster_.AliveNodeByName(migration->destination);
        if (!node) {
          Execute(migration, migration->machine.OnPeerLost(Now()));
          return;
        }
        if (ipc_.hand_off) {
          auto handed = ipc_.hand_off(migration->job.id, *node, migration->job.pid);
          result.state = std::move(handed.state);
          result.outcome = handed.outcome == ipc::PortRouter::ExportOutcome::kExported
                               ? migrate::HandOffOutcome::kExported
                           : handed.outcome == ipc::PortRouter::ExportOutcome::kBusy
                               ? migrate::HandOffOutcome::kBusy
                               : migrate::HandOffOutcome::kRefused;
        }
        Execute(migration, migration->machine.OnHandOff(result, Now()));
      });
    } else if (auto* report = std::get_if<migrate::ReportAction>(&action)) {
      Report(migration, *report);
    } else if (auto* arm = std::get_if<migrate::ArmTimerAction>(&action)) {
      ArmTimer(migration, *arm);
    }
  }
  auto found = outgoing_.find(id);
  if (migration->machine.finished() && found != outgoing_.end() && found->second == migration) {
    outgoing_.erase(found);
    migration->timer->cancel();  // its handler holds the move: let it go
    migration->lazy_socket.Reset();
    // A move that did not commit serves no memory: its relay listener and connection go now.
    if (migration->lazy_relay && migration->machine.outcome() != migrate::Outcome::kCommitted) {
      migration->lazy_relay->Stop();
    }
    std::error_code ignored;
    fs::remove_all(MigrationDir(id) + "/images", ignored);
  }
}

void MigrationDriver::SendToDestination(const std::shared_ptr<Outgoing>& migration,
                                        migrate::Request request) {
  if (LostByFault(request, migration->machine.plan().id)) return;
  std::chrono::milliseconds timeout = std::chrono::seconds(10);
  if (std::holds_alternative<migrate::PrepareRequest>(request)) {
    timeout = std::chrono::seconds(30);
  } else if (std::holds_alternative<migrate::RestoreRequest>(request)) {
    timeout = std::chrono::seconds(120);
  } else if (auto* commit = std::get_if<migrate::CommitRequest>(&request)) {
    // The move's figures travel with the commit: the destination keeps them in the job's record.
    migration->commit_start = Clock::now();
    commit->stats = json{{"id", migration->machine.plan().id},
                         {"mode", migrate::ToString(migration->machine.plan().mode)},
                         {"from", cluster_.self().name},
                         {"to", migration->destination},
                         {"dump_ms", migration->dump_ms},
                         {"transfer_ms", migration->transfer_ms},
                         {"restore_ms", migration->restore_ms},
                         {"images_bytes", migration->images_bytes},
                         {"jobdir_bytes", migration->jobdir_bytes},
                         {"pages_bytes", migration->pages_bytes},
                         {"freeze_start_ms_ago", MillisSince(migration->freeze_start)}}
                        .dump();
  }
  const auto start = Clock::now();
  auto deliver = [this, migration, request, start](const migrate::WireAnswer& answer) {
    auto reply = migrate::DecodeReply(request, answer);
    if (!reply) {
      // A malformed answer is the peer's failure, told to the machine like any other.
      reply = migrate::DecodeReply(
          request, {502, "application/json", json{{"error", reply.error().message}}.dump()});
      if (!reply) return;
    }
    if (const auto* prepared = std::get_if<migrate::PrepareReply>(&*reply)) {
      migration->prepare_ms = MillisSince(start);
      json checks = json::parse(prepared->checks, nullptr, false);
      if (checks.is_array()) {
        for (auto& check : checks) migration->checks.push_back(std::move(check));
      }
      migration->shared_dir = prepared->shared_dir;
      if (prepared->page_server) {
        migration->page_server = {prepared->page_server->address, prepared->page_server->port};
      }
    } else if (const auto* restored = std::get_if<migrate::RestoreReply>(&*reply)) {
      migration->transfer_ms = MillisSince(migration->transfer_start);
      migration->restore_ms = restored->restore_ms;
      migration->pages_bytes = restored->pages_bytes;
    } else if (const auto* committed = std::get_if<migrate::CommitReply>(&*reply)) {
      migration->commit_ms = MillisSince(start);
      if (committed->status == 200)
        migration->moved_job = json::parse(committed->job, nullptr, false);
    }
    Execute(migration, migration->machine.OnMessage(migrate::ToMessage(*reply), Now()));
  };
  const auto node = cluster_.AliveNodeByName(migration->destination);
  if (!node) {
    if (std::holds_alternative<migrate::AbortRequest>(request)) return;  // it learns by asking
    boost::asio::post(io_, [deliver, name = migration->destination] {
      deliver({502, "application/json",
               json{{"error", "node " + name + " is not an alive member of the cluster"}}.dump()});
    });
    return;
  }
  auto wire = migrate::Encode(request);
  ApiCall call;
  call.method = std::move(wire.method);
  call.target = std::move(wire.target);
  call.body = std::move(wire.body);
  call.caller = migration->caller;
  cluster_.Call(
      *node, std::move(call),
      [deliver](ApiResult result) {
        deliver({result.status, result.content_type, std::move(result.body)});
      },
      timeout);
}

void MigrationDriver::StepDone(const std::shared_ptr<Outgoing>& migration,
                               migrate::StepResult result) {
  boost::asio::post(io_, [this, migration, result = std::move(result)] {
    Execute(migration, migration->machine.OnStepDone(result, Now()));
  });
}

void MigrationDriver::RunSourceStep(const std::shared_ptr<Outgoing>& migration,
                                    const migrate::StepRequest& step) {
  switch (step.kind) {
    case migrate::StepKind::kCheck:
      Preflight(migration);
      return;
    case migrate::StepKind::kDump:
      DumpJob(migration, step.attempt);
      return;
    case migrate::StepKind::kServePages: {
      // The lazy dump serves the job's memory until the destination has it all: minutes for a
      // big job, so a thread of its own waits for it (out of the worker pool), and the step is
      // done when CRIU's dump ends (the machine is in serving_pages until then). The relay
      // process carries the stream on by itself, whatever happens to this agent.
      if (migration->lazy_relay) migration->lazy_relay->LetRun();
      auto dump = std::move(migration->lazy_dump);
      if (!dump) {
        StepDone(migration, {step.id, step.kind, true});
        return;
      }
      std::thread([this, alive = alive_, migration, dump, id = step.id, kind = step.kind] {
        const int code = dump->Finish(std::chrono::minutes(30));
        migrate::StepResult result{id, kind, code == 0};
        if (code != 0) {
          result.error = "criu dump --lazy-pages ended with " + std::to_string(code);
        }
        std::lock_guard lock(alive->mutex);
        if (!alive->driver) return;  // the agent is stopping; the dump goes on without it
        boost::asio::post(io_, [this, alive, migration, result = std::move(result)] {
          if (!alive->driver) return;
          Execute(migration, migration->machine.OnStepDone(result, Now()));
        });
      }).detach();
      return;
    }
    default:
      StepDone(migration,
               {step.id, step.kind, false, false,
                std::string("no such source step: ") + std::string(migrate::ToString(step.kind))});
      return;
  }
}

void MigrationDriver::Preflight(const std::shared_ptr<Outgoing>& migration) {
  const jobs::JobRecord job = migration->job;
  const bool dry_run = migration->machine.plan().dry_run;
  // The job's direct call connections are shut down before anything else (a dry run only
  // lists them): its calls go through the agents, which hand its rights over at the commit.
  std::set<std::string> direct;
  if (ipc_.direct_sockets) {
    for (auto& socket : ipc_.direct_sockets(job.id)) direct.insert(std::move(socket));
  }
  if (!dry_run && ipc_.suspend_direct) ipc_.suspend_direct(job.id);
  // The channel this agent holds the other end of: after a re-attach it is not the init's fd 3.
  const std::string channel = ipc_.channel ? ipc_.channel(job.id) : std::string();
  const std::string criu_config = config_.criu_path;
  OffThread(
      [job, criu_config, direct, channel,
       scratch = MigrationDir(migration->machine.plan().id) + "/cpuinfo"] {
        auto criu = migrate::CheckCriu(migrate::FindCriu(criu_config));
        std::string cpuinfo;
        if (criu.works) {
          auto dumped = migrate::DumpCpuinfo(criu.path, scratch);
          if (dumped) cpuinfo = std::move(*dumped);
        }
        return std::make_tuple(
            criu, migrate::ScanJob(job.pid, job.dir, direct, !job.net_address.empty(), channel),
            cpuinfo);
      },
      [this, migration](std::tuple<migrate::CriuCheck, migrate::JobScan, std::string> result) {
        auto& [criu, scan, cpuinfo] = result;
        const std::string& id = migration->machine.plan().id;
        migration->preflight_ms = MillisSince(migration->started);
        migration->criu = criu.path;
        std::vector<std::string> blockers = scan.blockers;
        // The job's fd 3 is re-attached at the destination only while it is the channel this
        // agent holds the other end of. One orphaned by an agent restart (its peer gone) is
        // left to CRIU, which restores it as it is: handing it over with --inherit-fd would
        // make CRIU wait for a peer that no longer exists.
        migration->channel =
            ipc_.channel && ipc_.channel(migration->job.id) == scan.channel ? scan.channel : "";
        if (!scan.channel.empty() && migration->channel.empty()) {
          spdlog::info(
              "migration {}: job {}'s IPC channel has no agent end (the agent restarted); "
              "it moves as it is",
              id, migration->job.id);
        }
        if (ipc_.blocker) {
          const std::string reason = ipc_.blocker(migration->job.id);
          if (!reason.empty()) blockers.push_back(reason);
          const std::size_t rights = ipc_.rights ? ipc_.rights(migration->job.id) : 0;
          migration->checks.push_back(
              {{"check", "IPC rights"},
               {"ok", reason.empty()},
               {"detail", !reason.empty() ? reason
                          : rights == 0
                              ? "none held; the job's channel is re-attached at the destination"
                              : std::to_string(rights) + " right(s) move with the job"}});
        }
        if (!criu.works) blockers.push_back("on " + cluster_.self().name + ": " + criu.problem);
        const std::string tls_problem = PageServerTlsProblem();
        migration->checks.push_back(
            {{"check", "page transfer inside TLS on " + cluster_.self().name},
             {"ok", tls_problem.empty()},
             {"detail", tls_problem.empty() ? "the node's certificate and key" : tls_problem}});
        if (!tls_problem.empty())
          blockers.push_back("on " + cluster_.self().name + ": " + tls_problem);
        migration->checks.push_back(
            {{"check", "criu on " + cluster_.self().name},
             {"ok", criu.works},
             {"detail", criu.works ? "criu " + criu.version : criu.problem}});
        migration->checks.push_back(
            {{"check", "iterative pre-dump"},
             {"ok", true},
             {"detail", criu.dirty_tracking
                            ? "available"
                            : "this kernel does not track dirty memory: one dump, pages "
                              "streamed to the destination"}});
        migration->checks.push_back(
            {{"check", "resources the job holds"},
             {"ok", scan.blockers.empty()},
             {"detail", scan.blockers.empty()
                            ? std::to_string(scan.processes) + " process(es), nothing that "
                                                               "cannot follow"
                            : Join(scan.blockers)}});
        migration->closed_sockets = scan.direct_unix;
        if (scan.direct_sockets > 0) {
          migration->checks.push_back(
              {{"check", "direct call connections"},
               {"ok", true},
               {"detail",
                std::to_string(scan.direct_sockets) +
                    " open; closed for the move (calls go through the agents)" +
                    (scan.direct_unix.empty() ? std::string()
                                              : ", " + std::to_string(scan.direct_unix.size()) +
                                                    " on this node restored closed")}});
        }
        migration->job.rss_bytes = scan.rss_bytes;
        migration->checks.push_back(
            {{"check", "files outside the job directory"},
             {"ok", true},
             {"detail", std::to_string(scan.outside.size()) + " to compare at the destination"}});
        migrate::StepResult step{id, migrate::StepKind::kCheck};
        if (!blockers.empty()) {
          step.error = "job " + migration->job.id + " cannot move: " + Join(blockers);
          StepDone(migration, std::move(step));
          return;
        }
        struct stat dir_info {};
        ::stat(migration->job.dir.c_str(), &dir_info);
        migrate::PrepareRequest prepare;
        prepare.id = id;
        prepare.job = jobs::PersistentJson(migration->job).dump();
        // Known before the dump: lets the destination start `criu restore` (which takes the
        // channel as --inherit-fd) ahead of the freeze.
        prepare.channel = migration->channel;
        prepare.closed_sockets = migration->closed_sockets;
        prepare.cpuinfo = std::move(cpuinfo);
        prepare.dir_device = static_cast<std::uint64_t>(dir_info.st_dev);
        prepare.dir_inode = static_cast<std::uint64_t>(dir_info.st_ino);
        prepare.rss_bytes = scan.rss_bytes;
        prepare.outside = scan.outside;
        if (migration->machine.plan().mode == migrate::MoveMode::kPostCopy) {
          prepare.lazy_relay = kLazyRelayTls;
          if (!migration->machine.plan().dry_run) {
            // The relay listener is opened for this move's destination only, before anything
            // is frozen; CRIU's end of the stream is a loopback socket it gets at the dump.
            if (auto relay = OpenLazyRelay(migration); !relay) {
              step.error = "cannot open the post-copy relay on " + cluster_.self().name + ": " +
                           relay.error().message;
              StepDone(migration, std::move(step));
              return;
            }
            prepare.lazy_source = {HostOf(config_.cluster_advertise),
                                   migration->lazy_relay->port()};
          }
        }
        step.ok = true;
        step.prepare = std::move(prepare);
        StepDone(migration, std::move(step));
      });
}

void MigrationDriver::ArmTimer(const std::shared_ptr<Outgoing>& migration,
                               const migrate::ArmTimerAction& arm) {
  migration->timer->expires_at(
      Clock::time_point(std::chrono::duration_cast<Clock::duration>(arm.at)));
  migration->timer->async_wait(
      [this, migration, token = arm.token](const boost::system::error_code& error) {
        if (error) return;
        Execute(migration, migration->machine.OnTimer(token, Now()));
      });
}

void MigrationDriver::Report(const std::shared_ptr<Outgoing>& migration,
                             const migrate::ReportAction& report) {
  const auto& plan = migration->machine.plan();
  const double total_ms = MillisSince(migration->started);
  ApiDone done = std::move(migration->done);
  migration->done = nullptr;  // answered once: a late commit answer reports to the log alone
  switch (report.kind) {
    case migrate::ReportKind::kDryRunPassed:
      if (done) {
        done(JsonResult(
            200,
            json{{"verdict", report.message}, {"can_move", true}, {"checks", migration->checks}}
                .dump()));
      }
      return;
    case migrate::ReportKind::kFailed: {
      // A lock the job held for a moment gets a few fresh moves, each with its own page server
      // at the destination (a pre-copy dump is never tried again within a move: source_machine
      // .hpp); any other failure of CRIU that says nothing about the job gets one more.
      const int attempts = IsTransientDumpError(report.message) ? kLockRetries : 2;
      if (done && !plan.dry_run && migration->attempt < attempts &&
          (report.retryable || IsTransientCriuError(report.message))) {
        auto job = supervisor_.Get(plan.job_id);
        if (job && job->state == jobs::JobState::kRunning && job->node == cluster_.self().name &&
            job->migrating_id.empty()) {
          spdlog::warn("migration {} of job {} failed ({}); trying again ({} of {})", plan.id,
                       plan.job_id, report.message, migration->attempt + 1, attempts);
          // Posted: this move leaves outgoing_ once its actions are done.
          boost::asio::post(
              io_,
              [this, call = migration->call, job = *job, attempt = migration->attempt + 1,
               done = std::move(done)]() mutable { Migrate(call, job, std::move(done), attempt); });
          return;
        }
      }
      // The job stays here: its calls may take direct connections again.
      if (!plan.dry_run && ipc_.resume_direct) ipc_.resume_direct(plan.job_id);
      spdlog::warn("migration {} of job {} failed after {:.0f} ms: {}", plan.id, plan.job_id,
                   total_ms, report.message);
      if (publish_ && !plan.dry_run) {
        publish_("migration", {{"event", "failed"},
                               {"id", plan.id},
                               {"job", plan.job_id},
                               {"to", plan.destination},
                               {"error", report.message}});
      }
      if (done) {
        done(JsonResult(report.status,
                        json{{"error", report.message}, {"checks", migration->checks}}.dump()));
      }
      return;
    }
    case migrate::ReportKind::kUnconfirmed:
      spdlog::warn("migration {}: {}", plan.id, report.message);
      if (publish_) {
        // As before the machines: the history and its metrics know "moved" and "failed".
        publish_("migration", {{"event", "failed"},
                               {"id", plan.id},
                               {"job", plan.job_id},
                               {"to", plan.destination},
                               {"error", report.message}});
      }
      if (done) done(JsonResult(report.status, json{{"error", report.message}}.dump()));
      return;
    case migrate::ReportKind::kMoved:
      break;
    default:
      spdlog::warn("migration {}: {}", plan.id, report.message);
      if (done) done(JsonResult(report.status, json{{"error", report.message}}.dump()));
      return;
  }
  json stats = {
      {"id", plan.id},
      {"mode", migrate::ToString(plan.mode)},
      {"from", cluster_.self().name},
      {"to", plan.destination},
      {"freeze_ms", migration->dump_ms + migration->transfer_ms + migration->commit_ms},
      {"total_ms", total_ms},
      {"phases_ms",
       {{"preflight", migration->preflight_ms},
        {"prepare", migration->prepare_ms},
        {"dump", migration->dump_ms},
        {"transfer_and_restore", migration->transfer_ms},
        {"restore", migration->restore_ms},
        {"commit", migration->commit_ms}}},
      {"bytes", migration->pages_bytes + migration->images_bytes + migration->jobdir_bytes},
      {"pages_bytes", migration->pages_bytes},
      {"images_bytes", migration->images_bytes},
      {"jobdir_bytes", migration->jobdir_bytes},
      {"pages", migration->pages_bytes / 4096}};
  spdlog::info("migration {}: job {} now runs on {} (freeze {:.0f} ms, total {:.0f} ms, {} bytes)",
               plan.id, plan.job_id, plan.destination, stats["freeze_ms"].get<double>(), total_ms,
               stats["bytes"].get<std::uint64_t>());
  if (done) done(JsonResult(200, json{{"migration", stats}, {"job", migration->moved_job}}.dump()));
  if (publish_) {
    stats["event"] = "moved";
    stats["job"] = plan.job_id;
    publish_("migration", stats);
  }
}

void MigrationDriver::RecoverOutgoing() {
  for (const auto& record : store_.LoadAll()) {
    const auto* source = std::get_if<migrate::SourceRecord>(&record);
    if (!source) continue;
    auto [machine, actions] = migrate::SourceMachine::Recover(*source, SourceTimings(), Now());
    auto migration = std::make_shared<Outgoing>(std::move(machine));
    migration->recovered = true;
    migration->destination = source->destination;
    auto job = supervisor_.Get(source->job_id);
    if (job) {
      migration->job = *job;
    } else {
      migration->job.id = source->job_id;
    }
    migration->caller.uid = 0;
    migration->caller.identified = true;
    migration->timer = std::make_unique<boost::asio::steady_timer>(io_);
    spdlog::warn("migration {}: found its record ({}) after a restart", source->id,
                 migrate::ToString(source->stage));
    outgoing_[source->id] = migration;
    // Once the agent runs: the cluster is not joined yet, and a call now could only fail.
    boost::asio::post(io_, [this, migration, actions = std::move(actions)]() mutable {
      Execute(migration, std::move(actions));
    });
  }
}

std::string MigrationDriver::MovingTo(const std::string& job) const {
  for (const auto& [mid, migration] : outgoing_) {
    if (migration->machine.plan().job_id == job && !migration->recovered) {
      return migration->destination;
    }
  }
  return "";
}

void MigrationDriver::AnswerQuery(const migrate::Request& query, ApiDone done) {
  const migrate::Message message = migrate::ToMessage(query);
  const std::string& id = migrate::IdOf(message);
  if (auto found = outgoing_.find(id); found != outgoing_.end()) {
    auto migration = found->second;
    Execute(migration, migration->machine.OnMessage(message, Now()), &done);
    return;
  }
  auto record = store_.Load(id);
  if (!record) {
    // A move recorded by an agent from before the machines: `outcome` and `ipc-state` files.
    std::ifstream legacy(MigrationDir(id) + "/outcome");
    std::string outcome;
    legacy >> outcome;
    if (outcome == "committed" || outcome == "aborted") {
      std::ifstream state(MigrationDir(id) + "/ipc-state", std::ios::binary);
      record = migrate::SourceRecord{id,
                                     "",
                                     "",
                                     migrate::MoveMode::kPreCopy,
                                     outcome == "committed" ? migrate::SourceStage::kCommitted
                                                            : migrate::SourceStage::kAborted,
                                     std::string(std::istreambuf_iterator<char>(state), {})};
    }
  }
  const auto* source = record ? std::get_if<migrate::SourceRecord>(&*record) : nullptr;
  auto wire = migrate::Encode(migrate::SourceMachine::AnswerWithoutMachine(query, source));
  done(ApiResult{wire.status, wire.content_type, std::move(wire.body), {}});
}

void MigrationDriver::OnNodeState(std::uint64_t node_id, bool alive) {
  if (alive) return;
  const std::string gone = cluster_.NameOf(node_id);
  // Moves from it: the destination machine drops one that restored nothing (the source cannot
  // have committed), cuts a running step short, and lets a restored copy ask.
  std::vector<std::shared_ptr<Incoming>> from;
  for (const auto& [mid, incoming] : incoming_) {
    if (incoming->source == gone) from.push_back(incoming);
  }
  for (const auto& incoming : from) {
    ExecuteIncoming(incoming, incoming->machine.OnSourceLost(Now()));
  }
  // The machine decides what a lost destination means in its phase; a finished move leaves
  // outgoing_, so walk a copy.
  std::vector<std::shared_ptr<Outgoing>> affected;
  for (const auto& [mid, migration] : outgoing_) {
    if (migration->destination == gone) affected.push_back(migration);
  }
  for (const auto& migration : affected) {
    spdlog::warn("migration {}: {} stopped answering during the {} phase",
                 migration->machine.plan().id, gone, migrate::ToString(migration->machine.phase()));
    Execute(migration, migration->machine.OnPeerLost(Now()));
  }
}

}  // namespace tern::agent
