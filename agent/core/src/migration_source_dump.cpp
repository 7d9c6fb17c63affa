// MigrationDriver, source side: the dump (CRIU, on a worker), post-copy's lazy dump and its
// TLS relay, and killing or resuming the source's copy of the job.
#include "migration_driver_parts.hpp"

namespace tern::agent {
using namespace driver;  // the driver's own helpers (migration_driver_parts.hpp)

namespace {

// The images and (unless the destination shares it) the job directory, packed for the
// restore call.
Expected<migrate::RestoreRequest> PackForRestore(const std::string& id, const std::string& images,
                                                 const std::string& job_dir, bool shared) {
  auto packed_images = migrate::PackDirectory(images, {"dump.log"}, kMaxCarriedBytes);
  if (!packed_images) return Unexpected<Error>{packed_images.error()};
  // On a shared file system the job directory is already where the job goes.
  if (shared) return migrate::RestoreRequest{id, std::move(*packed_images), ""};
  // The destination writes its own record of the job; the source's would name a process that
  // is not the destination's.
  auto packed_dir = migrate::PackDirectory(job_dir, {"job.json", "job.json.tmp"}, kMaxCarriedBytes);
  if (!packed_dir) return Unexpected<Error>{packed_dir.error()};
  return migrate::RestoreRequest{id, std::move(*packed_images), std::move(*packed_dir)};
}

// What a dump leaves outside the images, noted beside them for the destination's restore: the
// job's channel, and its same-node direct connections, shut down already (CRIU cannot dump half
// of a Unix connection; the destination restores each as a closed socket). Pre-copy and
// post-copy dumps alike.
std::vector<std::string> NoteExternals(const std::string& id, const std::string& job,
                                       const std::string& images, const std::string& channel,
                                       const std::vector<std::string>& closed_sockets) {
  std::vector<std::string> external;
  if (!channel.empty()) {
    external.push_back(migrate::ExternalUnixSocket(channel));
    WriteChannelNote(images, channel);
  }
  for (const auto& socket : closed_sockets) {
    external.push_back(migrate::ExternalUnixSocket(socket));
  }
  if (!closed_sockets.empty()) {
    WriteClosedSocketsNote(images, closed_sockets);
    spdlog::info(
        "migration {}: {} same-node direct connection(s) of job {} dumped as external, "
        "restored closed",
        id, closed_sockets.size(), job);
  }
  return external;
}

// A dump step's end, with when the job's images were complete.
struct Dumped {
  migrate::StepResult result;
  Clock::time_point at;
};

}  // namespace

void MigrationDriver::DumpJob(const std::shared_ptr<Outgoing>& migration, int attempt) {
  const std::string& id = migration->machine.plan().id;
  if (attempt == 1) {
    supervisor_.MarkMigrating(migration->job.id, id);
    migration->frozen = true;
    migration->freeze_start = Clock::now();
    if (auto locked = LockJobNetwork(migration->job); !locked) {
      StepDone(migration, {id, migrate::StepKind::kDump, false, false, locked.error().message});
      return;
    }
  }
  if (migration->machine.plan().mode == migrate::MoveMode::kPostCopy) {
    StartLazyDump(migration);
    return;
  }
  migrate::DumpOptions options;
  options.pid = migration->job.pid;
  options.job_netns = JobNetns(migration->job);
  options.images = MigrationDir(id) + "/images";
  options.page_server = migration->page_server;
  options.tls = PageServerTls();
  options.external = NoteExternals(id, migration->job.id, options.images, migration->channel,
                                   migration->closed_sockets);
  migration->dumping->store(true);
  OffThread(
      [id, criu = migration->criu, options, dumping = migration->dumping,
       job_dir = migration->job.dir, shared = migration->shared_dir] {
        // A job caught holding a file lock (SQLite inside a transaction, say), or with a
        // thread that ends while CRIU seizes it, cannot be dumped; CRIU thaws it, and the
        // machine tries again a moment later.
        auto dumped = migrate::Dump(criu, options);
        dumping->store(false);
        Dumped out{{id, migrate::StepKind::kDump}, Clock::now()};
        if (!dumped) {
          out.result.error = dumped.error().message;
          out.result.transient = IsTransientDumpError(out.result.error);
          return out;
        }
        auto packed = PackForRestore(id, options.images, job_dir, shared);
        if (!packed) {
          out.result.error = packed.error().message;
          return out;
        }
        out.result.ok = true;
        out.result.restore = std::move(*packed);
        return out;
      },
      [this, migration](Dumped dumped) {
        migration->dump_ms =
            std::chrono::duration<double, std::milli>(dumped.at - migration->freeze_start).count();
        migration->transfer_start = dumped.at;
        if (dumped.result.restore) {
          migration->images_bytes = dumped.result.restore->images.size();
          migration->jobdir_bytes = dumped.result.restore->job_dir.size();
        }
        StepDone(migration, std::move(dumped.result));
      });
}

void MigrationDriver::StartLazyDump(const std::shared_ptr<Outgoing>& migration) {
  const std::string id = migration->machine.plan().id;
  auto fail = [this, migration, id](const std::string& message, bool transient) {
    migration->dump_ms = MillisSince(migration->freeze_start);
    migration->lazy_dump.reset();
    StepDone(migration, {id, migrate::StepKind::kDump, false, transient, message});
  };
  if (auto pipes = migrate::EnsurePipeMaxSize(); !pipes) {
    fail(pipes.error().message, false);
    return;
  }
  const std::string images = MigrationDir(id) + "/images";
  const std::vector<std::string> external =
      NoteExternals(id, migration->job.id, images, migration->channel, migration->closed_sockets);
  std::error_code ignored;
  fs::create_directories(images, ignored);
  if (!migration->lazy_socket.valid()) {
    fail("the post-copy relay's socket for CRIU is gone", false);
    return;
  }
  int status_pipe[2];
  if (::pipe2(status_pipe, O_CLOEXEC) != 0) {
    fail("cannot create a pipe for criu's status", false);
    return;
  }
  auto dump = BackgroundProcess::Start(
      migrate::LazyDumpCommand(migration->criu, migration->job.pid, images, kLazySocketFd, external,
                               JobNetns(migration->job)),
      MigrationDir(id) + "/dump.out",
      {{9, status_pipe[1]}, {kLazySocketFd, migration->lazy_socket.get()}});
  ::close(status_pipe[1]);
  if (!dump) {
    ::close(status_pipe[0]);
    fail("cannot start criu dump: " + dump.error().message, false);
    return;
  }
  migration->lazy_dump = std::make_shared<BackgroundProcess>(std::move(*dump));
  const int status_fd = status_pipe[0];
  OffThread(
      [status_fd] {
        // One byte: the images are complete. End of file: criu ended without finishing.
        pollfd ready{status_fd, POLLIN, 0};
        char byte = 0;
        const bool done = ::poll(&ready, 1, 120000) == 1 && ::read(status_fd, &byte, 1) == 1;
        ::close(status_fd);
        return done;
      },
      [this, migration, id, images, fail](bool done) {
        if (!done) {
          // The cause, not only CRIU's last line ("Dumping FAILED."): a held file lock must
          // read as one, or the dump is never tried again (dump_retry_wait).
          const std::string error = migrate::CriuLogErrors(
              images + "/dump.log", "criu dump --lazy-pages ended without finishing");
          fail("criu dump failed: " + error, IsTransientDumpError(error));
          return;
        }
        migration->dump_ms = MillisSince(migration->freeze_start);
        // CRIU serves on its copy now; ours would keep the connection open after CRIU ends.
        migration->lazy_socket.Reset();
        OffThread(
            [id, images, job_dir = migration->job.dir, shared = migration->shared_dir] {
              return PackForRestore(id, images, job_dir, shared);
            },
            [this, migration, id](Expected<migrate::RestoreRequest> packed) {
              migration->transfer_start = Clock::now();
              migrate::StepResult result{id, migrate::StepKind::kDump};
              if (!packed) {
                result.error = packed.error().message;
              } else {
                migration->images_bytes = packed->images.size();
                migration->jobdir_bytes = packed->job_dir.size();
                result.ok = true;
                result.restore = std::move(*packed);
              }
              StepDone(migration, std::move(result));
            });
      });
}

Expected<void> MigrationDriver::OpenLazyRelay(const std::shared_ptr<Outgoing>& migration) {
  if (auto tls = ipc::MakeTlsContext({config_.tls_ca, config_.tls_cert, config_.tls_key},
                                     ipc::TlsRole::kServer);
      !tls) {
    return Unexpected<Error>{tls.error()};  // said here rather than in the relay's log
  }
  auto pair = LoopbackTcpPair();
  if (!pair) return Unexpected<Error>{pair.error()};
  const std::string& id = migration->machine.plan().id;
  auto relay = PageRelayProcess::Serve(
      RelayOptions(config_, MigrationDir(id), id, migration->destination), std::move(pair->second),
      HostOf(config_.cluster_advertise), FreePort(7300));
  if (!relay) return Unexpected<Error>{relay.error()};
  migration->lazy_socket = std::move(pair->first);
  migration->lazy_relay = std::move(*relay);
  return {};
}

void MigrationDriver::KillSourceCopy(const std::shared_ptr<Outgoing>& migration) {
  const auto& plan = migration->machine.plan();
  // Only the copy this move froze: after a restart the job supervisor has discarded it already
  // (it read the committed record), and a job that is not marked with this move is not ours.
  auto job = supervisor_.Get(plan.job_id);
  if (!job || job->migrating_id != plan.id) return;
  // Killed before its record goes: an agent killed in between restarts, finds the record and
  // the committed move, and discards the copy itself. The other order left a frozen copy that
  // no record named, running again as a second copy of the job once thawed.
  // Through a pidfd of the very process that was frozen: a pid reused since is never signalled.
  std::optional<jobs::ProcessIdentity> identity = migration->identity;
  if (job->pid_start_ticks != 0) {
    identity = jobs::ProcessIdentity{job->pid, job->pid_start_ticks, jobs::CurrentBootId()};
  }
  const jobs::UniqueFd pidfd = identity ? jobs::OpenPidfd(*identity) : jobs::UniqueFd();
  if (!pidfd.valid() || !jobs::SignalPidfd(pidfd.get(), SIGKILL)) {
    spdlog::warn("migration {}: the frozen copy of job {} (pid {}) is gone already", plan.id,
                 job->id, job->pid);
  }
  if (auto released = supervisor_.Release(job->id, !migration->shared_dir && !migration->recovered);
      !released) {
    spdlog::error("migration {}: {}", plan.id, released.error().message);
  }
  if (!job->net_address.empty()) {
    // The address lives at the destination now: this node's half of it goes.
    if (auto removed = jobs::RemoveJobLink(job->id); !removed) {
      spdlog::warn("migration {}: {}", plan.id, removed.error().message);
    }
  }
  if (ipc_.close) ipc_.close(job->id);
}

void MigrationDriver::ResumeSourceCopy(const std::shared_ptr<Outgoing>& migration) {
  const auto& plan = migration->machine.plan();
  if (migration->lazy_relay) migration->lazy_relay->Stop();
  if (migration->lazy_dump) migration->lazy_dump->Finish(std::chrono::milliseconds(0));
  migration->lazy_dump.reset();
  // Only a job this move marked: after a restart the job supervisor has resumed it already.
  auto job = supervisor_.Get(plan.job_id);
  if (!job || job->migrating_id != plan.id) return;
  UnlockJobNetwork(*job, config_.net_uplink);
  if (migration->identity && jobs::IsSameProcess(*migration->identity)) {
    migrate::ResumeTree(job->pid);
  } else {
    spdlog::warn("migration {}: job {}'s process (pid {}) is not the one frozen; not resumed",
                 plan.id, job->id, job->pid);
  }
  supervisor_.MarkMigrating(job->id, "");
  spdlog::warn("migration {}: job {} resumed on {}", plan.id, job->id, cluster_.self().name);
}

}  // namespace tern::agent
