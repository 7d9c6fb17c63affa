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
#include <tern/migrate/migration.hpp>
#include <tern/migrate/preflight.hpp>
#include <tern/migrate/protocol_codec.hpp>
#include <tern/migrate/remove_tree.hpp>
#include <tern/migrate/subprocess.hpp>
#include <thread>
#include <tuple>

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
using migrate::MigrationAction;
using migrate::MigrationEvent;
constexpr std::uint64_t kMaxCarriedBytes = 48ull << 20;
constexpr int kLockRetries = 5;
// The fd number post-copy's CRIU processes get their end of the lazy-page relay as (--ps-socket).
constexpr int kLazySocketFd = 10;
// What a post-copy source puts in the prepare call's lazy_source: its stream goes through a
// TLS relay (a destination refuses a source that does not say so). The framing is the same
// whether an agent or a `ternd page-relay` process carries it.
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

std::string ToHex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    const int high = std::isxdigit(static_cast<unsigned char>(hex[i]))
                         ? std::stoi(hex.substr(i, 2), nullptr, 16)
                         : 0;
    out.push_back(static_cast<char>(high));
  }
  return out;
}

// The commit call's body: [u32 length][the move's stats as JSON][the job's IPC state]. A body
// that is JSON alone (an older source) carries no IPC state.
std::string EncodeCommitBody(const std::string& stats, const std::string& ipc_state) {
  ipc::WireWriter body;
  body.Bytes(stats);
  body.out() += ipc_state;
  return body.Take();
}

std::pair<std::string, std::string> DecodeCommitBody(const std::string& body) {
  if (body.empty() || body.front() == '{') return {body, ""};
  ipc::WireReader reader(body);
  auto stats = reader.Bytes();
  if (!stats) return {"", ""};
  return {*stats, body.substr(4 + stats->size())};
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
  ApiCall call;  // as asked, for a second attempt
  int attempt = 1;
  std::string channel;    // the job's IPC channel socket ("socket:[INODE]"), "" if none
  std::string ipc_state;  // the job's IPC rights and channel bytes, handed to the destination
  std::string id;
  jobs::JobRecord job;
  std::string destination;
  std::uint64_t destination_id = 0;
  std::string mode = "precopy";
  bool dry_run = false;
  ApiCaller caller;
  ApiDone done;
  migrate::SourceMigration machine;
  std::string criu;
  migrate::PageServerTarget page_server;
  // True while `criu dump` runs (set and read off the io thread, hence shared and atomic).
  std::shared_ptr<std::atomic<bool>> dumping = std::make_shared<std::atomic<bool>>(false);
  json checks = json::array();
  std::string error;
  unsigned error_status = 409;
  Clock::time_point started = Clock::now();
  Clock::time_point freeze_start{};
  double preflight_ms = 0, prepare_ms = 0, dump_ms = 0, transfer_ms = 0, restore_ms = 0,
         commit_ms = 0;
  std::uint64_t images_bytes = 0, jobdir_bytes = 0, pages_bytes = 0;
  json moved_job;
  std::string cpuinfo;      // `criu cpuinfo dump` of the source, checked at the destination
  int lock_retries = 0;     // post-copy dumps retried because the job held a file lock
  bool shared_dir = false;  // the destination sees the very same job directory
  // Post-copy: the source's `criu dump --lazy-pages`, serving the job's memory after commit,
  // CRIU's end of its loopback connection (kept for a retried dump until one serves), and the
  // relay that carries that connection to the destination inside TLS.
  std::shared_ptr<migrate::BackgroundProcess> lazy_dump;
  UniqueFd lazy_socket;
  std::shared_ptr<PageRelayProcess> lazy_relay;
};

struct MigrationDriver::Incoming {
  std::string id;
  jobs::JobRecord job;
  std::string source;  // the call's via: "peer NODE"
  std::string images;
  migrate::BackgroundProcess page_server;
  std::uint16_t page_server_port = 0;     // pre-copy: where page_server listens once started
  std::uint64_t rss = 0;                  // the job's resident memory at the source, at prepare
  std::vector<std::string> cgroup_roots;  // --cgroup-root: the job lands in this node's cgroup
  pid_t restored_pid = 0;
  // The restored copy pinned by a pidfd: an abort's SIGKILL goes through it, so it reaches this
  // process or none (never one that got restored_pid after it ended).
  jobs::UniqueFd restored_pidfd;
  Clock::time_point restored_at{};
  bool busy = false;  // a restore runs (off the io thread) on these files
  // An abort came while busy: the restore stops before CRIU runs if it can, and the abort is
  // carried out when it ends. Set on the io thread, read by the restore's worker.
  std::atomic<bool> abort_requested{false};
  bool shared_dir = false;
  std::string mode = "precopy";
  migrate::PageServerTarget lazy_source;  // the source agent's relay listener
  std::string lazy_relay_kind;            // kLazyRelayTls from a source that relays
  std::string source_node;                // the source's node name: the relay lets only it in
  std::shared_ptr<migrate::BackgroundProcess> lazy_daemon;
  // Post-copy: CRIU's end of the loopback connection (until `criu lazy-pages` holds it) and
  // the relay process to the source; the restore's worker waits for it to be in (the job is
  // not restored with no way to fetch its memory).
  UniqueFd lazy_socket;
  std::shared_ptr<PageRelayProcess> lazy_relay;
  // Post-copy: `criu lazy-pages` and `criu restore`, started at prepare and parked until the
  // images arrive (migrate::ParkedCriu), so that neither starts inside the job's freeze.
  // Without a channel in the prepare call (an older source) the restore starts them instead.
  bool parked = false;
  migrate::ParkedCriu parked_daemon;
  migrate::ParkedCriu parked_restore;
  // A `--net` job: the network namespace prepared here for it (docs/networking.md), its node
  // side down until the commit; CRIU restores the job into it.
  jobs::UniqueFd job_netns;
};

namespace {

// Lets a post-copy helper finish its transfer in the background, then reaps it.
void LetFinish(std::shared_ptr<migrate::BackgroundProcess> process) {
  if (!process) return;
  std::thread([process] { process->Finish(std::chrono::minutes(30)); }).detach();
}

}  // namespace

MigrationDriver::MigrationDriver(boost::asio::io_context& io, const AgentConfig& config,
                                 jobs::JobSupervisor& supervisor, Cluster& cluster)
    : io_(io), config_(config), supervisor_(supervisor), cluster_(cluster) {
  undecided_timer_ = std::make_unique<boost::asio::steady_timer>(io_);
  LoadUnfinished();
  CheckUndecided();
}

void MigrationDriver::LoadUnfinished() {
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(config_.state_dir + "/migrations", error)) {
    const std::string mid = entry.path().filename().string();
    std::ifstream file(entry.path() / "incoming.json");
    if (!file || fs::exists(entry.path() / "outcome")) continue;
    std::stringstream text;
    text << file.rdbuf();
    json saved = json::parse(text.str(), nullptr, false);
    if (!saved.is_object() || !saved.contains("job")) continue;
    auto job = jobs::FromPersistentJson(saved["job"]);
    if (!job) continue;
    auto incoming = std::make_shared<Incoming>();
    incoming->id = mid;
    incoming->job = *job;
    incoming->images = (entry.path() / "images").string();
    incoming->shared_dir = saved.value("shared_dir", false);
    // Believed only while the very process lives (RestoredCopy): a bare pid after a reboot or
    // a reuse names someone else's process, which must be neither adopted nor killed.
    pid_t pid = 0;
    if (auto copy = FindRestoredCopy(entry.path().string())) {
      incoming->restored_pidfd = jobs::OpenPidfd(*copy);
      if (incoming->restored_pidfd.valid()) pid = copy->pid;
    }
    incoming->restored_pid = pid;
    if (incoming->restored_pid == 0) {
      // Nothing was restored here: nothing to decide.
      migrate::RemoveImageTree(entry.path().string());
      continue;
    }
    incoming->restored_at = Clock::now() - std::chrono::seconds(60);
    incoming_[mid] = incoming;
    spdlog::warn(
        "migration {}: found a restored, stopped copy of job {} (pid {}); asking {} "
        "whether the move committed",
        mid, incoming->job.id, pid, incoming->job.node);
  }
}

