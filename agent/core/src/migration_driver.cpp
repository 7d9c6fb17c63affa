#include "tern/agent/migration_driver.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/tls_files.hpp>
#include <tern/jobs/in_namespace.hpp>
#include <tern/jobs/job_store.hpp>
#include <tern/jobs/job_supervisor.hpp>
#include <tern/jobs/process_identity.hpp>
#include <tern/jobs/unique_fd.hpp>
#include <tern/migrate/archive.hpp>
#include <tern/migrate/criu.hpp>
#include <tern/migrate/fresh_directory.hpp>
#include <tern/migrate/image_dir.hpp>
#include <tern/migrate/machine_actions.hpp>
#include <tern/migrate/preflight.hpp>
#include <tern/migrate/protocol_codec.hpp>
#include <tern/migrate/remove_tree.hpp>
#include <tern/migrate/subprocess.hpp>
#include <thread>
#include <tuple>
#include <type_traits>
#include <variant>

#include "fault_actions.hpp"
#include "fault_hook.hpp"
#include "lazy_page_proxy.hpp"
#include "net_move.hpp"
#include "page_relay_process.hpp"
#include "tern/agent/cluster.hpp"
#include "tern/agent/restored_copy.hpp"

namespace tern::agent {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
// How long a frozen job's IPC operations (a send not yet accepted, a lookup) may take to
// settle before the move gives up and the job resumes where it was.
constexpr std::chrono::milliseconds kIpcHandOffPatience{3000};
constexpr std::uint64_t kMaxCarriedBytes = 48ull << 20;
constexpr int kLockRetries = 5;
// The fd number post-copy's CRIU processes get their end of the lazy-page relay as (--ps-socket).
constexpr int kLazySocketFd = 10;
// What a post-copy source puts in the prepare's lazy_source.relay: its stream goes through a
// TLS relay (a destination refuses a source that does not say so).
constexpr const char* kLazyRelayTls = "agents-tls";

// A `ternd page-relay` for move `mid` that lets in node `peer` only, logging into `dir`.
PageRelayProcess::Options RelayOptions(const AgentConfig& config, const std::string& dir,
                                       const std::string& mid, const std::string& peer) {
  PageRelayProcess::Options options;
  options.migration = mid;
  options.peer_node = peer;
  options.tls = {config.tls_ca, config.tls_cert, config.tls_key};
  std::error_code ignored;
  std::filesystem::create_directories(dir, ignored);
  options.log_path = dir + "/page-relay.log";
  return options;
}

// The job's channel socket as dumped, kept next to the images for the destination's restore.
void WriteChannelNote(const std::string& images, const std::string& channel) {
  std::error_code ignored;
  fs::create_directories(images, ignored);
  std::ofstream(images + "/tern-channel") << channel;
}

std::string ReadChannelNote(const std::string& images) {
  std::string channel;
  std::ifstream(images + "/tern-channel") >> channel;
  return channel;
}

// Dump failures that a second try a moment later usually does not meet.
bool IsTransientDumpError(const std::string& message) {
  return message.find("file locks") != std::string::npos ||
         message.find("No such process") != std::string::npos;
}

// CRIU failures of one attempt that say nothing about the job (the next attempt usually works).
bool IsTransientCriuError(const std::string& message) {
  return IsTransientDumpError(message) || message.find("page server") != std::string::npos ||
         message.find("page-xfer") != std::string::npos;
}

double MillisSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

template <typename T, typename Variant>
struct IsAlternativeOf;
template <typename T, typename... Ts>
struct IsAlternativeOf<T, std::variant<Ts...>>
    : std::bool_constant<(std::is_same_v<T, Ts> || ...)> {};

// A message as the request or the reply it is.
std::optional<migrate::Request> AsRequest(const migrate::Message& message) {
  return std::visit(
      [](const auto& value) -> std::optional<migrate::Request> {
        if constexpr (IsAlternativeOf<std::decay_t<decltype(value)>, migrate::Request>::value) {
          return migrate::Request{value};
        } else {
          return std::nullopt;
        }
      },
      message);
}

std::optional<migrate::Reply> AsReply(const migrate::Message& message) {
  return std::visit(
      [](const auto& value) -> std::optional<migrate::Reply> {
        if constexpr (IsAlternativeOf<std::decay_t<decltype(value)>, migrate::Reply>::value) {
          return migrate::Reply{value};
        } else {
          return std::nullopt;
        }
      },
      message);
}

// The source machine's patience, as the driver had it before the machine: a prepare answered
// within 30 s, a restore (images sent, CRIU run) within 120 s, a dump caught holding a file
// lock tried kLockRetries times 30 ms apart, the commit sent 10 times a second apart (each
// call waits up to 10 s for its answer).
migrate::SourceOptions SourceTimings() {
  migrate::SourceOptions options;
  options.prepare_timeout = std::chrono::seconds(30);
  options.restore_timeout = std::chrono::seconds(120);
  options.dump_attempts = kLockRetries;
  options.dump_retry = std::chrono::milliseconds(30);
  options.hand_off_patience = kIpcHandOffPatience;
  options.hand_off_poll = std::chrono::milliseconds(2);
  options.commit_answer_timeout = std::chrono::seconds(11);
  options.commit_retry = std::chrono::seconds(1);
  options.commit_attempts = 10;
  return options;
}

std::string HostOf(const std::string& host_port) {
  return host_port.substr(0, host_port.rfind(':'));
}

std::uint64_t PagesBytes(const std::string& dir) {
  std::uint64_t total = 0;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    if (entry.path().filename().string().rfind("pages-", 0) == 0) total += entry.file_size(error);
  }
  return total;
}

