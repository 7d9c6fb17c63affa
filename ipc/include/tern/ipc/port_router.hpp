// PortRouter: one agent's share of tern IPC (docs/ipc.md), as a sans-I/O state machine.
//
// It holds the capability tables of the jobs on this node (the "job side") and the ports,
// links and regions homed on this node (the "home side"). Every operation on an object runs at
// the object's home; a job's request for an object homed elsewhere becomes a frame to that
// node, and the result comes back as another. Events go in (a job's request, a frame from a
// node, a timer, a job or node gone); actions come out (a reply to a job, a frame to a node, a
// timer to set), to be carried out by the caller in order. The same class runs in unit tests
// (several routers wired to each other in memory) and in ternd (IpcService drives it).
//
// Guarantees the router keeps: a job can use only names in its own table (anything else is
// kInvalidName and nothing moves); exactly one receive right per port; a full queue never drops
// a message silently (fail, wait or notify, as the sender chose); FIFO per port; rights moved in
// a message leave the sender only once the message is accepted; every right a dying job held
// is released (ports die, send rights drop, link ends break) and the peers notified.
//
// The receive right of a port, as the port's home sees it (states named after Chromium's
// mojo/core/ports; a tern port never leaves its home, so the proxying there is a moved job's
// here). A link end's holder has the same two live states.
//
//     port_allocate                  kSetHolder a=1: the right leaves inside a message
//   ───────────────> kReceiving ──────────────────────────────────────────────> kInTransit
//                    │    ^     (or a port-destroyed notification carries it)       │
//                    │    └──────── kSetHolder a=0: a job took the message ─────────┘
//                    │                                                               │
//                    │ kDestroyPort from its holder (or the holding job gone)        │ the message
//                    v                                                               v is dropped
//                  closed: erased from the home's ports; waiters and blocked senders get
//                  kDeadName, dead-name notifications go out, names for it are dropped
//
//   kReceiving: the holder's receives take from the queue or wait there; messages queue.
//   kInTransit (buffering): messages queue up to the limit; receives fail until a job holds
//     the right again.
//   proxying: a job moved to another node (ExportJob): this node forwards the answers meant
//     for it for ten minutes while every home learns the new node (kJobMoved).
// The code (ipc/src/router/): types.hpp has the records, state.hpp the State that holds them,
// and a file per concept the operations: capability_table, port_home, links, names, regions,
// job_ops (one handler per request), sending, tickets (and timers), job_move, quota, outbox,
// dispatch (one handler per envelope kind), durable (the state a restarted agent restores).
//
// Thread-safety: none; one thread (the agent's io_context) drives it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/peer_sequence.hpp>
#include <vector>

namespace tern::ipc {

struct ObjectId {
  std::uint64_t home = 0;
  std::uint64_t serial = 0;
  auto operator<=>(const ObjectId&) const = default;
  bool valid() const { return serial != 0; }
};

// Region memory lives outside the router (sealed memfds in the agent, strings in tests). The
// router reads and writes it a chunk at a time (a copy to another node travels in chunks), and
// never past the size it was created with.
class RegionStore {
 public:
  virtual ~RegionStore() = default;
  // A region of `size` bytes, all zero, whose size cannot change.
  virtual bool Create(ObjectId id, std::uint64_t size) = 0;
  // Up to `max` bytes from `offset` (fewer only at the end); nullopt if that cannot be read.
  virtual std::optional<std::string> Read(ObjectId id, std::uint64_t offset, std::size_t max) = 0;
  // Writes `bytes` at `offset`, within the region's size.
  virtual bool Write(ObjectId id, std::uint64_t offset, std::string_view bytes) = 0;
  virtual void Destroy(ObjectId id) = 0;
};

// What one job may hold of a node's IPC resources (the agent's [ipc] config section). Over a
// limit the job's request fails with JobStatus::kOverQuota and a message naming the setting;
// nothing else changes.
struct IpcLimits {
  // The largest queue limit port_allocate may ask for (messages; each queued message counts
  // at least 256 bytes against the byte quota below, which is what bounds memory).
  std::uint32_t max_queue_limit = 65536;
  // Receive rights a job may hold when it allocates another port.
  std::uint64_t max_ports_per_job = 4096;
  // Bytes of one job's messages that may wait at this node (queued, or held by a send
  // blocked on a full queue), each message counted as its data plus 256 bytes. At least
  // kMaxMessageBytes, so that one message of the largest size can always wait.
  std::uint64_t max_queued_bytes_per_job = std::uint64_t{512} << 20;
  // The largest region a job may create, or receive a copy of from another node.
  std::uint64_t max_region_bytes = std::uint64_t{1} << 30;
};

class PortRouter {
 public:
  struct JobReplyAction {
    std::string job;
    std::string payload;                // an IpcReply payload, less `shared`
    std::optional<ObjectId> region_fd;  // pass this region's fd with it (region_map)
    // Large data that belong inside the payload (each before the payload's byte `at`), not
    // copied into it: the agent writes them from where they are.
    std::vector<SharedSpan> shared;