MigrationDriver::~MigrationDriver() {
  undecided_timer_->cancel();
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

void MigrationDriver::RecordOutcome(const std::string& mid, const std::string& outcome) {
  std::error_code ignored;
  fs::create_directories(MigrationDir(mid), ignored);
  // Durable before anyone acts on it: "committed" is the commit point (the source copy is
  // killed next, and a restarted agent must never resume it).
  if (auto written = jobs::WriteFileAtomically(MigrationDir(mid) + "/outcome", outcome + "\n");
      !written) {
    spdlog::error("migration {}: cannot record the outcome '{}': {}", mid, outcome,
                  written.error().message);
  }
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
  auto migration = std::make_shared<Outgoing>();
  migration->job = job;
  migration->destination = body.value("node", "");
  migration->mode = body.value("mode", "precopy");
  migration->dry_run = body.value("dry_run", false);
  migration->caller = call.caller;
  migration->done = std::move(done);
  migration->call = call;
  migration->attempt = attempt;
  if (migration->mode != "precopy" && migration->mode != "postcopy") {
    migration->done(ErrorResult(400, "mode must be precopy or postcopy"));
    return;
  }
  if (job.state != jobs::JobState::kRunning) {
    migration->done(
        ErrorResult(409, "job " + job.id + " is not running (" + jobs::ToString(job.state) + ")"));
    return;
  }
  if (!job.migrating_id.empty()) {
    migration->done(ErrorResult(409, "job " + job.id + " is already moving"));
    return;
  }
  if (auto pulling = pulling_.find(job.id); pulling != pulling_.end()) {
    // It came here by post-copy and part of its memory is still on the way (through the relay,
    // a few hundred ms for a small job): its dump would fail, so the move starts once it is in.
    spdlog::info("job {}: moving it once its memory has arrived from its last move", job.id);
    pulling->second.push_back(
        [this, call, id = job.id, done = std::move(migration->done), attempt]() mutable {
          auto current = supervisor_.Get(id);
          if (!current) {
            done(ErrorResult(404, "job " + id + " is gone"));
            return;
          }
          Migrate(call, *current, std::move(done), attempt);
        });
    return;
  }
  if (migration->destination.empty() || migration->destination == cluster_.self().name) {
    migration->done(ErrorResult(400, "name another node to move job " + job.id + " to"));
    return;
  }
  auto destination = cluster_.AliveNodeByName(migration->destination);
  if (!destination) {
    migration->done(ErrorResult(
        404, "node '" + migration->destination + "' is not an alive member of the cluster"));
    return;
  }
  migration->destination_id = *destination;
  std::random_device entropy;
  char suffix[9];
  std::snprintf(suffix, sizeof suffix, "%08x", entropy());
  migration->id = job.id + "-" + suffix;
  outgoing_[migration->id] = migration;
  if (publish_ && !migration->dry_run) {
    publish_("migration", {{"event", "started"},
                           {"id", migration->id},
                           {"job", job.id},
                           {"from", cluster_.self().name},
                           {"to", migration->destination},
                           {"mode", migration->mode}});
  }
  spdlog::info("migration {}: job {} {} -> {} ({}{})", migration->id, job.id, cluster_.self().name,
               migration->destination, migration->mode, migration->dry_run ? ", dry run" : "");

  // The job's direct call connections are shut down before anything else (a dry run only
  // lists them): its calls go through the agents, which hand its rights over at the commit.
  std::set<std::string> direct;
  if (ipc_.direct_sockets) {
    for (auto& socket : ipc_.direct_sockets(job.id)) direct.insert(std::move(socket));
  }
  if (!migration->dry_run && ipc_.suspend_direct) ipc_.suspend_direct(job.id);
  const std::string criu_config = config_.criu_path;
  OffThread(
      [job, criu_config, direct, scratch = MigrationDir(migration->id) + "/cpuinfo"] {
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
        migration->cpuinfo = std::move(cpuinfo);
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
              migration->id, migration->job.id);
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
        json outside = migrate::OutsideFilesJson(scan.outside);
        migration->checks.push_back(
            {{"check", "files outside the job directory"},
             {"ok", true},
             {"detail", std::to_string(scan.outside.size()) + " to compare at the destination"}});
        if (!blockers.empty()) {
          migration->error = "job " + migration->job.id + " cannot move: " + Join(blockers);
          Step(migration, static_cast<int>(MigrationEvent::kPreflightRefused));
          return;
        }
        migration->checks.push_back({{"outside", outside}});
        Step(migration, static_cast<int>(MigrationEvent::kPreflightPassed));
      });
}

void MigrationDriver::FaultPoint(bool source, std::string_view phase, const std::string& job,
                                 const std::string& migration) {
  if (faults_ == nullptr) return;
  const auto side = source ? MoveSide::kSource : MoveSide::kDestination;
  if (auto hit = faults_->OnPhase(side, phase, job, migration)) {
    PerformFault(*hit, config_.state_dir, io_);
  }
}