// True once something listens on TCP `port` in this network namespace.
bool Listening(std::uint16_t port) {
  std::ifstream tcp("/proc/net/tcp");
  std::string line;
  char wanted[8];
  std::snprintf(wanted, sizeof wanted, ":%04X", port);
  while (std::getline(tcp, line)) {
    std::istringstream fields(line);
    std::string slot, local, remote, state;
    fields >> slot >> local >> remote >> state;
    if (state == "0A" && local.size() >= 5 && local.substr(local.size() - 5) == wanted) return true;
  }
  return false;
}

// Waits until a page server started a moment ago listens on `port` (criu takes 20-30 ms to
// start here), or ends.
bool AwaitListening(migrate::BackgroundProcess& server, std::uint16_t port) {
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (!Listening(port) && Clock::now() < deadline && server.Running()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return Listening(port);
}

std::string Join(const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& line : lines) text += (text.empty() ? "" : "; ") + line;
  return text;
}

std::uint64_t MemAvailable() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

// From this size of job on, pre-copy's images go to a tmpfs and `criu restore --auto-dedup`
// punches the pages out of them as it restores them (migrate::RestoreCommand): 1 GiB restored
// in 1.1-1.5 s instead of 1.7-2.2 s. Smaller jobs were slower so: 64 MiB 97 -> 120-166 ms,
// 256 MiB 240-280 -> 290-320 ms (tmpfs) and 400-440 ms (both) (docs/migration.md).
constexpr std::uint64_t kBigJob = 512ull << 20;

// A big job's pages go to a tmpfs of their own when this node has room for two copies of the
// job (the image and the restored job, should the restore not free the image as it goes), else
// to the state directory's disk, whose page cache the kernel can write back under pressure.
// The tmpfs leaves room for the job to grow by half before it is dumped; a bigger job fails to
// move (its dump fails, and it resumes on its source). image_dir.hpp says why a tmpfs.
bool MountPreCopyImages(const std::string& images, std::uint64_t rss, std::uint64_t available) {
  const std::uint64_t bytes = rss + rss / 2 + (64ull << 20);
  if (rss < kBigJob || available < 2 * bytes + (256ull << 20)) return false;
  auto mounted = migrate::MountImageTmpfs(images, bytes);
  if (!mounted) spdlog::warn("pre-copy images go to the disk: {}", mounted.error().message);
  return mounted.has_value();
}

}  // namespace