    // The whole payload, `shared` put in place (tests; a hand-off).
    std::string Whole() const;
    std::size_t size() const;  // of the whole payload
  };
  struct NodeFrameAction {
    std::uint64_t node = 0;
    std::string payload;  // an IpcRemote payload
  };
  struct TimerAction {
    std::uint64_t id = 0;
    std::chrono::milliseconds after{0};
  };
  struct Actions {
    std::vector<JobReplyAction> replies;
    std::vector<NodeFrameAction> frames;
    std::vector<TimerAction> timers;
    std::vector<std::uint64_t> cancelled_timers;  // need not fire any more
    bool empty() const {
      return replies.empty() && frames.empty() && timers.empty() && cancelled_timers.empty();
    }
  };

  // Draws the random start of this router's tickets (a moving job takes its waiting tickets
  // along, and they must not collide with the new node's). Empty: std::random_device.
  using RandomSource = std::function<std::uint64_t()>;
  PortRouter(std::uint64_t node_id, RegionStore& regions, IpcLimits limits = {},
             RandomSource random = {});
  ~PortRouter();
  PortRouter(const PortRouter&) = delete;
  PortRouter& operator=(const PortRouter&) = delete;

  // A job's channel opened / the job ended (exit, cancel, moved away): all its rights go.
  // `uid` is the job's user: names it registers are its user's (docs/ipc.md "Names").
  void JobAttached(const std::string& job, std::optional<std::uint32_t> uid = std::nullopt);
  // A job re-attached its channel after this agent restarted (or closed the channel): it
  // starts with no rights (whatever it held here before is gone, and it is never handed a right
  // on its word, docs/ipc.md "A channel the job reconnects"), and this agent's names for it start
  // at `first_name`, far from those the job used before, so that an old name the job still
  // uses is `invalid_name`, never another right.
  void JobReattached(const std::string& job, std::optional<std::uint32_t> uid,
                     std::uint32_t first_name);
  // Sets the user of a job attached before it was known (a job restored by a migration).
  void SetJobUid(const std::string& job, std::uint32_t uid);
  std::optional<std::uint32_t> JobUid(const std::string& job) const;
  void JobGone(const std::string& job);
  // One IpcRequest payload from a job's channel. A malformed one gets a kBadRequest reply
  // when it has a request id, else it is returned as an error (the caller closes the channel).
  Expected<void> JobRequest(const std::string& job, std::string_view payload);
  // The same for a payload the router may keep: large data items stay views into it.
  Expected<void> JobRequest(const std::string& job, std::shared_ptr<const std::string> payload);
  // One IpcRemote payload from a peer. A malformed one is an error: close that link.
  Expected<void> NodeFrame(std::uint64_t from, std::string_view payload);
  // The same for a payload the router may keep: a message's data stay views into it.
  Expected<void> NodeFrame(std::uint64_t from, std::shared_ptr<const std::string> payload);
  void NodeUp(std::uint64_t node);
  void NodeDown(std::uint64_t node);  // operations waiting on it fail with kUnavailable
  // The link to `node` broke, and the frames to it wait for it (docs/ipc.md "Sends that wait for
  // their home"): the receives `node`'s jobs wait for here are answered kUnavailable (the answer
  // waits for the link; nothing is taken), so that a message that comes meanwhile is never
  // handed to a receive that died with a restarted agent. This node's operations there stay.
  void NodeUnreachable(std::uint64_t node);
  // `node`'s agent started afresh (its first frame since it started, after those it sends again
  // from its journal): the receives this node's jobs waited for there died with the old agent
  // and fail with kUnavailable, but for those whose request is among `pending` (the frames to
  // `node` not acknowledged yet, trailer and all: the new agent runs them); those its jobs
  // waited for here are answered as NodeUnreachable does.
  void PeerRestarted(std::uint64_t node, const std::vector<std::string_view>& pending);
  void Timer(std::uint64_t id);