void MigrationDriver::Step(const std::shared_ptr<Outgoing>& migration, int event) {
  const auto before = migration->machine.phase();
  auto actions = migration->machine.On(static_cast<MigrationEvent>(event));
  if (migration->machine.phase() != before && !migration->dry_run) {
    FaultPoint(true, migrate::ToString(migration->machine.phase()), migration->job.id,
               migration->id);
  }
  for (MigrationAction action : actions) {
    switch (action) {
      case MigrationAction::kPrepareDestination: {
        json outside = migration->checks.back().value("outside", json::array());
        migration->checks.erase(migration->checks.end() - 1);
        ApiCall call;
        call.method = "POST";
        call.target = "/v1/migrations/prepare";
        call.caller = migration->caller;
        struct stat dir_info {};
        ::stat(migration->job.dir.c_str(), &dir_info);
        json lazy_source = {{"address", ""}, {"port", 0}};
        if (migration->mode == "postcopy" && !migration->dry_run) {
          // The relay listener is opened for this move's destination only, before anything is
          // frozen; CRIU's end of the stream is a loopback socket it gets at the dump.
          auto relay = OpenLazyRelay(migration);
          if (!relay) {
            migration->error = "cannot open the post-copy relay on " + cluster_.self().name + ": " +
                               relay.error().message;
            migration->error_status = 500;
            boost::asio::post(io_, [this, migration] {
              Step(migration, static_cast<int>(MigrationEvent::kDestinationFailed));
            });
            break;
          }
          lazy_source = {{"address", HostOf(config_.cluster_advertise)},
                         {"port", migration->lazy_relay->port()},
                         {"relay", kLazyRelayTls}};
        } else if (migration->mode == "postcopy") {
          lazy_source["relay"] = kLazyRelayTls;
        }
        call.body = json{
            {"id", migration->id},
            {"lazy_source", lazy_source},
            {"job", jobs::PersistentJson(migration->job)},
            // Known before the dump: lets the destination start `criu restore` (which
            // takes the channel as --inherit-fd) ahead of the freeze.
            {"channel", migration->channel},
            {"cpuinfo_hex", ToHex(migration->cpuinfo)},
            {"dir_device", static_cast<std::uint64_t>(dir_info.st_dev)},
            {"dir_inode", static_cast<std::uint64_t>(dir_info.st_ino)},
            {"mode", migration->mode},
            {"dry_run", migration->dry_run},
            {"rss_bytes", migration->job.rss_bytes},
            {"outside",
             outside}}.dump();
        const auto start = Clock::now();
        cluster_.Call(
            migration->destination_id, call,
            [this, migration, start](ApiResult result) {
              migration->prepare_ms = MillisSince(start);
              json answer = json::parse(result.body, nullptr, false);
              if (answer.is_object() && answer.contains("checks")) {
                for (const auto& check : answer["checks"]) migration->checks.push_back(check);
              }
              if (result.status != 200) {
                migration->error = ErrorMessageOf(result);
                migration->error_status = result.status == 409 ? 409 : 502;
                Step(migration, static_cast<int>(MigrationEvent::kDestinationFailed));
                return;
              }
              if (migration->dry_run) {
                Finish(migration, 200, "");
                return;
              }
              migration->shared_dir = answer.value("shared_dir", false);
              if (answer.contains("page_server")) {
                migration->page_server.address = answer["page_server"].value("address", "");
                migration->page_server.port = answer["page_server"].value("port", 0);
              }
              Step(migration, static_cast<int>(MigrationEvent::kDestinationReady));
            },
            std::chrono::seconds(30));
        break;
      }
      case MigrationAction::kDump: {
        supervisor_.MarkMigrating(migration->job.id, migration->id);
        migration->freeze_start = Clock::now();
        if (migration->mode == "postcopy") {
          if (auto locked = LockJobNetwork(migration->job); !locked) {
            migration->error = locked.error().message;
            migration->error_status = 500;
            Step(migration, static_cast<int>(MigrationEvent::kDumpFailed));
            break;
          }
          StartLazyDump(migration);
          break;
        }
        if (auto locked = LockJobNetwork(migration->job); !locked) {
          migration->error = locked.error().message;
          migration->error_status = 500;
          Step(migration, static_cast<int>(MigrationEvent::kDumpFailed));
          break;
        }
        migrate::DumpOptions options;
        options.pid = migration->job.pid;
        options.job_netns = JobNetns(migration->job);
        options.images = MigrationDir(migration->id) + "/images";
        options.page_server = migration->page_server;
        options.tls = PageServerTls();
        if (!migration->channel.empty()) {
          options.external = {migrate::ExternalUnixSocket(migration->channel)};
          WriteChannelNote(options.images, migration->channel);
        }
        const std::string criu = migration->criu;
        migration->dumping->store(true);
        OffThread(
            [criu, options, dumping = migration->dumping]() -> Expected<void> {
              // A job caught holding a file lock (SQLite inside a transaction, say), or with a
              // thread that ends while CRIU seizes it, cannot be dumped; CRIU thaws it, and a
              // moment later the dump usually succeeds. Not against a page server: CRIU connects
              // to it before it seizes the job and the server serves that one session, so a
              // second dump here finds nobody listening ("Can't connect to server"); the move's
              // next attempt (Finish) asks the destination for a fresh one.
              const int tries = options.page_server ? 1 : kLockRetries;
              for (int attempt = 1;; ++attempt) {
                auto dumped = migrate::Dump(criu, options);
                if (dumped || attempt >= tries || !IsTransientDumpError(dumped.error().message)) {
                  dumping->store(false);
                  return dumped;
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(30));
              }
            },
            [this, migration](Expected<void> dumped) {
              migration->dump_ms = MillisSince(migration->freeze_start);
              if (!dumped) {
                migration->error = dumped.error().message;
                migration->error_status = 500;
                Step(migration, static_cast<int>(MigrationEvent::kDumpFailed));
                return;
              }
              Step(migration, static_cast<int>(MigrationEvent::kDumped));
            });
        break;
      }
      case MigrationAction::kSendImages: {
        const std::string images = MigrationDir(migration->id) + "/images";
        const std::string job_dir = migration->job.dir;
        const bool shared = migration->shared_dir;
        const auto start = Clock::now();
        OffThread(
            [images, job_dir, shared]() -> Expected<std::pair<std::string, std::string>> {
              auto packed_images = migrate::PackDirectory(images, {"dump.log"}, kMaxCarriedBytes);
              if (!packed_images) return Unexpected<Error>{packed_images.error()};
              // On a shared file system the job directory is already where the job goes.
              if (shared) return std::make_pair(std::move(*packed_images), std::string());
              // The destination writes its own record of the job; the source's would name a
              // process that is not the destination's.
              auto packed_dir =
                  migrate::PackDirectory(job_dir, {"job.json", "job.json.tmp"}, kMaxCarriedBytes);
              if (!packed_dir) return Unexpected<Error>{packed_dir.error()};
              return std::make_pair(std::move(*packed_images), std::move(*packed_dir));
            },
            [this, migration, start](Expected<std::pair<std::string, std::string>> packed) {
              if (!packed) {
                migration->error = packed.error().message;
                migration->error_status = 500;
                Step(migration, static_cast<int>(MigrationEvent::kDestinationFailed));
                return;
              }
              migration->images_bytes = packed->first.size();
              migration->jobdir_bytes = packed->second.size();
              std::string body(8, '\0');
              const std::uint64_t length = packed->first.size();
              for (int i = 0; i < 8; ++i) body[i] = static_cast<char>(length >> (56 - 8 * i));
              body += packed->first;
              body += packed->second;
              ApiCall call;
              call.method = "POST";
              call.target = "/v1/migrations/" + migration->id + "/restore";
              call.caller = migration->caller;
              call.body = std::move(body);
              cluster_.Call(
                  migration->destination_id, call,
                  [this, migration, start](ApiResult result) {
                    migration->transfer_ms = MillisSince(start);
                    json answer = json::parse(result.body, nullptr, false);
                    if (result.status != 200 || !answer.is_object()) {
                      migration->error = ErrorMessageOf(result);
                      migration->error_status = 502;
                      Step(migration, static_cast<int>(MigrationEvent::kDestinationFailed));
                      return;
                    }
                    migration->restore_ms = answer.value("restore_ms", 0.0);
                    migration->pages_bytes = answer.value("pages_bytes", std::uint64_t{0});
                    Step(migration, static_cast<int>(MigrationEvent::kRestored));
                  },
                  std::chrono::seconds(120));
            });
        break;
      }
      case MigrationAction::kHandOff:
        HandOffIpc(migration, Clock::now() + kIpcHandOffPatience);
        break;
      case MigrationAction::kKillSource: {
        // The commit point: recorded first, so that a restarted agent never resumes this copy.
        // The job's IPC state is kept beside it for a destination that learns the outcome by
        // asking (GET .../ipc-state), not from the commit call.
        if (!migration->ipc_state.empty()) {
          std::error_code ignored;
          fs::create_directories(MigrationDir(migration->id), ignored);
          if (auto written = jobs::WriteFileAtomically(MigrationDir(migration->id) + "/ipc-state",
                                                       migration->ipc_state);
              !written) {
            spdlog::error("migration {}: {}", migration->id, written.error().message);
          }
        }
        RecordOutcome(migration->id, "committed");
        if (auto released = supervisor_.Release(migration->job.id, !migration->shared_dir);
            !released) {
          spdlog::error("migration {}: {}", migration->id, released.error().message);
        }
        ::kill(migration->job.pid, SIGKILL);
        if (!migration->job.net_address.empty()) {
          // The address lives at the destination now: this node's half of it goes.
          if (auto removed = jobs::RemoveJobLink(migration->job.id); !removed) {
            spdlog::warn("migration {}: {}", migration->id, removed.error().message);
          }
        }
        if (ipc_.close) ipc_.close(migration->job.id);
        LetFinish(std::move(migration->lazy_dump));  // still serving the job's memory
        // The relay process carries the stream on by itself until CRIU's ends, whatever
        // happens to this agent.
        if (migration->lazy_relay) migration->lazy_relay->LetRun();
        break;
      }
      case MigrationAction::kSendCommit:
        SendCommit(migration, 0);
        break;
      case MigrationAction::kResumeSource:
        if (migration->lazy_relay) migration->lazy_relay->Stop();
        if (migration->lazy_dump) migration->lazy_dump->Finish(std::chrono::milliseconds(0));
        UnlockJobNetwork(migration->job, config_.net_uplink);
        migrate::ResumeTree(migration->job.pid);
        supervisor_.MarkMigrating(migration->job.id, "");
        spdlog::warn("migration {}: job {} resumed on {}", migration->id, migration->job.id,
                     cluster_.self().name);
        break;
      case MigrationAction::kAbortDestination: {
        RecordOutcome(migration->id, "aborted");
        ApiCall call;
        call.method = "POST";
        call.target = "/v1/migrations/" + migration->id + "/abort";
        call.caller = migration->caller;
        cluster_.Call(migration->destination_id, call, [](ApiResult) {});
        break;
      }
      case MigrationAction::kReportSuccess:
        Finish(migration, 200, "");
        break;
      case MigrationAction::kReportFailure:
        Finish(migration, migration->error_status, migration->error);
        break;
    }
  }
}