struct MigrationDriver::Outgoing {
  explicit Outgoing(migrate::SourceMachine source) : machine(std::move(source)) {}
  migrate::SourceMachine machine;
  bool recovered = false;  // rebuilt from its record after a restart
  ApiCall call;            // as asked, for a second attempt
  int attempt = 1;
  std::string channel;  // the job's IPC channel socket ("socket:[INODE]"), "" if none
  jobs::JobRecord job;  // a recovered move knows the job's id only if it left this node
  // The job's init as it was when the move started: the commit's kill and an abort's resume
  // reach this very process or none (never one that got its pid later).
  std::optional<jobs::ProcessIdentity> identity;
  std::string destination;
  ApiCaller caller;
  ApiDone done;  // empty for a move recovered after a restart: nobody waits for it
  std::unique_ptr<boost::asio::steady_timer> timer;
  std::string criu;
  migrate::PageServerTarget page_server;
  // True while `criu dump` runs (set and read off the io thread, hence shared and atomic).
  std::shared_ptr<std::atomic<bool>> dumping = std::make_shared<std::atomic<bool>>(false);
  json checks = json::array();
  Clock::time_point started = Clock::now();
  Clock::time_point freeze_start{};
  Clock::time_point transfer_start{};
  Clock::time_point commit_start{};
  double preflight_ms = 0, prepare_ms = 0, dump_ms = 0, transfer_ms = 0, restore_ms = 0,
         commit_ms = 0;
  std::uint64_t images_bytes = 0, jobdir_bytes = 0, pages_bytes = 0;
  json moved_job;
  bool shared_dir = false;  // the destination sees the very same job directory
  bool frozen = false;      // the dump has started: an abort must unlock and resume the job
  // Post-copy: the source's `criu dump --lazy-pages`, serving the job's memory after commit,
  // CRIU's end of its loopback connection (kept for a retried dump until one serves), and the
  // relay that carries that connection to the destination inside TLS.
  std::shared_ptr<migrate::BackgroundProcess> lazy_dump;
  UniqueFd lazy_socket;
  std::shared_ptr<PageRelayProcess> lazy_relay;
  int phase_seen = -1;  // the machine's phase the fault hook last heard of
};

struct MigrationDriver::Incoming {
  explicit Incoming(migrate::DestinationMachine destination) : machine(std::move(destination)) {}
  migrate::DestinationMachine machine;
  std::string id;
  jobs::JobRecord job;
  std::string source;  // the source's node name
  std::string criu;
  std::string images;
  migrate::BackgroundProcess page_server;
  std::uint16_t page_server_port = 0;     // pre-copy: where page_server listens once started
  std::uint64_t rss = 0;                  // the job's resident memory at the source, at prepare
  std::vector<std::string> cgroup_roots;  // --cgroup-root: the job lands in this node's cgroup
  // The restored copy, pinned by a pidfd taken as soon as CRIU returned (or found again at
  // start-up): a kill goes through it, so it reaches this process or none.
  pid_t restored_pid = 0;
  jobs::UniqueFd restored_pidfd;
  double restore_ms = 0;
  // A step's cancellation (CancelStep): the restore stops before CRIU runs if it can. Set on
  // the io thread, read by the step's worker.
  std::atomic<bool> abort_requested{false};
  bool shared_dir = false;
  bool lazy = false;  // post-copy
  bool dry_run = false;
  migrate::PageServerTarget lazy_source;  // the source agent's relay listener
  std::string lazy_relay_kind;            // kLazyRelayTls from a source that relays
  std::shared_ptr<migrate::BackgroundProcess> lazy_daemon;
  // Post-copy: CRIU's end of the loopback connection (until `criu lazy-pages` holds it) and
  // the relay process to the source; the restore's worker waits for it to be in (the job is
  // not restored with no way to fetch its memory).
  UniqueFd lazy_socket;
  std::shared_ptr<PageRelayProcess> lazy_relay;
  int phase_seen = -1;  // the machine's phase the fault hook last heard of
  // Post-copy: `criu lazy-pages` and `criu restore`, started at prepare and parked until the
  // images arrive (migrate::ParkedCriu), so that neither starts inside the job's freeze.
  // Without a channel in the prepare call (an older source) the restore starts them instead.
  bool parked = false;
  migrate::ParkedCriu parked_daemon;
  migrate::ParkedCriu parked_restore;
  // A `--net` job: the network namespace prepared here for it (docs/networking.md), its node
  // side down until the commit; CRIU restores the job into it.
  jobs::UniqueFd job_netns;
  std::string commit_stats = "{}";  // the commit's figures, kept in the job's record
  json adopted;                     // the job as it runs here once resumed
  std::unique_ptr<boost::asio::steady_timer> timer;
  // The source's calls waiting for the machine's answer, by the request's index in
  // migrate::Request (a reply answers the request of the same index).
  std::map<std::size_t, ApiDone> waiting;
  ApiDone recover_done;  // `tern recover`, waiting for its report
};

