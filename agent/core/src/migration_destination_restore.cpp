// MigrationDriver, destination side: CRIU's restore (parked ahead of the images, or not),
// unpacking the job, post-copy's relay and page pull, and discarding a copy.
#include "migration_driver_parts.hpp"

namespace tern::agent {
using namespace driver;  // the driver's own helpers (migration_driver_parts.hpp)

namespace {

// How the destination restores a job: the same parked (ParkRestore, FinishRestore) or not
// (Restore). RestoreCommand leaves --auto-dedup out of a post-copy restore.
migrate::RestoreOptions DestinationRestoreOptions(const std::string& images, bool lazy,
                                                  std::uint64_t rss,
                                                  const std::vector<std::string>& cgroup_roots,
                                                  int job_netns_fd) {
  migrate::RestoreOptions options;
  options.job_netns_fd = job_netns_fd;
  options.cgroup_roots = cgroup_roots;
  options.images = images;
  options.pidfile = images + "/restored.pid";
  options.lazy_pages = lazy;
  options.auto_dedup = rss >= kBigJob;
  return options;
}

constexpr int kLazyStatusFd = 9;  // `criu lazy-pages --status-fd`

}  // namespace

void MigrationDriver::ParkCriu(const std::shared_ptr<Incoming>& incoming, const std::string& criu,
                               const std::string& channel,
                               std::function<void(Expected<void>)> then) {
  // The job's fresh channel is made now: `criu restore` takes it (--inherit-fd) when it starts.
  auto channel_end = std::make_shared<jobs::UniqueFd>(
      !channel.empty() && ipc_.open
          // A --net job's channel is made in its namespace (jobs/in_namespace.hpp).
          ? jobs::InNetNamespace(
                incoming->job_netns.get(), [&] { return ipc_.open(incoming->job.id); }, -1)
          : -1);
  OffThread(
      [incoming, criu, channel, channel_end]() -> Expected<void> {
        const std::string& images = incoming->images;
        const bool lazy = incoming->lazy;
        if (lazy) {
          auto daemon = migrate::ParkedCriu::Start(
              migrate::LazyPagesCommand(criu, images, kLazySocketFd, kLazyStatusFd), images,
              images + "/../lazy-pages.out", {{kLazySocketFd, incoming->lazy_socket.get()}},
              kLazyStatusFd);
          // CRIU holds its end now; ours would keep the connection open after CRIU ends.
          incoming->lazy_socket.Reset();
          if (!daemon) return Unexpected<Error>{daemon.error()};
          incoming->parked_daemon = std::move(*daemon);
        }
        migrate::RestoreOptions options = DestinationRestoreOptions(
            images, lazy, incoming->rss, incoming->cgroup_roots, incoming->job_netns.get());
        options.channel_socket = channel;
        options.channel_fd = channel_end->get();
        options.closed_sockets = incoming->closed_sockets;
        auto restore = migrate::ParkRestore(criu, options);
        channel_end->Reset();  // criu holds the job's end from here on
        if (!restore) return Unexpected<Error>{restore.error()};
        incoming->parked_restore = std::move(*restore);
        // Pre-copy's page server started just before the restore: both start up at once.
        if (!lazy && !AwaitListening(incoming->page_server, incoming->page_server_port)) {
          return Fail("the CRIU page server did not start (see " + images + "/page-server.log)");
        }
        return {};
      },
      [this, incoming, channel, then = std::move(then)](Expected<void> parked) {
        incoming->parked = parked.has_value();
        if (!parked && !channel.empty() && ipc_.close) ipc_.close(incoming->job.id);
        then(std::move(parked));
      });
}

void MigrationDriver::RestoreHere(const std::shared_ptr<Incoming>& incoming,
                                  const migrate::RestoreRequest& restore) {
  auto then = [this, incoming](Expected<std::pair<pid_t, double>> restored) {
    migrate::StepResult step{incoming->id, migrate::StepKind::kRestore, restored.has_value()};
    if (restored) {
      incoming->restore_ms = restored->second;
      NoteRestored(*incoming, restored->first);
      step.copy_pid = restored->first;
      if (!incoming->restored_pidfd.valid()) {
        step.ok = false;
        step.error =
            "the restored copy (pid " + std::to_string(restored->first) + ") ended at once";
      }
    } else {
      step.error = restored.error().message;
      if (ipc_.close && !supervisor_.Get(incoming->job.id)) ipc_.close(incoming->job.id);
    }
    IncomingStepDone(incoming, std::move(step));
  };
  if (incoming->parked) {
    OffThread(
        [incoming, images_archive = restore.images, dir_archive = restore.job_dir] {
          return RestoreParked(*incoming, images_archive, dir_archive);
        },
        std::move(then));
    return;
  }
  const std::string criu =
      incoming->criu.empty() ? migrate::FindCriu(config_.criu_path) : incoming->criu;
  // A fresh channel to this agent takes the place of the one the job had at the source.
  auto channel_end = std::make_shared<jobs::UniqueFd>(
      ipc_.open ? jobs::InNetNamespace(
                      incoming->job_netns.get(), [&] { return ipc_.open(incoming->job.id); }, -1)
                : -1);
  auto with_channel = std::make_shared<bool>(false);
  OffThread(
      [incoming, images_archive = restore.images, dir_archive = restore.job_dir, criu, channel_end,
       with_channel]() -> Expected<std::pair<pid_t, double>> {
        if (auto streamed = AwaitPageServer(*incoming); !streamed) {
          return Unexpected<Error>{streamed.error()};
        }
        auto images = migrate::UnpackDirectory(images_archive, incoming->images);
        if (!images) return Unexpected<Error>{images.error()};
        if (incoming->lazy) {
          auto daemon = BackgroundProcess::Start(
              migrate::LazyPagesCommand(criu, incoming->images, kLazySocketFd, -1),
              incoming->images + "/../lazy-pages.out",
              {{kLazySocketFd, incoming->lazy_socket.get()}});
          incoming->lazy_socket.Reset();
          if (!daemon) return Unexpected<Error>{daemon.error()};
          incoming->lazy_daemon = std::make_shared<BackgroundProcess>(std::move(*daemon));
          const auto deadline = Clock::now() + std::chrono::seconds(10);
          while (!fs::exists(incoming->images + "/lazy-pages.socket") && Clock::now() < deadline &&
                 incoming->lazy_daemon->Running()) {
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
          }
          if (!fs::exists(incoming->images + "/lazy-pages.socket")) {
            return Fail("the CRIU lazy-pages daemon did not start (see " + incoming->images +
                        "/lazy-pages.log)");
          }
          if (auto relay = AwaitLazyRelay(*incoming); !relay)
            return Unexpected<Error>{relay.error()};
        }
        if (auto files = UnpackJobDir(*incoming, dir_archive); !files) {
          return Unexpected<Error>{files.error()};
        }
        const auto start = Clock::now();
        migrate::RestoreOptions options =
            DestinationRestoreOptions(incoming->images, incoming->lazy, incoming->rss,
                                      incoming->cgroup_roots, incoming->job_netns.get());
        options.channel_socket = ReadChannelNote(incoming->images);
        options.closed_sockets = ReadClosedSocketsNote(incoming->images);
        *with_channel = !options.channel_socket.empty();
        options.channel_fd = channel_end->get();
        if (incoming->abort_requested) return Fail("aborted by the source");
        auto pid = migrate::Restore(criu, options);
        channel_end->Reset();
        if (!pid) return Unexpected<Error>{pid.error()};
        return std::make_pair(*pid, MillisSince(start));
      },
      [this, incoming, with_channel, then](Expected<std::pair<pid_t, double>> restored) {
        // A job whose channel had no agent end keeps its orphaned socket: the fresh channel
        // made for it here has no job end to talk to.
        if (!*with_channel && ipc_.close) ipc_.close(incoming->job.id);
        then(std::move(restored));
      });
}

Expected<void> MigrationDriver::UnpackJobDir(const Incoming& incoming,
                                             const std::string& dir_archive) {
  if (incoming.shared_dir) return {};
  // Unpacked only into a directory made here and now, never into one that exists (its user
  // may have left symlinks in it). Prepare checked that no copy of the job runs here, so what
  // is at job_dir is a leftover of an earlier stay.
  return migrate::UnpackIntoFreshDirectory(dir_archive, incoming.job.dir, incoming.job.uid,
                                           incoming.job.gid);
}

Expected<void> MigrationDriver::DialLazyRelay(const std::shared_ptr<Incoming>& incoming) {
  if (auto tls = ipc::MakeTlsContext({config_.tls_ca, config_.tls_cert, config_.tls_key},
                                     ipc::TlsRole::kClient);
      !tls) {
    return Unexpected<Error>{tls.error()};
  }
  auto pair = LoopbackTcpPair();
  if (!pair) return Unexpected<Error>{pair.error()};
  // Dialled now, outside the job's freeze: the TLS handshake is done long before the restore.
  auto relay = PageRelayProcess::Dial(
      RelayOptions(config_, MigrationDir(incoming->id), incoming->id, incoming->source),
      std::move(pair->second), incoming->lazy_source.address, incoming->lazy_source.port);
  if (!relay) return Unexpected<Error>{relay.error()};
  incoming->lazy_socket = std::move(pair->first);
  incoming->lazy_relay = std::move(*relay);
  return {};
}

Expected<void> MigrationDriver::AwaitLazyRelay(Incoming& incoming) {
  // Dialled at prepare, so in long before this in practice; a job restored without it would
  // fault on memory it cannot fetch.
  if (!incoming.lazy_relay) return Fail("no post-copy relay to " + incoming.source);
  return incoming.lazy_relay->AwaitConnected(std::chrono::seconds(10), incoming.abort_requested);
}

Expected<void> MigrationDriver::AwaitPageServer(Incoming& incoming) {
  // Pre-copy's pages are in once the page server ends with the dump's stream (post-copy has
  // none). Woken by its exit, not a timer: this runs in the job's freeze. An abort (the source
  // gave up, the link may be cut) need not wait for it.
  const auto streamed_by = Clock::now() + std::chrono::seconds(30);
  while (!incoming.page_server.Wait(std::chrono::milliseconds(50)) && !incoming.abort_requested &&
         Clock::now() < streamed_by) {
  }
  incoming.page_server.Finish(std::chrono::milliseconds(0));
  if (incoming.abort_requested) return Fail("aborted by the source");
  return {};
}

Expected<std::pair<pid_t, double>> MigrationDriver::RestoreParked(Incoming& incoming,
                                                                  const std::string& images_archive,
                                                                  const std::string& dir_archive) {
  const bool lazy = incoming.lazy;
  if (auto streamed = AwaitPageServer(incoming); !streamed) {
    return Unexpected<Error>{streamed.error()};
  }
  // Every image but the inventory first: the parked criu processes go on once they read it.
  auto images = migrate::UnpackDirectory(images_archive, incoming.images, static_cast<uid_t>(-1),
                                         static_cast<gid_t>(-1), {"inventory.img"});
  if (!images) return Unexpected<Error>{images.error()};
  auto inventory = migrate::ArchivedFile(images_archive, "inventory.img");
  if (!inventory) return Unexpected<Error>{inventory.error()};
  if (lazy) {
    // The daemon must listen before `criu restore` connects to it; it reads two small images.
    auto ready = incoming.parked_daemon.Release(*inventory);
    if (ready) ready = incoming.parked_daemon.AwaitStatus(std::chrono::seconds(10));
    incoming.lazy_daemon =
        std::make_shared<BackgroundProcess>(std::move(incoming.parked_daemon.process()));
    if (!ready) {
      return Fail("the CRIU lazy-pages daemon did not start: " + ready.error().message + " (see " +
                  incoming.images + "/lazy-pages.log)");
    }
    if (auto relay = AwaitLazyRelay(incoming); !relay) return Unexpected<Error>{relay.error()};
  }
  if (auto files = UnpackJobDir(incoming, dir_archive); !files) {
    return Unexpected<Error>{files.error()};
  }
  if (incoming.abort_requested) return Fail("aborted by the source");
  const auto start = Clock::now();
  auto pid = migrate::FinishRestore(
      incoming.parked_restore, *inventory,
      DestinationRestoreOptions(incoming.images, lazy, incoming.rss, incoming.cgroup_roots,
                                incoming.job_netns.get()));
  if (!pid) return Unexpected<Error>{pid.error()};
  return std::make_pair(*pid, MillisSince(start));
}

void MigrationDriver::NoteRestored(Incoming& incoming, pid_t pid) {
  incoming.restored_pid = pid;
  // Pinned at once: the copy is our child (a subreaper's), stopped, and not yet reaped.
  auto identity = jobs::IdentifyProcess(pid);
  if (identity) incoming.restored_pidfd = jobs::OpenPidfd(*identity);
  if (!identity || !incoming.restored_pidfd.valid()) {
    spdlog::error("migration {}: the restored copy (pid {}) ended at once", incoming.id, pid);
    return;
  }
  if (auto recorded = RecordRestoredCopy(MigrationDir(incoming.id), *identity); !recorded) {
    spdlog::error("migration {}: {}", incoming.id, recorded.error().message);
  }
}

void MigrationDriver::ResumeCopy(const std::shared_ptr<Incoming>& incoming) {
  const std::string& mid = incoming->id;
  if (!incoming->restored_pidfd.valid()) {
    spdlog::error("migration {}: no restored copy of job {} to resume", mid, incoming->job.id);
    return;
  }
  ClaimJobAddress(incoming->job, config_.net_uplink);
  incoming->job_netns.Reset();  // the restored job holds its namespace
  migrate::ResumeTree(incoming->restored_pid);
  json stats = json::parse(incoming->commit_stats, nullptr, false);
  jobs::JobRecord record = incoming->job;
  if (stats.is_object() && !stats.empty()) {
    stats["resumed_at"] = jobs::FormatTime(std::chrono::system_clock::now());
    record.migrations.push_back(stats);
  }
  auto adopted = supervisor_.AdoptMigrated(record, incoming->restored_pid);
  if (!adopted) {
    spdlog::error("migration {}: {}", mid, adopted.error().message);
    return;
  }
  incoming->adopted = jobs::ToJson(*adopted, std::chrono::system_clock::now());
  spdlog::info("migration {}: job {} resumed here (pid {})", mid, adopted->id, adopted->pid);
}

void MigrationDriver::PullPages(const std::shared_ptr<Incoming>& incoming) {
  auto daemon = incoming->lazy_daemon;
  if (!daemon) {
    IncomingStepDone(incoming, {incoming->id, migrate::StepKind::kPullPages, true});
    return;
  }
  // Its stream runs through the relay process: left to end with it (never killed from here).
  if (incoming->lazy_relay) incoming->lazy_relay->LetRun();
  pulling_[incoming->job.id];
  // It pulls the job's memory from the source until every page is here: minutes for a big
  // job, so on a thread of its own rather than one of the two CRIU workers.
  std::thread([this, alive = alive_, incoming, daemon] {
    const int code = daemon->Finish(std::chrono::minutes(30));
    migrate::StepResult step{incoming->id, migrate::StepKind::kPullPages, code == 0};
    if (code != 0) {
      step.error = "criu lazy-pages ended with " + std::to_string(code) + " (see " +
                   incoming->images + "/../lazy-pages.log)";
    }
    std::lock_guard lock(alive->mutex);
    if (!alive->driver) return;  // the agent is stopping: its successor finds the record
    boost::asio::post(io_, [this, alive, incoming, step = std::move(step)] {
      if (!alive->driver) return;
      ExecuteIncoming(incoming, incoming->machine.OnStepDone(step, Now()));
      PulledIn(incoming->job.id);
    });
  }).detach();
}

void MigrationDriver::PulledIn(const std::string& job) {
  auto found = pulling_.find(job);
  if (found == pulling_.end()) return;
  auto waiting = std::move(found->second);
  pulling_.erase(found);
  for (auto& move : waiting) move();
}

void MigrationDriver::DiscardCopy(const std::shared_ptr<Incoming>& incoming) {
  const std::string mid = incoming->id;
  if (incoming->lazy_relay) incoming->lazy_relay->Stop();
  // Through the pidfd taken when the copy was restored (or found again at start-up): never a
  // process that merely has its pid now.
  if (incoming->restored_pid > 0 && !jobs::SignalPidfd(incoming->restored_pidfd.get(), SIGKILL)) {
    spdlog::warn("migration {}: the restored copy (pid {}) is gone already", mid,
                 incoming->restored_pid);
  }
  const bool runs_here = supervisor_.Get(incoming->job.id).has_value();
  if (ipc_.close && !runs_here) ipc_.close(incoming->job.id);
  if (!incoming->job.net_address.empty() && !runs_here) {
    // Never routed here (the node side stayed down): the prepared namespace just goes.
    incoming->job_netns.Reset();
    (void)jobs::RemoveJobLink(incoming->job.id);
  }
  const std::string job_dir = incoming->job.dir;
  const bool keep_dir = runs_here || incoming->shared_dir;
  OffThread(
      [incoming, job_dir, keep_dir, dir = MigrationDir(mid)] {
        incoming->page_server.Finish(std::chrono::milliseconds(0));
        if (incoming->lazy_daemon) incoming->lazy_daemon->Finish(std::chrono::milliseconds(0));
        incoming->parked_daemon.process().Finish(std::chrono::milliseconds(0));
        incoming->parked_restore.process().Finish(std::chrono::milliseconds(0));
        migrate::RemoveImageTree(dir);
        if (!keep_dir && !job_dir.empty()) {
          // The job's user owns what is in it: removed without following their symlinks.
          if (auto removed = RemoveTreeNoFollow(job_dir); !removed) {
            spdlog::warn("{}", removed.error().message);
          }
        }
        return 0;
      },
      [mid, reason = incoming->machine.reason()](int) {
        spdlog::info("migration {} dropped here ({}): the job stays on its source", mid, reason);
      });
}

}  // namespace tern::agent
