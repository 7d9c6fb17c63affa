// MigrationDriver: live migration of this node's jobs, and the receiving end of migrations
// from other nodes. The protocol lives in tern::migrate::SourceMachine (source_machine.hpp):
// this adapter feeds it events (a CRIU step's result, the destination's answer, a timer, a
// node lost) and performs the actions it returns, in order: CRIU steps on worker threads
// (never on the agent's io_context thread), calls to the peer agent (protocol_codec.hpp's
// bytes), persisting to a MigrationFileStore, timers, the job's IPC hooks. Retries, give-up
// rules and the dry run are the machine's; this file holds no protocol state of its own.
//
// Source:      POST /v1/jobs/{id}/migrate   {"node", "mode", "dry_run"}
// Destination: POST /v1/migrations/prepare, /v1/migrations/{mid}/restore, .../commit,
//              .../abort (sent by the source agent over the peer link; refused otherwise)
// Either:      GET  /v1/migrations/{mid}   the outcome the source decided (its machine, or its
//              record), so that a destination that lost the commit can still decide.
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
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <tern/ipc/port_router.hpp>
#include <tern/migrate/criu.hpp>
#include <tern/migrate/destination_machine.hpp>
#include <tern/migrate/source_machine.hpp>
#include <utility>
#include <vector>

#include "tern/agent/api_call.hpp"
#include "tern/agent/config.hpp"
#include "tern/agent/migration_file_store.hpp"

namespace tern::jobs {
class JobSupervisor;
struct JobRecord;
}  // namespace tern::jobs

namespace tern::agent {

class Cluster;
class FaultHook;

class MigrationDriver {
 public:
  MigrationDriver(boost::asio::io_context& io, const AgentConfig& config,
                  jobs::JobSupervisor& supervisor, Cluster& cluster);
  ~MigrationDriver();

  // A move that fails before the commit point on a CRIU hiccup (a thread vanishing mid-dump,
  // the page server dropping its session) is tried once more, one that met a file lock the job
  // held up to kLockRetries times in all; each attempt is a fresh move (a fresh page server at
  // the destination), and the job runs at the source in between. A job that came here by
  // post-copy and still pulls its memory moves once all of it has arrived.
  void Migrate(const ApiCall& call, const jobs::JobRecord& job, ApiDone done, int attempt = 1);
  // Where migration events go ("migration" events: started, moved, failed).
  using Publisher = std::function<void(const std::string& type, nlohmann::json fields)>;
  void SetPublisher(Publisher publisher) { publish_ = std::move(publisher); }
  // `criu restore --cgroup-root` values (NodeCgroup::CriuRoots): jobs restored here run in the
  // node's cgroup, not in the source's. Empty: CRIU's default (the source's cgroup paths).
  void SetCgroupRoots(std::vector<std::string> roots) { cgroup_roots_ = std::move(roots); }
  // The fault campaign's hook (fault_hook.hpp), fired as either machine enters a phase; null:
  // none.
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
    // The source's commit record is durable: the hand-off's rights leave the journal
    // (IpcService::SettleHandOff). A restarted source with a commit record: the job's rights,
    // restored from an unsettled hand-off, leave without release (IpcService::ForgetMovedJob).
    std::function<void(const std::string& job)> settle_hand_off;
    std::function<void(const std::string& job)> forget_moved;
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

  // The blocked cases (DestinationMachine's kBlockedSourceSilent, kBlockedPagesLost): what
  // `tern status` shows of a job whose copy here is blocked ({"migration", "state", "from",
  // "reason", "recover"}), and the copies that are not a job here yet, as job entries (state
  // "blocked") for the listing that finds a job's node.
  std::optional<nlohmann::json> BlockedMove(const std::string& job) const;
  std::vector<nlohmann::json> BlockedCopies() const;
  // `tern recover JOB --resume-here|--discard` for the move of `job` held here; refused while
  // the outcome can still be learned.
  void Recover(const std::string& job, bool resume_here, ApiDone done);

 private:
  struct Outgoing;
  struct Incoming;

  // A move of `job` entered `phase` on this side: fires an armed fault that matches.
  void FaultPoint(bool source, std::string_view phase, const std::string& job,
                  const std::string& migration);
  // A lose fault in force drops `request` of move `id` unsent (logged): as a network that loses
  // it, the caller then delivers nothing and the machine's own timers act.
  bool LostByFault(const migrate::Request& request, std::string_view id);