namespace {}  // namespace

MigrationDriver::MigrationDriver(boost::asio::io_context& io, const AgentConfig& config,
                                 jobs::JobSupervisor& supervisor, Cluster& cluster)
    : io_(io),
      config_(config),
      supervisor_(supervisor),
      cluster_(cluster),
      store_(config.state_dir + "/migrations") {
  RecoverOutgoing();
  RecoverIncoming();
}

MigrationDriver::~MigrationDriver() {
  {
    std::lock_guard lock(alive_->mutex);
    alive_->driver = false;
  }
  for (auto& [mid, migration] : outgoing_) migration->timer->cancel();
  for (auto& [mid, incoming] : incoming_) incoming->timer->cancel();
  workers_.join();
}

template <typename Work, typename Then>
void MigrationDriver::OffThread(Work work, Then then) {
  boost::asio::post(workers_, [this, work = std::move(work), then = std::move(then)]() mutable {
    auto result = work();
    boost::asio::post(io_, [then = std::move(then), result = std::move(result)]() mutable {
      then(std::move(result));
    });
  });
}

migrate::CriuTls MigrationDriver::PageServerTls() const {
  return {config_.tls_ca, config_.tls_cert, config_.tls_key};
}

std::string MigrationDriver::PageServerTlsProblem() const {
  // CRIU reads these as root when a page connection opens; found out now, before anything is
  // frozen, rather than as a gnutls error in the middle of the move.
  for (const std::string* file : {&config_.tls_ca, &config_.tls_cert}) {
    if (::access(file->c_str(), R_OK) != 0) {
      return "CRIU's page server needs " + *file + " ([tls]): " + std::strerror(errno);
    }
  }
  if (auto key = ipc::CheckKeyFile(config_.tls_key); !key) {
    return "CRIU's page server needs the node key ([tls] key): " + key.error().message;
  }
  return "";
}

std::string MigrationDriver::MigrationDir(const std::string& mid) const {
  return config_.state_dir + "/migrations/" + mid;
}

migrate::Millis MigrationDriver::Now() {
  return std::chrono::duration_cast<migrate::Millis>(Clock::now().time_since_epoch());
}

// ---------------------------------------------------------------- source