  // What to do now; clears the list.
  Actions TakeActions();

  // Moving a job to another node (docs/ipc.md "Moving a job"). ExportJob takes the job's
  // capability table, its link operations, its waiting receives and the names it registered
  // out of this router and returns them as bytes for ImportJob on `to`; from then on this
  // router forwards every answer meant for the job to `to`. Nothing is released: the rights
  // travel. Answers kBusy while the job has operations in flight that cannot travel (a send
  // not yet accepted, a lookup, a cancel): the caller tries again shortly. Fails for a job
  // that cannot move (it holds a memory region, whose pages live on this node).
  enum class ExportOutcome { kExported, kBusy, kRefused };
  struct Export {
    ExportOutcome outcome = ExportOutcome::kRefused;
    std::string state;  // kExported: for ImportJob; else why not
  };
  Export ExportJob(const std::string& job, std::uint64_t to);
  // Until its move is settled, an exported job's table and registered names stay in the
  // durable state as they were (not in the router): a restart before the move's commit record
  // is durable gives them back, and the job, resumed here, re-attaches to them. The source
  // settles once its commit record is written.
  void SettleExport(const std::string& job);
  // A restarted source whose commit record says `job` moved: takes the job's table and names
  // (restored from an unsettled export) out of the router without releasing anything (the
  // destination holds the rights), and settles the export. The job's receives that waited at
  // this node's ports when it left died with the old agent: they fail where the job went
  // (kUnavailable; the answers to those at other homes are forwarded there since the restore).
  void ForgetMovedJob(const std::string& job);
  // Installs an exported job (attached already or not) and tells every node that it lives
  // here now. A malformed state is an error and changes nothing.
  Expected<void> ImportJob(const std::string& job, std::string_view state);
  // Why `job` cannot move with its rights, or "" if it can.
  std::string MoveBlocker(const std::string& job) const;

  // Durable state (docs/ipc.md "Port homes that survive their agent"). Once KeepDurableState
  // is called, the router records what a restarted agent needs to go on where this one stopped,
  // in one journal (state_journal.hpp's records): every message into or out of a queue, and
  // after each turn that changed them, a snapshot of the ports, links and names homed here and
  // the capability tables of the jobs here (the queues are most of the bytes: a snapshot with
  // them would copy every queued message each turn). TakeDurable hands out what the turn
  // added; the caller makes it durable before it carries out the actions of the same turn, so
  // that nothing is acknowledged (a send's answer, a receive's message) before it is recorded.
  // Not kept: operations in flight (tickets, waiting receives, blocked senders, link
  // operations queued or held at a link's home, a job's pending sends: their requests die with
  // the agent and say so), the forwarding of moved jobs, and regions (their memory is the
  // agent's). Each link direction's mode, epoch and last settle are kept.
  struct DurableWrite {
    // Pieces to append to the journal file, in order (large messages are not copied into one
    // buffer); with `rewrite_journal`, the whole file (written aside and renamed over it: the
    // first write, and whenever the journal has grown well past what it holds).
    std::vector<std::string> journal;
    bool rewrite_journal = false;
    bool empty() const { return journal.empty(); }
  };
  void KeepDurableState();
  DurableWrite TakeDurable();
  // Restores a fresh router (no job, no port yet) from the journal an earlier router of this
  // node wrote. Hostile input: a malformed file is an error and the router stays empty; a torn
  // last record is dropped (what a kill during the write leaves).
  struct Restored {
    std::vector<std::string> jobs;  // whose rights were restored
    std::size_t ports = 0;
    std::size_t messages = 0;      // queued
    std::size_t dropped_tail = 0;  // bytes of a torn last journal record
    // Frames to other agents not acknowledged (JournalSent), by node, in order, as sent.
    struct Unacked {
      SequenceTag tag;
      std::shared_ptr<const std::string> payload;
    };
    std::map<std::uint64_t, std::vector<Unacked>> unacked;
  };
  Expected<Restored> RestoreDurable(std::string_view journal_file);
  // Sequenced frames from other agents (peer_sequence.hpp): the last of `node`'s frames this
  // router handled. Recorded in the journal with the turn that handled it (one record per peer
  // per turn), so that a restarted agent knows what a peer sends again (drops and acknowledges
  // it) and never runs a frame twice. PeerDeliveries: the last tag per peer, as restored.
  void PeerDelivered(std::uint64_t node, SequenceTag tag);
  std::map<std::uint64_t, SequenceTag> PeerDeliveries() const;
  // The numbered frames this agent sends other agents, kept in the same journal until they are
  // acknowledged: JournalSent with the turn that made the frame (the payload as it goes on the
  // wire, trailer and all), JournalAcked when the peer acknowledged up to `tag`. A restarted
  // agent gets back what was not acknowledged (Restored::unacked) and sends it again, so that a
  // result or a reply the dying agent had made but not written is not lost.
  void JournalSent(std::uint64_t node, SequenceTag tag, std::shared_ptr<const std::string> payload);
  void JournalAcked(std::uint64_t node, SequenceTag tag);