void MigrationDriver::HandOffIpc(const std::shared_ptr<Outgoing>& migration,
                                 Clock::time_point deadline) {
  if (migration->machine.phase() != migrate::MigrationPhase::kHandingOff) return;  // aborted
  if (!ipc_.hand_off) {
    Step(migration, static_cast<int>(MigrationEvent::kHandedOff));
    return;
  }
  auto handed = ipc_.hand_off(migration->job.id, migration->destination_id, migration->job.pid);
  switch (handed.outcome) {
    case ipc::PortRouter::ExportOutcome::kExported:
      migration->ipc_state = std::move(handed.state);
      Step(migration, static_cast<int>(MigrationEvent::kHandedOff));
      return;
    case ipc::PortRouter::ExportOutcome::kRefused:
      migration->error = "the job's IPC rights cannot move: " + handed.state;
      migration->error_status = 409;
      Step(migration, static_cast<int>(MigrationEvent::kHandOffFailed));
      return;
    case ipc::PortRouter::ExportOutcome::kBusy:
      break;
  }
  if (Clock::now() >= deadline) {
    migration->error = "the job's IPC operations did not settle within " +
                       std::to_string(kIpcHandOffPatience.count()) + " ms (" + handed.state +
                       "); it keeps running on " + cluster_.self().name;
    migration->error_status = 409;
    Step(migration, static_cast<int>(MigrationEvent::kHandOffFailed));
    return;
  }
  auto timer = std::make_shared<boost::asio::steady_timer>(io_, std::chrono::milliseconds(2));
  timer->async_wait([this, migration, deadline, timer](const auto& error) {
    if (!error) HandOffIpc(migration, deadline);
  });
}

std::string MigrationDriver::MovingTo(const std::string& job) const {
  for (const auto& [mid, migration] : outgoing_) {
    if (migration->job.id == job) return migration->destination;
  }
  return "";
}

void MigrationDriver::OnNodeState(std::uint64_t node_id, bool alive) {
  if (alive) return;
  // A restore for a source that stopped answering: the source cannot have committed (we have
  // not said "restored"), so the copy is dropped before CRIU makes it, instead of after a
  // 30 s wait for the cut page-server stream and a later question to the source.
  const std::string gone = cluster_.NameOf(node_id);
  std::vector<std::string> parked;  // criu waiting for images that may never come
  for (const auto& [mid, incoming] : incoming_) {
    if (incoming->restored_pid != 0 || incoming->source != "peer " + gone) continue;
    if (incoming->busy) {
      spdlog::warn("migration {}: source {} stopped answering during the restore: dropping it", mid,
                   gone);
      incoming->abort_requested = true;
    } else if (incoming->parked) {
      parked.push_back(mid);
    }
  }
  // Nothing was restored from them, so the source cannot have committed; if it comes back and
  // sends the images, it learns the move is gone and resumes the job itself.
  for (const auto& mid : parked) {
    spdlog::warn("migration {}: source {} stopped answering before the restore: dropping it", mid,
                 gone);
    Abort(mid, [](ApiResult) {});
  }
  // Aborting finishes migrations, which removes them from outgoing_: walk a copy.
  std::vector<std::shared_ptr<Outgoing>> affected;
  for (const auto& [mid, migration] : outgoing_) affected.push_back(migration);
  for (const auto& migration : affected) {
    const std::string& mid = migration->id;
    if (migration->destination_id != node_id) continue;
    const auto phase = migration->machine.phase();
    if (phase != migrate::MigrationPhase::kPreparing &&
        phase != migrate::MigrationPhase::kDumping &&
        phase != migrate::MigrationPhase::kTransferring &&
        phase != migrate::MigrationPhase::kHandingOff) {
      continue;
    }
    spdlog::warn("migration {}: {} stopped answering during the {} phase: aborting", mid,
                 migration->destination, migrate::ToString(phase));
    const std::string reason = "node " + migration->destination + " stopped answering";
    if (phase == migrate::MigrationPhase::kDumping && migration->mode == "precopy") {
      // CRIU is streaming pages to the destination over a link that may be cut: destroying
      // that connection makes the dump fail cleanly (CRIU cures and thaws the job itself),
      // which the dump step then turns into an abort.
      // With TLS, CRIU connects to the page server itself, maybe only after the link was cut
      // (its SYNs then retry for a minute or more): destroy its connection until the dump
      // returns, not just once.
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
      continue;
    }
    if (phase == migrate::MigrationPhase::kHandingOff) {
      // No call is pending then: the hand-off waits on the job's own operations.
      migration->error = reason;
      migration->error_status = 502;
      Step(migration, static_cast<int>(MigrationEvent::kDestinationFailed));
      continue;
    }
    cluster_.FailPendingCalls(node_id, reason);
  }
}