std::uint16_t MigrationDriver::FreePort(std::uint16_t base) {
  if (next_port_ == 0) next_port_ = std::random_device{}() | 1;
  // A port something already listens on (a page server left by a killed agent, say) would take
  // our pages: skip it.
  for (int tries = 0; tries < 100; ++tries) {
    const auto port = static_cast<std::uint16_t>(base + (next_port_++ % 100));
    if (!Listening(port)) return port;
  }
  return static_cast<std::uint16_t>(base + (next_port_++ % 100));
}

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
    PerformFault(*hit, config_.state_dir, io_);
  }
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
              Expected<migrate::SubprocessResult> last = Fail("the dump had already returned");
              for (int round = 0; round < 480 && dumping->load(); ++round) {
                last = migrate::RunSubprocess(
                    {"ss", "-K", "dst", target.address, "dport", "=", std::to_string(target.port)});
                std::this_thread::sleep_for(std::chrono::milliseconds(250));
              }
              return last;
            },
            [](Expected<migrate::SubprocessResult>) {});
      }
    } else if (auto* persist = std::get_if<migrate::PersistAction>(&action)) {
      // Durable before anything after it is done: "frozen" before the freeze, "committed"
      // before the kill (a restarted agent must never resume a committed copy).
      if (auto saved = store_.Save(persist->record); !saved) {
        spdlog::error("migration {}: cannot record the move: {}", id, saved.error().message);
        Execute(migration, migration->machine.OnPersistFailed(Now()), answer);
        return;
      }
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
  const std::string criu_config = config_.criu_path;
  OffThread(
      [job, criu_config, direct,
       scratch = MigrationDir(migration->machine.plan().id) + "/cpuinfo"] {
        auto criu = migrate::CheckCriu(migrate::FindCriu(criu_config));
        std::string cpuinfo;
        if (criu.works) {
          auto dumped = migrate::DumpCpuinfo(criu.path, scratch);
          if (dumped) cpuinfo = std::move(*dumped);
        }
        return std::make_tuple(
            criu, migrate::ScanJob(job.pid, job.dir, direct, !job.net_address.empty()), cpuinfo);
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
        if (scan.direct_sockets > 0) {
          migration->checks.push_back(
              {{"check", "direct call connections"},
               {"ok", true},
               {"detail", std::to_string(scan.direct_sockets) +
                              " open; closed for the move (calls go through the agents)"}});
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
  if (!migration->channel.empty()) {
    options.external = {migrate::ExternalUnixSocket(migration->channel)};
    WriteChannelNote(options.images, migration->channel);
  }
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
  if (!migration->channel.empty()) WriteChannelNote(images, migration->channel);
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
  auto dump = migrate::BackgroundProcess::Start(
      migrate::LazyDumpCommand(
          migration->criu, migration->job.pid, images, kLazySocketFd,
          migration->channel.empty()
              ? std::vector<std::string>{}
              : std::vector<std::string>{migrate::ExternalUnixSocket(migration->channel)},
          JobNetns(migration->job)),
      MigrationDir(id) + "/dump.out",
      {{9, status_pipe[1]}, {kLazySocketFd, migration->lazy_socket.get()}});
  ::close(status_pipe[1]);
  if (!dump) {
    ::close(status_pipe[0]);
    fail("cannot start criu dump: " + dump.error().message, false);
    return;
  }
  migration->lazy_dump = std::make_shared<migrate::BackgroundProcess>(std::move(*dump));
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
          std::ifstream log(images + "/dump.log");
          std::string line, last_error = "criu dump --lazy-pages ended without finishing";
          while (std::getline(log, line)) {
            if (line.find("Error") != std::string::npos &&
                line.find("RLIMIT_NOFILE") == std::string::npos) {
              last_error = "criu dump failed: " + line;
            }
          }
          fail(last_error, IsTransientDumpError(last_error));
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
  if (auto released = supervisor_.Release(job->id, !migration->shared_dir && !migration->recovered);
      !released) {
    spdlog::error("migration {}: {}", plan.id, released.error().message);
  }
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

// ---------------------------------------------------------------- destination

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
    auto server = migrate::BackgroundProcess::Start(
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
          auto daemon = migrate::BackgroundProcess::Start(
              migrate::LazyPagesCommand(criu, incoming->images, kLazySocketFd, -1),
              incoming->images + "/../lazy-pages.out",
              {{kLazySocketFd, incoming->lazy_socket.get()}});
          incoming->lazy_socket.Reset();
          if (!daemon) return Unexpected<Error>{daemon.error()};
          incoming->lazy_daemon = std::make_shared<migrate::BackgroundProcess>(std::move(*daemon));
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
        std::make_shared<migrate::BackgroundProcess>(std::move(incoming.parked_daemon.process()));
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
          if (auto removed = migrate::RemoveTreeNoFollow(job_dir); !removed) {
            spdlog::warn("{}", removed.error().message);
          }
        }
        return 0;
      },
      [mid, reason = incoming->machine.reason()](int) {
        spdlog::info("migration {} dropped here ({}): the job stays on its source", mid, reason);
      });
}

void MigrationDriver::ReportIncoming(const std::shared_ptr<Incoming>& incoming,
                                     const migrate::ReportAction& report) {
  const std::string state(migrate::ToString(incoming->machine.phase()));
  switch (report.kind) {
    case migrate::ReportKind::kBlocked:
      spdlog::error("migration {}: job {} is blocked ({}): {}", incoming->id, incoming->job.id,
                    state, report.message);
      if (publish_) {
        publish_("migration", {{"event", "blocked"},
                               {"id", incoming->id},
                               {"job", incoming->job.id},
                               {"from", incoming->source},
                               {"to", cluster_.self().name},
                               {"state", state},
                               {"error", report.message}});
      }
      return;
    case migrate::ReportKind::kRecovered:
      spdlog::warn("migration {}: job {}: {}", incoming->id, incoming->job.id, report.message);
      if (publish_) {
        publish_("migration", {{"event", "recovered"},
                               {"id", incoming->id},
                               {"job", incoming->job.id},
                               {"from", incoming->source},
                               {"to", cluster_.self().name},
                               {"detail", report.message}});
      }
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