  // Introspection for the agent (pre-flight, status) and tests.
  bool JobHoldsRights(const std::string& job) const;
  std::size_t RightCount(const std::string& job) const;
  // Jobs that moved away for which late answers are still forwarded (each for ten minutes).
  std::size_t MovedJobCount() const;
  // Jobs on this node that hold a right to a region `job` also holds.
  std::set<std::string> JobsSharingRegions(const std::string& job) const;
  std::size_t PortCount() const;
  // Bytes charged to `job` on `node` for its messages waiting at this node (its quota's use).
  std::uint64_t QueuedBytesOf(std::uint64_t node, const std::string& job) const;
  // IPC affinity: bytes each job on this node sent to ports whose receive right another job
  // holds, per (sender, receiver) pair, since the previous call (which this resets). Counting
  // costs one map update per message; the pairs are resolved here, for ports homed on this
  // node (a port homed elsewhere has its receiver known only there, and is not counted).
  struct Traffic {
    std::string sender;
    std::string receiver;
    std::uint64_t bytes = 0;
  };
  std::vector<Traffic> TakeTraffic();

  // Queries for the direct-call broker (docs/ipc.md "Direct calls"); they change nothing.
  // The port a Mach send right `name` of `job` names (not a send-once right, not a dead name).
  std::optional<ObjectId> SendRightTarget(const std::string& job, std::uint32_t name) const;
  // The port whose receive right `name` of `job` is.
  std::optional<ObjectId> ReceiveRightPort(const std::string& job, std::uint32_t name) const;
  // For a live port homed here: who holds its receive right (node 0: it travels in a message).
  struct ReceiverView {
    std::uint64_t node = 0;
    std::string job;
  };
  std::optional<ReceiverView> ReceiverOf(ObjectId port) const;
  // Link ends as the keys of direct connections (docs/ipc.md "Link operations direct"): the
  // receiver accepts on its own end, the sender asks for its end's peer.
  // The link end `name` of `job`.
  std::optional<ObjectId> LinkEndOf(const std::string& job, std::uint32_t name) const;
  // The peer of the link end `name` of `job`. Exact when the link is homed here; elsewhere the
  // end's pair partner (a link's ends are made as the pair of serials 2k, 2k+1, so each is the
  // other's serial ^ 1), which only the link's home can confirm: LinkHolderOf's `peer`.
  std::optional<ObjectId> LinkPeerOf(const std::string& job, std::uint32_t name) const;
  // For a link end homed here whose link is not broken: who holds it (node 0: it travels in a
  // message) and its peer end.
  struct LinkHolderView {
    std::uint64_t node = 0;
    std::string job;
    ObjectId peer;
  };
  std::optional<LinkHolderView> LinkHolderOf(ObjectId end) const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace tern::ipc
