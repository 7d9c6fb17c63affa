// MigrationDriver: live migration of this node's jobs, and the receiving end of migrations
// from other nodes. It performs the actions of tern::migrate::SourceMigration (the protocol's
// state machine) and feeds it their outcomes; CRIU runs on worker threads, never on the
// agent's io_context thread.
//
// Source:      POST /v1/jobs/{id}/migrate   {"node", "mode", "dry_run"}
// Destination: POST /v1/migrations/prepare, /v1/migrations/{mid}/restore, .../commit,
//              .../abort (sent by the source agent over the peer link; refused otherwise)
// Either:      GET  /v1/migrations/{mid}   the outcome the source recorded, so that a
//              destination that lost the commit can still decide.
//
// Pre-copy streams memory to a CRIU page server on the destination while dumping (no full
// image on the source's disk), inside CRIU's own TLS. Post-copy's lazy-page stream goes through
// a relay process per side (`ternd page-relay`, PageRelayProcess) inside the nodes' mutual TLS;
// like CRIU's own post-copy processes it outlives a killed agent. Only the small metadata images
// and the job directory travel in the restore message. The destination restores the job stopped;
// the source then records the commit, kills its frozen copy and tells the destination to resume
// (two-phase: never two copies, never none). Any failure before that resumes the job on the source.
//
// Thread-safety: not thread-safe; all entry points on the io_context thread.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <tern/expected.hpp>
#include <tern/ipc/port_router.hpp>
#include <tern/migrate/criu.hpp>
#include <utility>

#include "tern/agent/api_call.hpp"
#include "tern/agent/config.hpp"

namespace tern::jobs {
class JobSupervisor;
struct JobRecord;
}  // namespace tern::jobs

namespace tern::agent {

class FaultHook;

class Cluster;

class MigrationDriver {
 public:
  MigrationDriver(boost::asio::io_context& io, const AgentConfig& config,
                  jobs::JobSupervisor& supervisor, Cluster& cluster);
  ~MigrationDriver();

  // A move that fails before the commit point on a CRIU hiccup (a thread vanishing mid-dump,
  // the page server dropping its session) is tried once more; the job runs at the source in
  // between.
  void Migrate(const ApiCall& call, const jobs::JobRecord& job, ApiDone done, int attempt = 1);
  // Where migration events go ("migration" events: started, moved, failed).
  using Publisher = std::function<void(const std::string& type, nlohmann::json fields)>;
  void SetPublisher(Publisher publisher) { publish_ = std::move(publisher); }
  // `criu restore --cgroup-root` values (NodeCgroup::CriuRoots): jobs restored here run in the
  // node's cgroup, not in the source's. Empty: CRIU's default (the source's cgroup paths).
  void SetCgroupRoots(std::vector<std::string> roots) { cgroup_roots_ = std::move(roots); }
  // The fault campaign's hook (fault_hook.hpp), fired as moves enter phases; null: none.
  void SetFaultHook(FaultHook* hook) { faults_ = hook; }
  // The job's IPC side: why it cannot move ("" if it can), a fresh channel for a job restored
  // here (returns the job's end, or -1), and the channel's end when the job leaves or fails to
  // arrive. hand_off takes a frozen job's rights out of this agent for `to` (IpcService::
  // HandOff); take_over puts them in place at the destination before the job resumes.
  struct IpcHooks {
    std::function<std::string(const std::string& job)> blocker;
    std::function<std::size_t(const std::string& job)> rights;
    // The job end of the channel this agent holds for the job ("socket:[INODE]"), or "".
    std::function<std::string(const std::string& job)> channel;
    std::function<int(const std::string& job)> open;
    std::function<void(const std::string& job)> close;
    std::function<ipc::PortRouter::Export(const std::string& job, std::uint64_t to, int init_pid)>
        hand_off;
    std::function<Expected<void>(const std::string& job, std::string_view state)> take_over;
    // The job's direct call connections (docs/ipc.md "Direct calls"): their sockets as /proc
    // shows them; shut them all down and refuse new ones while the job moves; allow them again
    // when a move fails and the job stays.
    std::function<std::vector<std::string>(const std::string& job)> direct_sockets;
    std::function<void(const std::string& job)> suspend_direct;
    std::function<void(const std::string& job)> resume_direct;
  };
  void SetIpcHooks(IpcHooks hooks) { ipc_ = std::move(hooks); }
  // A node stopped answering (suspect/dead): moves towards it that have not reached the commit
  // point are aborted now, so that the job is not left frozen until TCP gives up.
  void OnNodeState(std::uint64_t node_id, bool alive);
  // The node `job` is being moved to by a migration this node started (a dry run included),
  // or "" when it is not moving. A pin or unpin asked for meanwhile is refused: the record the
  // destination restores was sent before it, so the change would be lost at the commit.
  std::string MovingTo(const std::string& job) const;
  // Dispatches /v1/migrations/... calls.
  void Handle(const ApiCall& call, const std::vector<std::string>& segments, ApiDone done);