void MigrationDriver::StartLazyDump(const std::shared_ptr<Outgoing>& migration) {
  auto fail = [this, migration](const std::string& message) {
    migration->dump_ms = MillisSince(migration->freeze_start);
    migration->error = message;
    migration->error_status = 500;
    Step(migration, static_cast<int>(MigrationEvent::kDumpFailed));
  };
  if (auto pipes = migrate::EnsurePipeMaxSize(); !pipes) {
    fail(pipes.error().message);
    return;
  }
  const std::string images = MigrationDir(migration->id) + "/images";
  if (!migration->channel.empty()) WriteChannelNote(images, migration->channel);
  std::error_code ignored;
  fs::create_directories(images, ignored);
  int status_pipe[2];
  if (::pipe2(status_pipe, O_CLOEXEC) != 0) {
    fail("cannot create a pipe for criu's status");
    return;
  }
  if (!migration->lazy_socket.valid()) {
    ::close(status_pipe[0]);
    ::close(status_pipe[1]);
    fail("the post-copy relay's socket for CRIU is gone");
    return;
  }
  auto dump = migrate::BackgroundProcess::Start(
      migrate::LazyDumpCommand(
          migration->criu, migration->job.pid, images, kLazySocketFd,
          migration->channel.empty()
              ? std::vector<std::string>{}
              : std::vector<std::string>{migrate::ExternalUnixSocket(migration->channel)},
          JobNetns(migration->job)),
      MigrationDir(migration->id) + "/dump.out",
      {{9, status_pipe[1]}, {kLazySocketFd, migration->lazy_socket.get()}});
  ::close(status_pipe[1]);
  if (!dump) {
    ::close(status_pipe[0]);
    fail("cannot start criu dump: " + dump.error().message);
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
      [this, migration, images, fail](bool done) {
        if (!done) {
          std::ifstream log(images + "/dump.log");
          std::string line, last_error = "criu dump --lazy-pages ended without finishing";
          while (std::getline(log, line)) {
            if (line.find("Error") != std::string::npos &&
                line.find("RLIMIT_NOFILE") == std::string::npos) {
              last_error = "criu dump failed: " + line;
            }
          }
          if (IsTransientDumpError(last_error) && ++migration->lock_retries < kLockRetries) {
            // See the pre-copy dump: try again once the job has released its lock.
            migration->lazy_dump.reset();
            auto timer =
                std::make_shared<boost::asio::steady_timer>(io_, std::chrono::milliseconds(30));
            timer->async_wait([this, migration, timer](const boost::system::error_code&) {
              StartLazyDump(migration);
            });
            return;
          }
          fail(last_error);
          return;
        }
        migration->dump_ms = MillisSince(migration->freeze_start);
        // CRIU serves on its copy now; ours would keep the connection open after CRIU ends.
        migration->lazy_socket.Reset();
        Step(migration, static_cast<int>(MigrationEvent::kDumped));
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
  auto relay = PageRelayProcess::Serve(
      RelayOptions(config_, MigrationDir(migration->id), migration->id, migration->destination),
      std::move(pair->second), HostOf(config_.cluster_advertise), FreePort(7300));
  if (!relay) return Unexpected<Error>{relay.error()};
  migration->lazy_socket = std::move(pair->first);
  migration->lazy_relay = std::move(*relay);
  return {};
}

void MigrationDriver::SendCommit(const std::shared_ptr<Outgoing>& migration, int attempt) {
  const auto start = Clock::now();
  json stats = {{"id", migration->id},
                {"mode", migration->mode},
                {"from", cluster_.self().name},
                {"to", migration->destination},
                {"dump_ms", migration->dump_ms},
                {"transfer_ms", migration->transfer_ms},
                {"restore_ms", migration->restore_ms},
                {"images_bytes", migration->images_bytes},
                {"jobdir_bytes", migration->jobdir_bytes},
                {"pages_bytes", migration->pages_bytes},
                {"freeze_start_ms_ago", MillisSince(migration->freeze_start)}};
  ApiCall call;
  call.method = "POST";
  call.target = "/v1/migrations/" + migration->id + "/commit";
  call.caller = migration->caller;
  call.body = EncodeCommitBody(stats.dump(), migration->ipc_state);
  cluster_.Call(
      migration->destination_id, call, [this, migration, attempt, start](ApiResult result) {
        migration->commit_ms = MillisSince(start);
        if (result.status == 200) {
          migration->moved_job = json::parse(result.body, nullptr, false);
          Step(migration, static_cast<int>(MigrationEvent::kCommitted));
          return;
        }
        if (attempt >= 10) {
          Finish(migration, 502,
                 "job " + migration->job.id + " was handed to " + migration->destination +
                     ", which has not confirmed resuming it: " + ErrorMessageOf(result) +
                     " (it resumes the job when it learns the "
                     "outcome)");
          return;
        }
        auto timer = std::make_shared<boost::asio::steady_timer>(io_, std::chrono::seconds(1));
        timer->async_wait([this, migration, attempt, timer](const auto& error) {
          if (!error) SendCommit(migration, attempt + 1);
        });
      });
}

void MigrationDriver::Finish(const std::shared_ptr<Outgoing>& migration, unsigned status,
                             std::string error) {
  outgoing_.erase(migration->id);
  migration->lazy_socket.Reset();
  // A move that failed serves no memory: its relay listener and connection go now.
  if (status != 200 && migration->lazy_relay) migration->lazy_relay->Stop();
  std::error_code ignored;
  fs::remove_all(MigrationDir(migration->id) + "/images", ignored);
  const double total_ms = MillisSince(migration->started);
  // A lock the job held for a moment (see the dump) gets a few fresh attempts, each with its own
  // page server; any other failure of CRIU that says nothing about the job gets one more.
  const int attempts = IsTransientDumpError(error) ? kLockRetries : 2;
  if (status != 200 && !migration->dry_run && migration->attempt < attempts &&
      IsTransientCriuError(error)) {
    auto job = supervisor_.Get(migration->job.id);
    if (job && job->state == jobs::JobState::kRunning && job->node == cluster_.self().name &&
        job->migrating_id.empty()) {
      spdlog::warn("migration {} of job {} failed ({}); trying again ({} of {})", migration->id,
                   migration->job.id, error, migration->attempt + 1, attempts);
      Migrate(migration->call, *job, std::move(migration->done), migration->attempt + 1);
      return;
    }
  }
  if (status != 200) {
    // The job stays here: its calls may take direct connections again.
    if (!migration->dry_run && ipc_.resume_direct) ipc_.resume_direct(migration->job.id);
    spdlog::warn("migration {} of job {} failed after {:.0f} ms: {}", migration->id,
                 migration->job.id, total_ms, error);
    if (publish_ && !migration->dry_run) {
      publish_("migration", {{"event", "failed"},
                             {"id", migration->id},
                             {"job", migration->job.id},
                             {"to", migration->destination},
                             {"error", error}});
    }
    json body = {{"error", error}, {"checks", migration->checks}};
    migration->done(JsonResult(status, body.dump()));
    return;
  }
  if (migration->dry_run) {
    json body = {{"verdict", "job " + migration->job.id + " can move to " + migration->destination},
                 {"can_move", true},
                 {"checks", migration->checks}};
    migration->done(JsonResult(200, body.dump()));
    return;
  }
  json stats = {
      {"id", migration->id},
      {"mode", migration->mode},
      {"from", cluster_.self().name},
      {"to", migration->destination},
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
               migration->id, migration->job.id, migration->destination,
               stats["freeze_ms"].get<double>(), total_ms, stats["bytes"].get<std::uint64_t>());
  migration->done(
      JsonResult(200, json{{"migration", stats}, {"job", migration->moved_job}}.dump()));
  if (publish_) {
    stats["event"] = "moved";
    stats["job"] = migration->job.id;
    publish_("migration", stats);
  }
}

// ---------------------------------------------------------------- destination

void MigrationDriver::Handle(const ApiCall& call, const std::vector<std::string>& segments,
                             ApiDone done) {
  // segments: v1 migrations [prepare | MID [restore|commit|abort]]
  // A migration id names a directory under the state directory: only its known shape passes.
  if (segments.size() >= 3 && segments[2] != "prepare" && !jobs::IsValidMigrationId(segments[2])) {
    done(ErrorResult(400, "'" + segments[2] + "' is not a migration id"));
    return;
  }
  if (segments.size() == 3 && call.method == "GET") {
    Outcome(segments[2], done);
    return;
  }
  if (!call.forwarded) {
    done(ErrorResult(403,
                     "migration steps are sent by agents, not users; use "
                     "POST /v1/jobs/{id}/migrate (tern migrate)"));
    return;
  }
  if (segments.size() == 3 && segments[2] == "prepare" && call.method == "POST") {
    Prepare(call, done);
  } else if (segments.size() == 4 && call.method == "POST" && segments[3] == "restore") {
    Restore(segments[2], call, done);
  } else if (segments.size() == 4 && call.method == "POST" && segments[3] == "commit") {
    Commit(segments[2], call, done);
  } else if (segments.size() == 4 && call.method == "POST" && segments[3] == "abort") {
    Abort(segments[2], done);
  } else if (segments.size() == 4 && call.method == "GET" && segments[3] == "ipc-state") {
    std::ifstream file(MigrationDir(segments[2]) + "/ipc-state", std::ios::binary);
    done(ApiResult{200, "application/octet-stream",
                   std::string(std::istreambuf_iterator<char>(file), {})});
  } else {
    done(ErrorResult(404, "no such migration call: " + call.target));
  }
}

void MigrationDriver::Prepare(const ApiCall& call, ApiDone done) {
  json body = json::parse(call.body, nullptr, false);
  if (!body.is_object() || !body.contains("job")) {
    done(ErrorResult(400, "malformed prepare request"));
    return;
  }
  auto job = jobs::FromPersistentJson(body["job"]);
  if (!job) {
    done(ErrorResult(400, job.error().message));
    return;
  }
  auto incoming = std::make_shared<Incoming>();
  incoming->cgroup_roots = cgroup_roots_;
  incoming->id = body.value("id", "");
  if (!jobs::IsValidMigrationId(incoming->id) || !jobs::IsValidJobId(job->id)) {
    done(ErrorResult(400, "malformed prepare request: bad migration or job id"));
    return;
  }
  incoming->job = *job;
  incoming->source = call.caller.via;
  // The node whose authenticated link carried the call (Cluster names it "peer NODE").
  if (call.caller.via.rfind("peer ", 0) == 0) incoming->source_node = call.caller.via.substr(5);
  incoming->mode = body.value("mode", "precopy");
  if (!body.value("dry_run", false)) FaultPoint(false, "checking", incoming->job.id, incoming->id);
  if (body.contains("lazy_source") && body["lazy_source"].is_object()) {
    incoming->lazy_source.address = body["lazy_source"].value("address", "");
    incoming->lazy_source.port = body["lazy_source"].value("port", 0);
    incoming->lazy_relay_kind = body["lazy_source"].value("relay", "");
  }
  const bool dry_run = body.value("dry_run", false);
  // An older source names no channel: its post-copy restore starts CRIU as it always did.
  std::optional<std::string> channel;
  if (body.contains("channel") && body["channel"].is_string()) channel = body["channel"];
  std::vector<migrate::OutsideFile> outside;
  const json listed = body.value("outside", json::array());
  for (const auto& file : listed.is_array() ? listed : json::array()) {
    if (!file.is_object()) continue;
    migrate::OutsideFile entry;
    entry.path = file.value("path", "");
    entry.size = file.value("size", std::uint64_t{0});
    entry.uid = file.value("uid", std::uint32_t{0});
    entry.gid = file.value("gid", std::uint32_t{0});
    entry.mode = file.value("mode", std::uint32_t{0});
    entry.sha256 = file.value("sha256", "");  // none from an older source: refused
    outside.push_back(std::move(entry));
  }
  const std::uint64_t rss = body.value("rss_bytes", std::uint64_t{0});
  incoming->rss = rss;
  struct stat dir_info {};
  incoming->shared_dir =
      ::stat(incoming->job.dir.c_str(), &dir_info) == 0 &&
      static_cast<std::uint64_t>(dir_info.st_dev) == body.value("dir_device", std::uint64_t{0}) &&
      static_cast<std::uint64_t>(dir_info.st_ino) == body.value("dir_inode", std::uint64_t{0});
  const std::string node = cluster_.self().name;
  const auto here = supervisor_.Get(incoming->job.id);
  if (!incoming->job.net_address.empty() &&
      !(here && here->state == jobs::JobState::kRunning)) {  // refused below if it runs here
    // A `--net` job lands in a namespace of its own with its address, prepared now so that
    // CRIU (parked or not) can be handed it; the node side stays down until the commit.
    auto prepared =
        supervisor_.net().enabled()
            ? jobs::CreateJobNetwork(incoming->job.id, incoming->job.net_address,
                                     /*node_side_up=*/false)
            : Expected<jobs::UniqueFd>(Fail(
                  "node " + node + " has no job network ([net] in its config) for a --net job"));
    if (!prepared) {
      done(ErrorResult(
          409, "cannot move job " + incoming->job.id + " here: " + prepared.error().message));
      return;
    }
    if (dry_run) {
      (void)jobs::RemoveJobLink(incoming->job.id);
    } else {
      incoming->job_netns = std::move(*prepared);
    }
  }
  const std::string criu_config = config_.criu_path;
  const std::string cpuinfo = FromHex(body.value("cpuinfo_hex", ""));
  OffThread(
      [criu_config, outside, node, cpuinfo, scratch = MigrationDir(incoming->id) + "/cpuinfo"] {
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
      [this, incoming, dry_run, rss, node, channel,
       done](std::tuple<migrate::CriuCheck, std::vector<std::string>, std::string> result) {
        auto& [criu, file_problems, cpu_problem] = result;
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
        if (incoming->mode == "postcopy" && incoming->lazy_relay_kind != kLazyRelayTls) {
          // An older source would send the job's memory in the clear.
          problems.push_back("the source " + incoming->source +
                             " would send the job's memory outside TLS (an older agent): "
                             "upgrade it, or move the job by pre-copy");
        }
        if (!problems.empty()) {
          done(JsonResult(409, json{{"error", "job " + incoming->job.id + " cannot move to " +
                                                  node + ": " + Join(problems)},
                                    {"checks", checks}}
                                   .dump()));
          return;
        }
        if (dry_run) {
          done(JsonResult(200, json{{"checks", checks}}.dump()));
          return;
        }
        incoming->images = MigrationDir(incoming->id) + "/images";
        std::error_code ignored;
        migrate::RemoveImageTree(incoming->images);
        fs::create_directories(incoming->images, ignored);
        if (incoming->mode == "postcopy") {
          if (auto pipes = migrate::EnsurePipeMaxSize(); !pipes) {
            done(ErrorResult(409, "on " + node + ": " + pipes.error().message));
            return;
          }
          if (auto relay = DialLazyRelay(incoming); !relay) {
            done(ErrorResult(500, "on " + node + ": cannot start the post-copy relay: " +
                                      relay.error().message));
            return;
          }
          Accept(incoming);
          AnswerPrepare(incoming, criu.path, channel, node,
                        {{"checks", checks}, {"shared_dir", incoming->shared_dir}}, done);
          return;
        }
        if (MountPreCopyImages(incoming->images, rss, available)) {
          spdlog::info("migration {}: pages go to a tmpfs on {}", incoming->id, incoming->images);
        }
        FaultPoint(false, "starting_receiver", incoming->job.id, incoming->id);
        migrate::PageServerTarget listen{HostOf(config_.cluster_advertise), FreePort(7200)};
        auto server = migrate::BackgroundProcess::Start(
            migrate::PageServerCommand(criu.path, incoming->images, listen, PageServerTls()),
            MigrationDir(incoming->id) + "/page-server.out");
        if (!server) {
          done(ErrorResult(500, "cannot start the CRIU page server: " + server.error().message));
          return;
        }
        incoming->page_server = std::move(*server);
        incoming->page_server_port = listen.port;
        // With a channel the parked `criu restore` starts beside the page server, and ParkCriu
        // waits for both; else the page server is waited for here, as it always was.
        if (!channel && !AwaitListening(incoming->page_server, listen.port)) {
          done(ErrorResult(500, "the CRIU page server on " + node + " did not start (see " +
                                    incoming->images + "/page-server.log)"));
          return;
        }
        Accept(incoming);
        AnswerPrepare(incoming, criu.path, channel, node,
                      {{"checks", checks},
                       {"shared_dir", incoming->shared_dir},
                       {"page_server", {{"address", listen.address}, {"port", listen.port}}}},
                      done);
      });
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
      RelayOptions(config_, MigrationDir(incoming->id), incoming->id, incoming->source_node),
      std::move(pair->second), incoming->lazy_source.address, incoming->lazy_source.port);
  if (!relay) return Unexpected<Error>{relay.error()};
  incoming->lazy_socket = std::move(pair->first);
  incoming->lazy_relay = std::move(*relay);
  return {};
}

void MigrationDriver::AnswerPrepare(const std::shared_ptr<Incoming>& incoming,
                                    const std::string& criu,
                                    const std::optional<std::string>& channel,
                                    const std::string& node, json answer, ApiDone done) {
  if (!channel) {  // an older source: CRIU starts at restore
    done(JsonResult(200, answer.dump()));
    return;
  }
  ParkCriu(
      incoming, criu, *channel,
      [this, incoming, node, answer = std::move(answer), done](Expected<void> parked) {
        if (!parked) {
          // Nothing is frozen yet: the source gives up and the job runs on there.
          Abort(incoming->id, [](ApiResult) {});
          done(ErrorResult(500, "cannot start CRIU on " + node + ": " + parked.error().message));
          return;
        }
        done(JsonResult(200, answer.dump()));
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
  incoming->busy = true;  // an abort meanwhile waits for the parked processes
  OffThread(
      [incoming, criu, channel, channel_end]() -> Expected<void> {
        const std::string& images = incoming->images;
        const bool lazy = incoming->mode == "postcopy";
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
        incoming->busy = false;
        incoming->parked = parked.has_value();
        if (!parked && !channel.empty() && ipc_.close) ipc_.close(incoming->job.id);
        if (incoming->abort_requested) {
          Abort(incoming->id, [](ApiResult) {});
          then(Fail("aborted by the source"));
          return;
        }
        then(std::move(parked));
      });
}

void MigrationDriver::Accept(const std::shared_ptr<Incoming>& incoming) {
  incoming_[incoming->id] = incoming;
  FaultPoint(false, "awaiting_images", incoming->job.id, incoming->id);
  // Kept on disk so that an agent restarted mid-migration still finds the copy it may have
  // restored, and asks the source what became of it (LoadUnfinished).
  if (auto written = jobs::WriteFileAtomically(
          MigrationDir(incoming->id) + "/incoming.json",
          json{{"job", jobs::PersistentJson(incoming->job)}, {"shared_dir", incoming->shared_dir}}
              .dump());
      !written) {
    spdlog::error("migration {}: {}", incoming->id, written.error().message);
  }
}

void MigrationDriver::Restore(const std::string& mid, const ApiCall& call, ApiDone done) {
  auto found = incoming_.find(mid);
  if (found == incoming_.end()) {
    done(ErrorResult(404, "no migration " + mid + " is being received here"));
    return;
  }
  auto incoming = found->second;
  if (call.body.size() < 8) {
    done(ErrorResult(400, "malformed restore request"));
    return;
  }
  std::uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length = length << 8 | static_cast<unsigned char>(call.body[i]);
  if (length > call.body.size() - 8) {
    done(ErrorResult(400, "malformed restore request"));
    return;
  }
  std::string images_archive = call.body.substr(8, length);
  std::string dir_archive = call.body.substr(8 + length);
  FaultPoint(false, "restoring", incoming->job.id, incoming->id);
  incoming->busy = true;
  if (incoming->parked) {
    OffThread([incoming, images_archive = std::move(images_archive),
               dir_archive = std::move(
                   dir_archive)] { return RestoreParked(*incoming, images_archive, dir_archive); },
              [this, incoming, done](Expected<std::pair<pid_t, double>> restored) {
                Restored(incoming, std::move(restored), done);
              });
    return;
  }
  const std::string criu = migrate::FindCriu(config_.criu_path);
  // A fresh channel to this agent takes the place of the one the job had at the source.
  auto channel_end = std::make_shared<jobs::UniqueFd>(
      ipc_.open ? jobs::InNetNamespace(
                      incoming->job_netns.get(), [&] { return ipc_.open(incoming->job.id); }, -1)
                : -1);
  auto with_channel = std::make_shared<bool>(false);
  OffThread(
      [incoming, images_archive = std::move(images_archive), dir_archive = std::move(dir_archive),
       criu, channel_end, with_channel]() -> Expected<std::pair<pid_t, double>> {
        if (auto streamed = AwaitPageServer(*incoming); !streamed) {
          return Unexpected<Error>{streamed.error()};
        }
        auto images = migrate::UnpackDirectory(images_archive, incoming->images);
        if (!images) return Unexpected<Error>{images.error()};
        const bool lazy = incoming->mode == "postcopy";
        if (lazy) {
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
            DestinationRestoreOptions(incoming->images, lazy, incoming->rss, incoming->cgroup_roots,
                                      incoming->job_netns.get());
        options.channel_socket = ReadChannelNote(incoming->images);
        *with_channel = !options.channel_socket.empty();
        options.channel_fd = channel_end->get();
        if (incoming->abort_requested) return Fail("aborted by the source");
        auto pid = migrate::Restore(criu, options);
        channel_end->Reset();
        if (!pid) return Unexpected<Error>{pid.error()};
        return std::make_pair(*pid, MillisSince(start));
      },
      [this, incoming, done, with_channel](Expected<std::pair<pid_t, double>> restored) {
        // A job whose channel had no agent end keeps its orphaned socket: the fresh channel
        // made for it here has no job end to talk to.
        if (!*with_channel && ipc_.close) ipc_.close(incoming->job.id);
        Restored(incoming, std::move(restored), done);
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

Expected<void> MigrationDriver::AwaitLazyRelay(Incoming& incoming) {
  // Dialled at prepare, so in long before this in practice; a job restored without it would
  // fault on memory it cannot fetch.
  if (!incoming.lazy_relay) return Fail("no post-copy relay to " + incoming.source_node);
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
  const bool lazy = incoming.mode == "postcopy";
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

void MigrationDriver::Restored(const std::shared_ptr<Incoming>& incoming,
                               Expected<std::pair<pid_t, double>> restored, const ApiDone& done) {
  incoming->busy = false;
  if (restored) NoteRestored(*incoming, restored->first);
  if (incoming->abort_requested) {
    // The source gave up while CRIU was restoring: the copy it made must not live.
    Abort(incoming->id, [](ApiResult) {});
    done(ErrorResult(409, "migration " + incoming->id + " was aborted during the restore"));
    return;
  }
  if (!restored) {
    if (ipc_.close && !supervisor_.Get(incoming->job.id)) ipc_.close(incoming->job.id);
    done(ErrorResult(
        500, "restore on " + cluster_.self().name + " failed: " + restored.error().message));
    return;
  }
  incoming->restored_at = Clock::now();
  FaultPoint(false, "restored", incoming->job.id, incoming->id);
  done(JsonResult(200, json{{"pid", restored->first},
                            {"restore_ms", restored->second},
                            {"pages_bytes", PagesBytes(incoming->images)}}
                           .dump()));
}

void MigrationDriver::Commit(const std::string& mid, const ApiCall& call, ApiDone done) {
  auto found = incoming_.find(mid);
  if (found == incoming_.end() || found->second->restored_pid == 0) {
    // Already committed (a repeated commit) or never restored here.
    auto job = supervisor_.Get(mid.substr(0, mid.rfind('-')));
    if (job && job->state == jobs::JobState::kRunning && job->node == cluster_.self().name) {
      done(JsonResult(200, jobs::ToJson(*job, std::chrono::system_clock::now()).dump()));
      return;
    }
    done(ErrorResult(404, "no restored copy of migration " + mid + " here"));
    return;
  }
  auto incoming = found->second;
  auto [stats_text, ipc_state] = DecodeCommitBody(call.body);
  if (!ipc_state.empty() && ipc_.take_over) {
    // Its rights, and the answers it has not read, are in place before it runs again.
    if (auto taken = ipc_.take_over(incoming->job.id, ipc_state); !taken) {
      spdlog::error("migration {}: job {} resumes without its IPC rights: {}", mid,
                    incoming->job.id, taken.error().message);
    }
  }
  incoming_.erase(found);
  ClaimJobAddress(incoming->job, config_.net_uplink);
  incoming->job_netns.Reset();  // the restored job holds its namespace
  migrate::ResumeTree(incoming->restored_pid);
  json stats = json::parse(stats_text, nullptr, false);
  jobs::JobRecord record = incoming->job;
  if (stats.is_object() && !stats.empty()) {
    stats["resumed_at"] = jobs::FormatTime(std::chrono::system_clock::now());
    record.migrations.push_back(stats);
  }
  auto adopted = supervisor_.AdoptMigrated(record, incoming->restored_pid);
  if (incoming->lazy_daemon) {
    FaultPoint(false, "pulling_pages", incoming->job.id, mid);
    // It still pulls the job's memory from the source; it removes nothing, we clean up later.
    auto daemon = incoming->lazy_daemon;
    const std::string dir = MigrationDir(mid);
    const std::string job = incoming->job.id;
    pulling_[job];
    // Its stream runs through the relay process: left to end with it (never killed from here).
    if (incoming->lazy_relay) incoming->lazy_relay->LetRun();
    std::thread([this, daemon, dir, job, alive = std::weak_ptr<int>(lifetime_)] {
      daemon->Finish(std::chrono::minutes(30));
      migrate::RemoveImageTree(dir);
      if (alive.expired()) return;
      boost::asio::post(io_, [this, job, alive] {
        if (!alive.expired()) PulledIn(job);
      });
    }).detach();
  } else {
    // A GiB of images takes a while to remove: not on the io thread.
    OffThread(
        [dir = MigrationDir(mid)] {
          migrate::RemoveImageTree(dir);
          return 0;
        },
        [](int) {});
  }
  if (!adopted) {
    done(ErrorResult(500, adopted.error().message));
    return;
  }
  spdlog::info("migration {}: job {} resumed here (pid {})", mid, adopted->id, adopted->pid);
  done(JsonResult(200, jobs::ToJson(*adopted, std::chrono::system_clock::now()).dump()));
}

void MigrationDriver::PulledIn(const std::string& job) {
  auto found = pulling_.find(job);
  if (found == pulling_.end()) return;
  auto waiting = std::move(found->second);
  pulling_.erase(found);
  for (auto& move : waiting) move();
}

void MigrationDriver::Abort(const std::string& mid, ApiDone done) {
  auto found = incoming_.find(mid);
  if (found == incoming_.end()) {
    done(JsonResult(200, "{}"));
    return;
  }
  auto incoming = found->second;
  if (incoming->busy) {
    // CRIU is restoring from these files now: removing them under it could leave a
    // half-restored tree behind. The restore's end carries the abort out.
    incoming->abort_requested = true;
    spdlog::info("migration {}: abort noted; done when the running restore ends", mid);
    done(JsonResult(200, "{}"));
    return;
  }
  incoming_.erase(found);
  if (incoming->lazy_relay) incoming->lazy_relay->Stop();
  // Through the pidfd taken when the copy was restored (or found again at start-up): never a
  // process that merely has its pid now.
  if (incoming->restored_pid > 0 && !jobs::SignalPidfd(incoming->restored_pidfd.get(), SIGKILL)) {
    spdlog::warn("migration {}: the restored copy (pid {}) is gone already", mid,
                 incoming->restored_pid);
  }
  if (ipc_.close && !supervisor_.Get(incoming->job.id)) ipc_.close(incoming->job.id);
  if (!incoming->job.net_address.empty() && !supervisor_.Get(incoming->job.id)) {
    // Never routed here (the node side stayed down): the prepared namespace just goes.
    incoming->job_netns.Reset();
    (void)jobs::RemoveJobLink(incoming->job.id);
  }
  const std::string job_dir = incoming->job.dir;
  const bool runs_here = supervisor_.Get(incoming->job.id).has_value() || incoming->shared_dir;
  OffThread(
      [incoming, job_dir, runs_here] {
        incoming->page_server.Finish(std::chrono::milliseconds(0));
        if (incoming->lazy_daemon) incoming->lazy_daemon->Finish(std::chrono::milliseconds(0));
        incoming->parked_daemon.process().Finish(std::chrono::milliseconds(0));
        incoming->parked_restore.process().Finish(std::chrono::milliseconds(0));
        migrate::RemoveImageTree(fs::path(incoming->images).parent_path().string());
        std::error_code ignored;
        if (!runs_here) {
          // The job's user owns what is in it: removed without following their symlinks.
          if (auto removed = migrate::RemoveTreeNoFollow(job_dir); !removed) {
            spdlog::warn("{}", removed.error().message);
          }
        }
        return 0;
      },
      [mid, done](int) {
        spdlog::info("migration {} aborted: the job stays on its source", mid);
        done(JsonResult(200, "{}"));
      });
}

void MigrationDriver::Outcome(const std::string& mid, ApiDone done) {
  std::ifstream file(MigrationDir(mid) + "/outcome");
  std::string outcome;
  file >> outcome;
  done(JsonResult(200,
                  json{{"id", mid}, {"outcome", outcome.empty() ? "unknown" : outcome}}.dump()));
}

// A destination holding a restored, stopped copy that heard no commit asks the source what it
// decided: committed → resume here; aborted → discard; no answer → keep waiting (deciding
// alone could leave two copies or none).
void MigrationDriver::CheckUndecided() {
  undecided_timer_->expires_after(std::chrono::seconds(5));
  undecided_timer_->async_wait([this](const boost::system::error_code& error) {
    if (error) return;
    std::vector<std::pair<std::string, std::shared_ptr<Incoming>>> undecided(incoming_.begin(),
                                                                             incoming_.end());
    for (const auto& [mid, incoming] : undecided) {
      if (incoming->restored_pid == 0 || incoming->busy ||
          Clock::now() - incoming->restored_at < std::chrono::seconds(20)) {
        continue;
      }
      auto source = cluster_.AliveNodeByName(incoming->job.node);
      if (!source) continue;
      ApiCall call;
      call.method = "GET";
      call.target = "/v1/migrations/" + mid;
      call.caller.uid = 0;
      call.caller.identified = true;
      cluster_.Call(*source, call, [this, mid = mid, source = *source](ApiResult result) {
        json answer = json::parse(result.body, nullptr, false);
        if (result.status != 200 || !answer.is_object()) return;
        const std::string outcome = answer.value("outcome", "");
        ApiCall local;
        local.method = "POST";
        local.forwarded = true;
        if (outcome == "committed") {
          // The job's IPC rights travelled in the commit call we missed: fetch them first.
          ApiCall fetch;
          fetch.method = "GET";
          fetch.target = "/v1/migrations/" + mid + "/ipc-state";
          fetch.caller.uid = 0;
          fetch.caller.identified = true;
          cluster_.Call(source, fetch, [this, mid, local](ApiResult state) mutable {
            if (state.status != 200) {
              spdlog::warn("migration {}: the source kept no IPC state: {}", mid, state.body);
            } else {
              local.body = EncodeCommitBody("{}", state.body);
            }
            Commit(mid, local, [](ApiResult) {});
          });
        } else if (outcome == "aborted" || outcome == "unknown") {
          Abort(mid, [](ApiResult) {});
        }
      });
    }
    CheckUndecided();
  });
}

}  // namespace tern::agent
