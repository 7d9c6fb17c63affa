// MigrationDriver's pieces shared by its files (private to agent/core): the state of a move
// on each side (Outgoing at the source, Incoming at the destination), the helpers both sides
// use, and OffThread. The driver is one class split by concept:
//   migration_driver.cpp              construction, CRIU's TLS, directories, ports, the helpers
//   migration_source.cpp              source: a move asked for, the machine's actions, reports
//   migration_source_dump.cpp         source: the dump, post-copy's lazy dump and relay
//   migration_destination.cpp         destination: the calls, the machine's actions, recovery
//   migration_destination_restore.cpp destination: CRIU's restore, post-copy's pull, discards
//
// Thread-safety: as MigrationDriver's (io thread, with CRIU work on the driver's workers).
#pragma once

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
#include <tern/remove_tree.hpp>
#include <tern/subprocess.hpp>
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
#include "tern/agent/migration_driver.hpp"
#include "tern/agent/restored_copy.hpp"

namespace tern::agent {
namespace driver {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
// How long a frozen job's IPC operations (a send not yet accepted, a lookup) may take to
// settle before the move gives up and the job resumes where it was.
inline constexpr std::chrono::milliseconds kIpcHandOffPatience{3000};
inline constexpr std::uint64_t kMaxCarriedBytes = 48ull << 20;
inline constexpr int kLockRetries = 5;
// The fd number post-copy's CRIU processes get their end of the lazy-page relay as (--ps-socket).
inline constexpr int kLazySocketFd = 10;
// What a post-copy source puts in the prepare's lazy_source.relay: its stream goes through a
// TLS relay (a destination refuses a source that does not say so).
inline constexpr const char* kLazyRelayTls = "agents-tls";
// From this size of job on, pre-copy's images go to a tmpfs and `criu restore --auto-dedup`
// punches the pages out of them as it restores them (migrate::RestoreCommand): 1 GiB restored
// in 1.1-1.5 s instead of 1.7-2.2 s. Smaller jobs were slower so: 64 MiB 97 -> 120-166 ms,
// 256 MiB 240-280 -> 290-320 ms (tmpfs) and 400-440 ms (both) (docs/migration.md).
inline constexpr std::uint64_t kBigJob = 512ull << 20;

PageRelayProcess::Options RelayOptions(const AgentConfig& config, const std::string& dir,
                                       const std::string& mid, const std::string& peer);
void WriteChannelNote(const std::string& images, const std::string& channel);
std::string ReadChannelNote(const std::string& images);
// The same for the job's same-node direct connections dumped as external (one per line).
void WriteClosedSocketsNote(const std::string& images, const std::vector<std::string>& sockets);
std::vector<std::string> ReadClosedSocketsNote(const std::string& images);
bool IsTransientDumpError(const std::string& message);
bool IsTransientCriuError(const std::string& message);
double MillisSince(Clock::time_point start);
std::optional<migrate::Request> AsRequest(const migrate::Message& message);
std::optional<migrate::Reply> AsReply(const migrate::Message& message);
migrate::SourceOptions SourceTimings();
std::string HostOf(const std::string& host_port);
std::uint64_t PagesBytes(const std::string& dir);
bool Listening(std::uint16_t port);
bool AwaitListening(BackgroundProcess& server, std::uint16_t port);
std::string Join(const std::vector<std::string>& lines);
std::uint64_t MemAvailable();
bool MountPreCopyImages(const std::string& images, std::uint64_t rss, std::uint64_t available);

}  // namespace driver

struct MigrationDriver::Outgoing {
  explicit Outgoing(migrate::SourceMachine source) : machine(std::move(source)) {}
  migrate::SourceMachine machine;
  bool recovered = false;  // rebuilt from its record after a restart
  ApiCall call;            // as asked, for a second attempt
  int attempt = 1;
  std::string channel;  // the job's IPC channel socket ("socket:[INODE]"), "" if none
  std::vector<std::string> closed_sockets;  // migrate::JobScan::direct_unix
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
  driver::json checks = driver::json::array();
  driver::Clock::time_point started = driver::Clock::now();
  driver::Clock::time_point freeze_start{};
  driver::Clock::time_point transfer_start{};
  driver::Clock::time_point commit_start{};
  double preflight_ms = 0, prepare_ms = 0, dump_ms = 0, transfer_ms = 0, restore_ms = 0,
         commit_ms = 0;
  std::uint64_t images_bytes = 0, jobdir_bytes = 0, pages_bytes = 0;
  driver::json moved_job;
  bool shared_dir = false;  // the destination sees the very same job directory
  bool frozen = false;      // the dump has started: an abort must unlock and resume the job
  // Post-copy: the source's `criu dump --lazy-pages`, serving the job's memory after commit,
  // CRIU's end of its loopback connection (kept for a retried dump until one serves), and the
  // relay that carries that connection to the destination inside TLS.
  std::shared_ptr<BackgroundProcess> lazy_dump;
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
  BackgroundProcess page_server;
  std::uint16_t page_server_port = 0;       // pre-copy: where page_server listens once started
  std::uint64_t rss = 0;                    // the job's resident memory at the source, at prepare
  std::vector<std::string> cgroup_roots;    // --cgroup-root: the job lands in this node's cgroup
  std::vector<std::string> closed_sockets;  // migrate::PrepareRequest::closed_sockets
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
  std::shared_ptr<BackgroundProcess> lazy_daemon;
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
  driver::json adopted;             // the job as it runs here once resumed
  std::unique_ptr<boost::asio::steady_timer> timer;
  // The source's calls waiting for the machine's answer, by the request's index in
  // migrate::Request (a reply answers the request of the same index).
  std::map<std::size_t, ApiDone> waiting;
  ApiDone recover_done;  // `tern recover`, waiting for its report
};

template <typename Work, typename Then>
void MigrationDriver::OffThread(Work work, Then then) {
  boost::asio::post(workers_, [this, work = std::move(work), then = std::move(then)]() mutable {
    auto result = work();
    boost::asio::post(io_, [then = std::move(then), result = std::move(result)]() mutable {
      then(std::move(result));
    });
  });
}

}  // namespace tern::agent