 private:
  // A move of `job` entered `phase` on this side: fires an armed fault that matches.
  void FaultPoint(bool source, std::string_view phase, const std::string& job,
                  const std::string& migration);
  struct Outgoing;
  struct Incoming;

  void Prepare(const ApiCall& call, ApiDone done);
  // Retries the IPC hand-off while the job's operations settle, up to `deadline`.
  void HandOffIpc(const std::shared_ptr<Outgoing>& migration,
                  std::chrono::steady_clock::time_point deadline);
  void Accept(const std::shared_ptr<Incoming>& incoming);
  void Restore(const std::string& mid, const ApiCall& call, ApiDone done);
  // Starts `criu restore` (and, post-copy, `criu lazy-pages`) for `incoming` ahead of its
  // images (migrate::ParkedCriu); `then` learns whether they wait for them.
  void ParkCriu(const std::shared_ptr<Incoming>& incoming, const std::string& criu,
                const std::string& channel, std::function<void(Expected<void>)> then);
  // Answers an accepted prepare with `answer` once CRIU is parked (at once for a source that
  // names no channel); if CRIU cannot start, the move is dropped and the answer is an error.
  void AnswerPrepare(const std::shared_ptr<Incoming>& incoming, const std::string& criu,
                     const std::optional<std::string>& channel, const std::string& node,
                     nlohmann::json answer, ApiDone done);
  // Worker side: waits for a pre-copy page server to end (fails if the source aborted).
  static Expected<void> AwaitPageServer(Incoming& incoming);
  // Post-copy, destination: makes CRIU's loopback socket and dials the source's relay.
  Expected<void> DialLazyRelay(const std::shared_ptr<Incoming>& incoming);
  // Worker side: waits (briefly) for that relay to be up; fails if it failed.
  static Expected<void> AwaitLazyRelay(Incoming& incoming);
  // Worker side of a restore by the parked processes; returns the restored pid and the restore's
  // duration in ms.
  static Expected<std::pair<pid_t, double>> RestoreParked(Incoming& incoming,
                                                          const std::string& images_archive,
                                                          const std::string& dir_archive);
  static Expected<void> UnpackJobDir(const Incoming& incoming, const std::string& dir_archive);
  // Records the copy `criu restore` made (pid, start time, a pidfd; restored.json on disk).
  void NoteRestored(Incoming& incoming, pid_t pid);
  // CRIU's page-server connections go inside TLS with this node's certificates ([tls]).
  migrate::CriuTls PageServerTls() const;
  // Why CRIU could not use PageServerTls() (a file missing, a key others can read); "" if fine.
  std::string PageServerTlsProblem() const;
  // Answers the source's restore call once the restore has ended (io thread).
  void Restored(const std::shared_ptr<Incoming>& incoming,
                Expected<std::pair<pid_t, double>> restored, const ApiDone& done);
  void Commit(const std::string& mid, const ApiCall& call, ApiDone done);
  void Abort(const std::string& mid, ApiDone done);
  void Outcome(const std::string& mid, ApiDone done);
  void CheckUndecided();
  void LoadUnfinished();

  // Source steps.
  void Step(const std::shared_ptr<Outgoing>& migration, int event);
  void SendCommit(const std::shared_ptr<Outgoing>& migration, int attempt);
  void StartLazyDump(const std::shared_ptr<Outgoing>& migration);
  // Post-copy, source: makes CRIU's loopback socket and starts the relay process that waits for
  // the destination.
  Expected<void> OpenLazyRelay(const std::shared_ptr<Outgoing>& migration);
  void Finish(const std::shared_ptr<Outgoing>& migration, unsigned status, std::string error);
  void RecordOutcome(const std::string& mid, const std::string& outcome);
  std::string MigrationDir(const std::string& mid) const;

  template <typename Work, typename Then>
  void OffThread(Work work, Then then);

  boost::asio::io_context& io_;
  const AgentConfig& config_;
  jobs::JobSupervisor& supervisor_;
  Cluster& cluster_;
  boost::asio::thread_pool workers_{2};
  std::map<std::string, std::shared_ptr<Outgoing>> outgoing_;
  std::map<std::string, std::shared_ptr<Incoming>> incoming_;
  std::unique_ptr<boost::asio::steady_timer> undecided_timer_;
  // Where the next search for a free CRIU port starts: random per agent, so that a restarted
  // agent does not walk into a port a helper of its predecessor still listens on.
  std::uint32_t next_port_ = 0;
  std::uint16_t FreePort(std::uint16_t base);
  Publisher publish_;
  // Jobs moved here by post-copy whose memory `criu lazy-pages` still pulls from their source,
  // with the moves asked for meanwhile: CRIU cannot dump a job before all of it has arrived.
  std::map<std::string, std::vector<std::function<void()>>> pulling_;
  void PulledIn(const std::string& job);
  // Lets a helper thread's callback find out that this driver is gone.
  std::shared_ptr<int> lifetime_ = std::make_shared<int>(0);
  std::vector<std::string> cgroup_roots_;
  FaultHook* faults_ = nullptr;
  IpcHooks ipc_;
};

}  // namespace tern::agent