  // Destination: performs a DestinationMachine's actions, in order. A reply goes to the
  // source's call it answers (Incoming::waiting).
  void Prepare(const ApiCall& call, migrate::PrepareRequest prepare, ApiDone done);
  void ToIncoming(const migrate::Request& request, ApiDone done);
  void ExecuteIncoming(const std::shared_ptr<Incoming>& incoming, migrate::MachineActions actions);
  void AskSource(const std::shared_ptr<Incoming>& incoming, migrate::Request request);
  void IncomingStepDone(const std::shared_ptr<Incoming>& incoming, migrate::StepResult result);
  void RunDestinationStep(const std::shared_ptr<Incoming>& incoming,
                          const migrate::StepRequest& step);
  void CheckHere(const std::shared_ptr<Incoming>& incoming, const migrate::PrepareRequest& prepare);
  // Page server (pre-copy) and parked CRIU, ahead of the images.
  void StartReceiver(const std::shared_ptr<Incoming>& incoming,
                     const migrate::PrepareRequest& prepare);
  void RestoreHere(const std::shared_ptr<Incoming>& incoming,
                   const migrate::RestoreRequest& restore);
  void PullPages(const std::shared_ptr<Incoming>& incoming);
  void ResumeCopy(const std::shared_ptr<Incoming>& incoming);
  void DiscardCopy(const std::shared_ptr<Incoming>& incoming);
  void ReportIncoming(const std::shared_ptr<Incoming>& incoming,
                      const migrate::ReportAction& report);
  // Destination moves found in the store at start-up, rebuilt by DestinationMachine::Recover.
  void RecoverIncoming();
  // Starts `criu restore` (and, post-copy, `criu lazy-pages`) for `incoming` ahead of its
  // images (migrate::ParkedCriu); `then` learns whether they wait for them.
  void ParkCriu(const std::shared_ptr<Incoming>& incoming, const std::string& criu,
                const std::string& channel, std::function<void(Expected<void>)> then);
  // Worker side: waits for a pre-copy page server to end (fails if the move was cancelled).
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

  // Source: performs a SourceMachine's actions, in order; a Persist that fails stops them
  // and feeds OnPersistFailed. Replies (to D's questions) go to `answer`.
  void Execute(const std::shared_ptr<Outgoing>& migration, migrate::MachineActions actions,
               const ApiDone* answer = nullptr);
  void SendToDestination(const std::shared_ptr<Outgoing>& migration, migrate::Request request);
  void RunSourceStep(const std::shared_ptr<Outgoing>& migration, const migrate::StepRequest& step);
  void Preflight(const std::shared_ptr<Outgoing>& migration);
  void DumpJob(const std::shared_ptr<Outgoing>& migration, int attempt);
  void StartLazyDump(const std::shared_ptr<Outgoing>& migration);
  // Post-copy, source: makes CRIU's loopback socket and starts the relay process that waits for
  // the destination.
  Expected<void> OpenLazyRelay(const std::shared_ptr<Outgoing>& migration);
  // The step's result goes back to the machine from the io thread, after the actions that
  // started it were all performed.
  void StepDone(const std::shared_ptr<Outgoing>& migration, migrate::StepResult result);
  void KillSourceCopy(const std::shared_ptr<Outgoing>& migration);
  void ResumeSourceCopy(const std::shared_ptr<Outgoing>& migration);
  void Report(const std::shared_ptr<Outgoing>& migration, const migrate::ReportAction& report);
  void ArmTimer(const std::shared_ptr<Outgoing>& migration, const migrate::ArmTimerAction& arm);
  // Source moves found in the store at start-up, rebuilt by SourceMachine::Recover.
  void RecoverOutgoing();
  // D's questions about a move: this node's machine answers, else its record.
  void AnswerQuery(const migrate::Request& query, ApiDone done);
  std::string MigrationDir(const std::string& mid) const;
  static migrate::Millis Now();
  template <typename Work, typename Then>
  void OffThread(Work work, Then then);

  boost::asio::io_context& io_;
  const AgentConfig& config_;
  jobs::JobSupervisor& supervisor_;
  Cluster& cluster_;
  boost::asio::thread_pool workers_{2};
  std::map<std::string, std::shared_ptr<Outgoing>> outgoing_;
  std::map<std::string, std::shared_ptr<Incoming>> incoming_;
  MigrationFileStore store_;
  // Threads outside the pool (a post-copy pull, minutes long) post their result only while
  // the driver lives.
  struct Alive {
    std::mutex mutex;
    bool driver = true;
  };
  std::shared_ptr<Alive> alive_ = std::make_shared<Alive>();
  // Where the next search for a free CRIU port starts: random per agent, so that a restarted
  // agent does not walk into a port a helper of its predecessor still listens on.
  std::uint32_t next_port_ = 0;
  std::uint16_t FreePort(std::uint16_t base);
  Publisher publish_;
  // Jobs moved here by post-copy whose memory `criu lazy-pages` still pulls from their source,
  // with the moves asked for meanwhile: CRIU cannot dump a job before all of it has arrived.
  std::map<std::string, std::vector<std::function<void()>>> pulling_;
  void PulledIn(const std::string& job);
  std::vector<std::string> cgroup_roots_;
  FaultHook* faults_ = nullptr;
  IpcHooks ipc_;
};

}  // namespace tern::agent
