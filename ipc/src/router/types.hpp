// The records PortRouter::State keeps (state.hpp): ports, links and regions homed on this node
// (the home side), each job's capability table and operations (the job side), and the tickets
// and timers that join the two. Plain values; internal to tern_ipc.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/port_router.hpp>
#include <utility>
#include <variant>
#include <vector>

#include "wire.hpp"

namespace tern::ipc::router {

// Where the receive right of a port (or a link end) homed here is: the states and their
// transitions are drawn in port_router.hpp.
enum class PortState : std::uint8_t { kInTransit, kReceiving };

struct Holder {
  PortState state = PortState::kInTransit;
  std::uint64_t node = 0;  // kReceiving: the node the holding job runs on
  std::string job;         // kReceiving: the holding job

  static Holder Receiving(std::uint64_t node, std::string job) {
    return Holder{PortState::kReceiving, node, std::move(job)};
  }
  static Holder InTransit() { return Holder{}; }
  bool receiving() const { return state == PortState::kReceiving; }
  bool operator==(const Holder&) const = default;
};

struct Waiter {  // a receive waiting at a port's home
  std::uint64_t node = 0;
  std::string job;
  std::uint64_t ticket = 0;
  std::uint64_t timer = 0;
};

struct BlockedSender {  // a send with policy wait, at the port's home
  Envelope envelope;
  std::uint64_t timer = 0;
};

struct DeadNameRequest {
  ObjectId notify;
  std::uint32_t name = 0;
};

// A queued message, or a run of data-only messages of one train (taken a few at a time).
using Queued = std::variant<TransitMessage, TrainRun>;

// The job whose send put bytes into this home's custody (node, job on it); empty for the
// agent's own notifications, which are not charged.
using Sender = std::pair<std::uint64_t, std::string>;

// What a queued message costs its sender's quota: its data and a fixed share for the
// bookkeeping, so that empty messages are not free.
constexpr std::uint64_t kMessageOverhead = 256;

inline std::uint64_t Cost(const TransitMessage& message) {
  std::uint64_t bytes = kMessageOverhead;
  for (const TransitItem& item : message.items) bytes += item.bytes.size();
  return bytes;
}
inline std::uint64_t Cost(const TrainRun& run) {
  return run.bytes.size() + run.count * kMessageOverhead;
}
inline std::uint64_t Cost(const Envelope& e) {
  if (e.kind == Remote::kEnqueueBatch) return Cost(e.batch);
  return e.message ? Cost(*e.message) : 0;
}

struct QueuedEntry {
  Queued item;
  Sender sender;  // charged for it
};

struct Port {
  Holder holder;
  std::uint32_t limit = kDefaultQueueLimit;
  std::deque<QueuedEntry> queue;
  std::uint32_t queued = 0;  // messages in `queue` (a run counts each of its messages)
  std::deque<Waiter> waiters;
  std::deque<BlockedSender> blocked;
  std::vector<std::pair<ObjectId, std::uint32_t>> space_notify;  // notify port, name
  std::int64_t send_refs = 0;
  std::vector<DeadNameRequest> dead_name;
  std::optional<std::pair<ObjectId, std::uint32_t>> no_senders;
  std::optional<ObjectId> port_destroyed;
};

struct LinkOp {
  std::uint64_t node = 0;
  std::string job;
  std::uint32_t handle = 0;
  std::optional<TransitMessage> message;  // a send's
  // A tagged send's (link_send_tagged): the epoch and sequence number it had on the direct
  // connection. Epoch 0: untagged.
  std::uint64_t epoch = 0;
  std::uint32_t seq = 0;
};

// Who matches the offers of one direction of a link (docs/ipc.md "Link operations direct"):
// the home (kHome), or the receiver's libtern on a direct connection (kDirect), while the home
// holds every offer of that direction it gets.
enum class LinkMode : std::uint8_t { kHome = 0, kDirect = 1 };

// A receiver's settle of an epoch: every seq up to `matched_through` that is not in
// `cancelled` was matched on the connection; those in `cancelled` were cancelled there.
struct LinkSettle {
  std::uint64_t epoch = 0;
  std::uint32_t matched_through = 0;
  std::set<std::uint32_t> cancelled;
  bool operator==(const LinkSettle&) const = default;
};

// An offer the home holds while its direction is direct, and the cancels of it that wait for
// the settle (or the break) to be answered: until then the home cannot tell whether the
// receiver matched it.
struct HeldOffer {
  LinkOp op;
  std::vector<Envelope> cancels;
};

// A link's two directions are indexed by the sender's end: direction d is "offers sent on
// ends[d], taken by receives on ends[1 - d]", whose offers wait in sends[d] and receives in
// receives[1 - d].
struct Link {
  ObjectId ends[2];
  Holder holder[2];
  bool released[2] = {false, false};
  std::deque<LinkOp> sends[2];
  std::deque<LinkOp> receives[2];
  bool broken = false;
  // By direction. While kDirect, `epoch` is the one the home drew at the begin and `held` the
  // offers that reached it meanwhile, in order (not matchable). `last_settle` judges tagged
  // offers that come after their epoch's settle.
  LinkMode mode[2] = {LinkMode::kHome, LinkMode::kHome};
  std::uint64_t epoch[2] = {0, 0};
  std::deque<HeldOffer> held[2];
  std::optional<LinkSettle> last_settle[2];
};

struct Region {
  std::uint64_t size = 0;
  std::int64_t refs = 0;
};

struct Entry {
  RightType type = RightType::kNone;
  ObjectId id;
  std::uint32_t refs = 1;
};

struct OpState {  // a link operation, on the job's side
  bool is_receive = false;
  std::uint32_t end_name = 0;         // 0: any
  std::vector<ObjectId> posted_ends;  // where it is posted
  bool done = false;
  JobStatus status = JobStatus::kOk;
  OpResult result;
  std::optional<std::uint32_t> waiting_request;
  std::uint64_t wait_timer = 0;
  std::uint32_t wait_ms = 0;  // the waiting request's timeout (re-armed if the job moves)
};

struct JobState {
  std::optional<std::uint32_t> uid;  // the job's user, when the agent said (names' owners)
  std::map<std::uint32_t, Entry> names;
  // IPC affinity: bytes sent to each destination port since the last TakeTraffic (one map node
  // per port, made on its first message).
  std::map<ObjectId, std::uint64_t> sent_bytes;
  std::map<std::pair<RightType, ObjectId>, std::uint32_t> merged;  // send and region names
  std::uint32_t next_name = 1;
  std::map<std::uint32_t, OpState> ops;
  std::uint32_t next_op = 1;
  std::map<std::uint32_t, std::deque<OpResult>> early;  // matched "any" receives not yet taken
  struct PendingSend {
    std::uint32_t request = 0;
    Envelope envelope;
    int outstanding = 0;
    bool failed = false;
    JobStatus status = JobStatus::kOk;
    std::string error;
    std::vector<std::function<void()>> on_success;
    std::optional<std::pair<std::uint32_t, std::uint32_t>> then_receive;  // name, timeout
    // Bookkeeping at other homes that must be acknowledged before the message leaves (a send
    // right's +1, a receive right marked in transit), by node.
    std::vector<std::pair<std::uint64_t, Envelope>> preops;
    std::vector<std::function<void()>> on_failure;
    bool batch = false;      // a kSendBatch train: answered with the count accepted
    bool send_once = false;  // the destination is a send-once right
  };
  std::deque<std::shared_ptr<PendingSend>> sends;
};

// One entry of a job's capability table, {u32 name, u8 type, id, u32 refs}, as a move's
// state and the journal both carry it. The reader adds it to `job`, or returns false (with
// `job` unchanged) for an entry no router makes: name 0 or one the table holds, a type that
// `allowed` lacks, no refs, or a second name for a send or region right (they merge under
// one name). One check for both, so that a table one accepts the other can restore.
void WriteTableEntry(WireWriter& out, std::uint32_t name, const Entry& entry);
bool ReadTableEntry(WireReader& in, JobState& job, std::initializer_list<RightType> allowed);

enum class TicketKind {
  kSend,
  kPreOp,
  kReceive,
  kMakeSend,
  kStatus,
  kNotify,
  kLinkCancel,
  kNameRegister,
  kNameLookupDelta,
  kNameQuery,
  kNameRegisterCheck,
  kRegionFetch,
  kLinkDirectBegin,
  kLinkSettle,
};

// A name looked up, or checked before it is registered, across the nodes: the answers due and
// the best one so far (docs/ipc.md "Names": the caller's own user's, then root's, then any).
struct NameSearch {
  int remaining = 0;
  ObjectId best;
  int rank = 3;           // of `best`; 3: none
  bool conflict = false;  // a register check: another user holds the name
  std::uint64_t conflict_node = 0;
  std::uint32_t wanted = 0;  // a lookup's wanted name (0: any)
};

constexpr std::uint32_t kRootUid = 0;

// How well a registration owned by `owner` answers a lookup by `caller`: 0 the caller's own
// user, 1 root, 2 another user. An unknown uid is its own user (a job the agent did not name).
inline int OwnerRank(std::optional<std::uint32_t> caller, std::optional<std::uint32_t> owner) {
  if (caller == owner) return 0;
  if (owner == kRootUid) return 1;
  return 2;
}

struct Delivery;  // a received message being made ready for its job

struct Ticket {
  TicketKind kind;
  std::uint64_t node = 0;  // where the operation went (to fail it if that node goes down)
  std::string job;
  std::uint32_t request = 0;
  std::uint32_t name = 0;  // kMakeSend: the receive name; kReceive: the receive name
  ObjectId object;
  std::string text;
  std::shared_ptr<JobState::PendingSend> send;
  std::shared_ptr<Delivery> delivery;
  std::shared_ptr<int> remaining;      // kLinkCancel: cancels due
  std::shared_ptr<NameSearch> search;  // kNameQuery, kNameRegisterCheck
  std::shared_ptr<bool> matched;       // kLinkCancel of an "any" op
  std::uint32_t handle = 0;
  bool many = false;         // kReceive for a receive_many: the reply carries a count
  ObjectId copy;             // kRegionFetch: the local copy being filled (once the size is known)
  std::uint64_t offset = 0;  // kRegionFetch: of the chunk asked for
};

// A job exported to node `to` and its receives that were waiting then: (ticket, the port's home).
// What the exporting agent keeps of the move, and a restarted one restores from its journal
// (durable.cpp) until the move settles.
struct MovedReceives {
  std::uint64_t to = 0;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> receives;
};

// A region's copy to another node travels in chunks of this size, each asked for in turn: no
// side ever holds more than one chunk of it outside the region's memory.
constexpr std::uint64_t kRegionChunk = 4u << 20;

struct Delivery {
  std::string job;
  std::uint32_t request = 0;
  std::uint32_t receive_name = 0;
  TransitMessage message;
  int outstanding = 0;
  std::map<std::size_t, ObjectId> copied;  // item index -> local copy of a remote region
  bool many = false;
};

enum class TimerKind {
  kWaiter,
  kBlockedSender,
  kOpWait,
  kForgetMove,
  kFlushResults,
  kForgetEarlyResults
};

// How long a router forwards late answers for a job that moved away (ten minutes).
constexpr std::uint32_t kRememberMoveMs = 10 * 60 * 1000;
// Results kept for tickets a node does not have yet (State::early_results): at most this many
// bytes of messages in all; past it they are released at once, as before.
constexpr std::uint64_t kMaxEarlyResultBytes = std::uint64_t{64} << 20;
// A receive_many answer stops growing past this many bytes (it still takes one message).
constexpr std::size_t kMaxBatchBytes = 16u << 20;
struct TimerInfo {
  TimerKind kind;
  ObjectId object;
  std::uint64_t ticket = 0;
  std::string job;
  std::uint32_t handle = 0;
  std::uint64_t node = 0;  // kFlushResults: the node whose deferred results go now
};

inline std::string U32Bytes(std::uint32_t v) {
  WireWriter w;
  w.U32(v);
  return w.Take();
}

}  // namespace tern::ipc::router
