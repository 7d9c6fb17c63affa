#include <algorithm>
#include <deque>
#include <functional>
#include <random>
#include <tern/ipc/port_router.hpp>
#include <variant>

#include "port_router_wire.hpp"

namespace tern::ipc {

using router::Envelope;
using router::Remote;
using router::TrainRun;
using router::TransitItem;
using router::TransitMessage;
using router::TransitRight;

namespace {

struct Holder {
  std::uint64_t node = 0;  // 0: in transit inside a message
  std::string job;
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

std::uint64_t Cost(const TransitMessage& message) {
  std::uint64_t bytes = kMessageOverhead;
  for (const TransitItem& item : message.items) bytes += item.bytes.size();
  return bytes;
}
std::uint64_t Cost(const TrainRun& run) { return run.bytes.size() + run.count * kMessageOverhead; }
std::uint64_t Cost(const Envelope& e) {
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
};

struct Link {
  ObjectId ends[2];
  Holder holder[2];
  bool released[2] = {false, false};
  std::deque<LinkOp> sends[2];
  std::deque<LinkOp> receives[2];
  bool broken = false;
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
};

// A name looked up, or checked before it is registered, across the nodes: the answers due and
// the best one so far (docs/ipc.md "Names": the caller's own user's, then root's, then any).
struct NameSearch {
  int remaining = 0;
  ObjectId best;
  int rank = 3;           // of `best`; 3: none
  bool conflict = false;  // a register check: another user holds the name
  std::uint64_t conflict_node = 0;
};

constexpr std::uint32_t kRootUid = 0;

// How well a registration owned by `owner` answers a lookup by `caller`: 0 the caller's own
// user, 1 root, 2 another user. An unknown uid is its own user (a job the agent did not name).
int OwnerRank(std::optional<std::uint32_t> caller, std::optional<std::uint32_t> owner) {
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

enum class TimerKind { kWaiter, kBlockedSender, kOpWait, kForgetMove, kFlushResults };

// How long a router forwards late answers for a job that moved away (ten minutes).
constexpr std::uint32_t kRememberMoveMs = 10 * 60 * 1000;
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

std::uint64_t RandomTicketBase() {
  std::random_device random;
  const std::uint64_t high = random();
  const std::uint64_t low = random();
  // 2^62 values apart from wrapping; 0 means "no ticket".
  return (((high << 32) | low) >> 2) | 1;
}

std::string U32Bytes(std::uint32_t v) {
  WireWriter w;
  w.U32(v);
  return w.Take();
}

}  // namespace

struct PortRouter::State {
  std::uint64_t self;
  RegionStore& store;
  std::uint64_t next_serial = 1;
  std::uint64_t next_ticket = 1;
  std::uint64_t next_timer = 1;
  std::map<std::uint64_t, Port> ports;                   // by serial: homed here
  std::map<std::uint64_t, std::shared_ptr<Link>> links;  // by end serial
  std::map<std::uint64_t, Region> regions;
  IpcLimits limits;
  // Bytes each sender has waiting at this home (queued, or blocked on a full queue).
  std::map<Sender, std::uint64_t> charged;
  std::map<std::string, JobState> jobs;
  std::map<std::uint64_t, Ticket> tickets;
  std::map<std::uint64_t, TimerInfo> timers;
  std::map<std::string, std::pair<ObjectId, std::string>> names;  // name -> port, registrant
  std::set<std::uint64_t> peers;
  std::deque<Envelope> local;
  Actions actions;
  // Jobs that moved away, and where to: late answers for them are forwarded. An entry is
  // forgotten after kRememberMove, long after every node has learnt the new place (kJobMoved).
  struct MovedJob {
    std::uint64_t node = 0;
    std::uint64_t forget_timer = 0;
  };
  std::map<std::string, MovedJob> moved_jobs;
  std::map<std::uint64_t, std::uint64_t> forwarded_tickets;
  // Results that wait for the next frame to their node (kEnqueueLazyResult), encoded, and the
  // timer that sends what is still waiting when it fires. It is not cancelled when the results
  // leave early: a steady stream of calls arms one timer per kLazyResultMs, not one per call.
  struct DeferredResults {
    std::vector<std::string> frames;
    std::uint64_t timer = 0;
  };
  std::map<std::uint64_t, DeferredResults> deferred;

  // Tickets start at a random point: a moving job takes its waiting tickets along, and they
  // must not collide with the new node's own.
  State(std::uint64_t node, RegionStore& regions_store, IpcLimits ipc_limits)
      : self(node), store(regions_store), limits(ipc_limits) {
    next_ticket = RandomTicketBase();
  }

  // ---- quotas (IpcLimits) ------------------------------------------------------------------
  static Sender SenderOf(const Envelope& e) {
    if (!e.ticket || e.job.empty()) return {};
    return {e.origin, e.job};
  }
  bool Fits(const Sender& sender, std::uint64_t cost) const {
    if (sender.second.empty()) return true;
    auto it = charged.find(sender);
    const std::uint64_t now = it == charged.end() ? 0 : it->second;
    return now + cost <= limits.max_queued_bytes_per_job;
  }
  void Charge(const Sender& sender, std::uint64_t cost) {
    if (!sender.second.empty() && cost > 0) charged[sender] += cost;
  }
  void Uncharge(const Sender& sender, std::uint64_t cost) {
    if (sender.second.empty() || cost == 0) return;
    auto it = charged.find(sender);
    if (it == charged.end()) return;
    it->second -= std::min(it->second, cost);
    if (it->second == 0) charged.erase(it);
  }
  void OverQuota(const Envelope& e) {
    auto it = charged.find(SenderOf(e));
    EnqueueResult(
        e, JobStatus::kOverQuota,
        "over the job's IPC quota: " + std::to_string(it == charged.end() ? 0 : it->second) +
            " bytes of its messages wait in queues on node " + std::to_string(self) +
            ", and this send needs " + std::to_string(Cost(e)) + " more of the " +
            std::to_string(limits.max_queued_bytes_per_job) +
            " allowed ([ipc] max_queued_bytes_per_job)");
  }

  // ---- plumbing -------------------------------------------------------------------------
  void Post(std::uint64_t node, Envelope e) {
    e.origin = e.origin ? e.origin : self;
    if (node == self) {
      local.push_back(std::move(e));
    } else {
      Emit(node, e);
    }
  }
  // Every frame to another node leaves here, behind the results deferred for that node: they
  // go in the same write (PeerLink writes one turn's frames together).
  void Emit(std::uint64_t node, const Envelope& e) {
    FlushDeferred(node);
    actions.frames.push_back({node, router::EncodeEnvelope(e)});
  }
  void FlushDeferred(std::uint64_t node) {
    auto it = deferred.find(node);
    if (it == deferred.end()) return;
    for (auto& frame : it->second.frames) actions.frames.push_back({node, std::move(frame)});
    it->second.frames.clear();
  }
  // The answer to `request`, at the node that asked. An "ok" the asker can wait for (a send
  // marked kEnqueueLazyResult) rides on the next frame to that node, or leaves on its timer.
  void Respond(const Envelope& request, Envelope result) {
    result.ticket = request.ticket;
    result.origin = self;
    result.job = request.job;
    const bool lazy = request.kind == Remote::kEnqueue &&
                      (request.delta & router::kEnqueueLazyResult) != 0 &&
                      result.status == JobStatus::kOk && request.origin != self;
    if (!lazy) return SendResult(request.origin, std::move(result));
    auto& waiting = deferred[request.origin];
    waiting.frames.push_back(router::EncodeEnvelope(result));
    if (!waiting.timer) {
      waiting.timer = NewTimer(TimerInfo{.kind = TimerKind::kFlushResults, .node = request.origin},
                               router::kLazyResultMs);
    }
  }

  // A result for an operation that `node` asked for (local ones go through the same queue).
  void SendResult(std::uint64_t node, Envelope result) {
    if (node == self) {
      local.push_back(std::move(result));
    } else {
      Emit(node, result);
    }
  }
  void Drain() {
    while (!local.empty()) {
      Envelope e = std::move(local.front());
      local.pop_front();
      Dispatch(e, self);
    }
  }
  void Reply(const std::string& job, std::uint32_t request, JobStatus status,
             std::string_view body = {}) {
    if (!jobs.contains(job)) return;
    actions.replies.push_back({job, EncodeJobReply(request, status, body), std::nullopt});
  }
  // A reply whose body is `out`: what it shares is written in place by the agent.
  void Reply(const std::string& job, std::uint32_t request, WireWriter& out) {
    if (!jobs.contains(job)) return;
    PortRouter::JobReplyAction reply{job, EncodeJobReply(request, JobStatus::kOk, out.out()),
                                     std::nullopt, std::move(out.shared())};
    for (SharedSpan& span : reply.shared) span.at += kJobReplyHeaderSize;
    actions.replies.push_back(std::move(reply));
  }
  void Error(const std::string& job, std::uint32_t request, JobStatus status, std::string message) {
    Reply(job, request, status, message);
  }
  std::uint64_t NewTicket(Ticket ticket) {
    const std::uint64_t id = next_ticket++;
    tickets.emplace(id, std::move(ticket));
    return id;
  }
  std::uint64_t NewTimer(TimerInfo info, std::uint32_t ms) {
    const std::uint64_t id = next_timer++;
    timers.emplace(id, std::move(info));
    actions.timers.push_back({id, std::chrono::milliseconds(ms)});
    return id;
  }
  ObjectId NewObject() { return ObjectId{self, next_serial++}; }

  void RememberMove(const std::string& job, std::uint64_t node) {
    ForgetMove(job);
    moved_jobs[job] = MovedJob{
        node, NewTimer(TimerInfo{.kind = TimerKind::kForgetMove, .job = job}, kRememberMoveMs)};
  }
  void ForgetMove(const std::string& job) {
    auto it = moved_jobs.find(job);
    if (it == moved_jobs.end()) return;
    CancelTimer(it->second.forget_timer);
    moved_jobs.erase(it);
  }

  // ---- capability tables ----------------------------------------------------------------
  Entry* Find(JobState& job, std::uint32_t name) {
    auto it = job.names.find(name);
    return it == job.names.end() ? nullptr : &it->second;
  }
  std::uint32_t Insert(JobState& job, RightType type, ObjectId id, std::uint32_t refs = 1) {
    if (type == RightType::kSend || type == RightType::kRegion) {
      auto merged = job.merged.find({type, id});
      if (merged != job.merged.end()) {
        job.names[merged->second].refs += refs;
        return merged->second;
      }
    }
    const std::uint32_t name = job.next_name++;
    job.names[name] = Entry{type, id, refs};
    if (type == RightType::kSend || type == RightType::kRegion) job.merged[{type, id}] = name;
    return name;
  }
  // Drops `refs` references of a name (all of a non-counted right); no home bookkeeping.
  void Drop(JobState& job, std::uint32_t name, std::uint32_t refs = 1) {
    auto it = job.names.find(name);
    if (it == job.names.end()) return;
    Entry& entry = it->second;
    if ((entry.type == RightType::kSend || entry.type == RightType::kRegion) && entry.refs > refs) {
      entry.refs -= refs;
      return;
    }
    job.merged.erase({entry.type, entry.id});
    job.names.erase(it);
  }
  // Releases a right a job no longer holds, at its home.
  void ReleaseRight(RightType type, ObjectId id, std::uint32_t refs, const std::string& job) {
    switch (type) {
      case RightType::kSend:
        Post(id.home, Envelope{.kind = Remote::kRefDelta,
                               .job = job,
                               .object = id,
                               .delta = -static_cast<std::int64_t>(refs)});
        break;
      case RightType::kRegion:
        Post(id.home, Envelope{.kind = Remote::kRefDelta,
                               .job = job,
                               .object = id,
                               .a = 1,
                               .delta = -static_cast<std::int64_t>(refs)});
        break;
      case RightType::kReceive:
        Post(id.home, Envelope{.kind = Remote::kDestroyPort, .job = job, .object = id});
        break;
      case RightType::kLinkEnd:
        Post(id.home, Envelope{.kind = Remote::kBreakLinkEnd, .job = job, .object = id});
        break;
      default:
        break;
    }
  }
  void ReleaseTransit(const TransitMessage& message) {
    if (message.reply.type != RightType::kNone)
      ReleaseRight(message.reply.type, message.reply.id, 1, "");
    for (const TransitItem& item : message.items) {
      if (item.right.type != RightType::kNone) ReleaseRight(item.right.type, item.right.id, 1, "");
    }
  }

  // ---- job requests ---------------------------------------------------------------------
  void HandleJob(const std::string& job_name, JobState& job, ipc::JobRequest& request) {
    WireReader in(request.body);
    const auto bad = [&](std::string why) {
      Error(job_name, request.id, JobStatus::kBadRequest, std::move(why));
    };
    const auto invalid = [&](std::uint32_t name, std::string_view what) {
      Error(job_name, request.id, JobStatus::kInvalidName,
            "name " + std::to_string(name) + " is not " + std::string(what) + " of this job");
    };
    switch (request.op) {
      case JobOp::kPortAllocate: {
        auto limit = in.U32();
        if (!limit) return bad("port_allocate: missing queue limit");
        if (*limit > limits.max_queue_limit) {
          return Error(job_name, request.id, JobStatus::kOverQuota,
                       "port_allocate: a queue limit of " + std::to_string(*limit) +
                           " messages is over this node's cap of " +
                           std::to_string(limits.max_queue_limit) + " ([ipc] max_queue_limit)");
        }
        const auto receive_rights = std::ranges::count_if(
            job.names, [](const auto& n) { return n.second.type == RightType::kReceive; });
        if (static_cast<std::uint64_t>(receive_rights) >= limits.max_ports_per_job) {
          return Error(job_name, request.id, JobStatus::kOverQuota,
                       "port_allocate: the job holds " + std::to_string(receive_rights) +
                           " receive rights, the most this node allows ([ipc] "
                           "max_ports_per_job)");
        }
        const ObjectId id = NewObject();
        Port& port = ports[id.serial];
        port.holder = Holder{self, job_name};
        port.limit = *limit == 0 ? kDefaultQueueLimit : *limit;
        WireWriter out;
        out.U32(Insert(job, RightType::kReceive, id));
        return Reply(job_name, request.id, JobStatus::kOk, out.out());
      }
      case JobOp::kMakeSend: {
        auto name = in.U32();
        if (!name) return bad("make_send: missing name");
        Entry* entry = Find(job, *name);
        if (!entry || entry->type != RightType::kReceive) return invalid(*name, "a receive right");
        const std::uint64_t ticket = NewTicket(Ticket{.kind = TicketKind::kMakeSend,
                                                      .node = entry->id.home,
                                                      .job = job_name,
                                                      .request = request.id,
                                                      .object = entry->id});
        Post(entry->id.home, Envelope{.kind = Remote::kRefDelta,
                                      .ticket = ticket,
                                      .job = job_name,
                                      .object = entry->id,
                                      .delta = 1});
        return;
      }
      case JobOp::kDeallocate: {
        auto name = in.U32();
        if (!name) return bad("deallocate: missing name");
        Entry* entry = Find(job, *name);
        if (!entry) return invalid(*name, "a right");
        const Entry copy = *entry;
        Drop(job, *name);
        ReleaseRight(copy.type, copy.id, 1, job_name);
        return Reply(job_name, request.id, JobStatus::kOk);
      }
      case JobOp::kRightInfo: {
        auto name = in.U32();
        if (!name) return bad("right_info: missing name");
        Entry* entry = Find(job, *name);
        if (!entry) return invalid(*name, "a right");
        WireWriter out;
        out.U8(static_cast<std::uint8_t>(entry->type));
        out.U32(entry->refs);
        out.U64(entry->id.home);
        out.U64(entry->id.serial);
        return Reply(job_name, request.id, JobStatus::kOk, out.out());
      }
      case JobOp::kPortStatus: {
        auto name = in.U32();
        if (!name) return bad("port_status: missing name");
        Entry* entry = Find(job, *name);
        if (!entry || entry->type != RightType::kReceive) return invalid(*name, "a receive right");
        const std::uint64_t ticket = NewTicket(Ticket{.kind = TicketKind::kStatus,
                                                      .node = entry->id.home,
                                                      .job = job_name,
                                                      .request = request.id});
        Post(entry->id.home, Envelope{.kind = Remote::kPortStatus,
                                      .ticket = ticket,
                                      .job = job_name,
                                      .object = entry->id});
        return;
      }
      case JobOp::kSend: {
        auto send = DecodeSendRequest(request.body, request.payload);
        if (!send) return bad("send: malformed message");
        return StartSend(job_name, job, request.id, std::move(*send));
      }
      case JobOp::kSendBatch:
        return StartBatch(job_name, job, request.id, request.payload, request.body);
      case JobOp::kDirectOpen:
      case JobOp::kDirectAccept:
        // The agent serves these (it owns the sockets); a router alone has no direct calls.
        return bad("direct calls are not served here");
      case JobOp::kSendReceive: {
        auto name = in.U32();
        auto timeout = in.U32();
        auto send =
            timeout ? DecodeSendRequest(request.body.substr(8), request.payload) : std::nullopt;
        if (!send) return bad("send_receive: malformed request");
        Entry* entry = Find(job, *name);
        if (!entry || entry->type != RightType::kReceive) return invalid(*name, "a receive right");
        return StartSend(job_name, job, request.id, std::move(*send),
                         std::make_pair(*name, *timeout));
      }
      case JobOp::kReceive: {
        auto name = in.U32();
        auto timeout = in.U32();
        if (!timeout) return bad("receive: missing name or timeout");
        return StartReceive(job_name, job, request.id, *name, *timeout);
      }
      case JobOp::kReceiveMany: {
        auto name = in.U32();
        auto timeout = in.U32();
        auto max = in.U32();
        if (!max || *max == 0) return bad("receive_many: needs a name, a timeout and a maximum");
        if (auto batch = TakeQueuedHere(job_name, job, *name, *max)) {
          return Reply(job_name, request.id, *batch);
        }
        return StartReceive(job_name, job, request.id, *name, *timeout, /*many=*/true);
      }
      case JobOp::kRequestNotification: {
        auto name = in.U32();
        auto kind = in.U8();
        auto notify = in.U32();
        if (!notify || *kind < 1 || *kind > 3) return bad("request_notification: bad arguments");
        Entry* entry = Find(job, *name);
        Entry* target = Find(job, *notify);
        if (!target || target->type == RightType::kDeadName ||
            target->type == RightType::kLinkEnd || target->type == RightType::kRegion) {
          return invalid(*notify, "a right to a live port");
        }
        const auto want = static_cast<NotificationKind>(*kind);
        const RightType needed =
            want == NotificationKind::kDeadName ? RightType::kSend : RightType::kReceive;
        if (!entry) return invalid(*name, "a right");
        if (want == NotificationKind::kDeadName && entry->type == RightType::kDeadName) {
          // Already dead: tell at once, as Mach does.
          PostNotification(target->id, kDeadNameNotification, U32Bytes(*name));
          return Reply(job_name, request.id, JobStatus::kOk);
        }
        if (entry->type != needed &&
            !(needed == RightType::kSend && entry->type == RightType::kSendOnce)) {
          return invalid(*name, needed == RightType::kSend ? "a send right" : "a receive right");
        }
        const std::uint64_t ticket = NewTicket(Ticket{.kind = TicketKind::kNotify,
                                                      .node = entry->id.home,
                                                      .job = job_name,
                                                      .request = request.id});
        Post(entry->id.home, Envelope{.kind = Remote::kNotifyRequest,
                                      .ticket = ticket,
                                      .job = job_name,
                                      .object = entry->id,
                                      .object2 = target->id,
                                      .a = *kind,
                                      .c = *name});
        return;
      }
      case JobOp::kNameRegister: {
        auto text = in.Bytes();
        auto name = in.U32();
        if (!name || text->empty()) return bad("name_register: needs a name and a right");
        Entry* entry = Find(job, *name);
        if (!entry || (entry->type != RightType::kSend && entry->type != RightType::kReceive)) {
          return invalid(*name, "a send or receive right");
        }
        if (auto taken = names.find(*text); taken != names.end()) {
          return Error(job_name, request.id, JobStatus::kExists, TakenWhy(job, *text, taken));
        }
        const std::uint64_t ticket = NewTicket(Ticket{.kind = TicketKind::kNameRegister,
                                                      .node = entry->id.home,
                                                      .job = job_name,
                                                      .request = request.id,
                                                      .object = entry->id,
                                                      .text = *text});
        Post(entry->id.home, Envelope{.kind = Remote::kRefDelta,
                                      .ticket = ticket,
                                      .job = job_name,
                                      .object = entry->id,
                                      .delta = 1});
        return;
      }
      case JobOp::kNameUnregister: {
        auto text = in.Bytes();
        if (!text) return bad("name_unregister: needs a name");
        auto it = names.find(*text);
        if (it == names.end() || it->second.second != job_name) {
          return Error(job_name, request.id, JobStatus::kNotFound,
                       "this job has not registered \"" + *text + "\"");
        }
        ReleaseRight(RightType::kSend, it->second.first, 1, job_name);
        names.erase(it);
        return Reply(job_name, request.id, JobStatus::kOk);
      }
      case JobOp::kNameLookup: {
        auto text = in.Bytes();
        if (!text) return bad("name_lookup: needs a name");
        // The caller's own user's registration wins, then root's, then another user's: a
        // name another user registered on some node does not capture this user's calls.
        auto search = std::make_shared<NameSearch>();
        if (auto it = names.find(*text); it != names.end()) {
          search->best = it->second.first;
          search->rank = OwnerRank(job.uid, OwnerOf(it->second.second));
          if (search->rank == 0 || peers.empty()) {
            return LookupFound(job_name, request.id, *text, search->best);
          }
        }
        if (peers.empty()) {
          return Error(job_name, request.id, JobStatus::kNotFound,
                       "no port is registered as \"" + *text + "\"");
        }
        search->remaining = static_cast<int>(peers.size());
        for (std::uint64_t peer : peers) {
          const std::uint64_t ticket = NewTicket(Ticket{.kind = TicketKind::kNameQuery,
                                                        .node = peer,
                                                        .job = job_name,
                                                        .request = request.id,
                                                        .text = *text,
                                                        .search = search});
          Post(peer,
               Envelope{
                   .kind = Remote::kNameQuery, .ticket = ticket, .job = job_name, .text = *text});
        }
        return;
      }
      case JobOp::kLinkCreate: {
        auto link = std::make_shared<Link>();
        link->ends[0] = NewObject();
        link->ends[1] = NewObject();
        link->holder[0] = link->holder[1] = Holder{self, job_name};
        links[link->ends[0].serial] = link;
        links[link->ends[1].serial] = link;
        WireWriter out;
        out.U32(Insert(job, RightType::kLinkEnd, link->ends[0]));
        out.U32(Insert(job, RightType::kLinkEnd, link->ends[1]));
        return Reply(job_name, request.id, JobStatus::kOk, out.out());
      }
      case JobOp::kLinkSend: {
        auto name = in.U32();
        auto message = in.ReadMessage();
        if (!message) return bad("link_send: malformed message");
        Entry* entry = Find(job, *name);
        if (!entry || entry->type != RightType::kLinkEnd) return invalid(*name, "a link end");
        auto transit = DataOnly(std::move(*message));
        if (!transit) return bad("link messages carry data; send rights in port messages");
        const std::uint32_t handle = job.next_op++;
        job.ops[handle] =
            OpState{.is_receive = false, .end_name = *name, .posted_ends = {entry->id}};
        Post(entry->id.home, Envelope{.kind = Remote::kLinkPost,
                                      .job = job_name,
                                      .object = entry->id,
                                      .a = 0,
                                      .b = handle,
                                      .message = std::move(*transit)});
        WireWriter out;
        out.U32(handle);
        return Reply(job_name, request.id, JobStatus::kOk, out.out());
      }
      case JobOp::kLinkReceive: {
        auto name = in.U32();
        if (!name) return bad("link_receive: missing end");
        std::vector<std::pair<std::uint32_t, ObjectId>> ends;
        if (*name == 0) {
          for (const auto& [n, entry] : job.names) {
            if (entry.type == RightType::kLinkEnd) ends.emplace_back(n, entry.id);
          }
          if (ends.empty()) return bad("link_receive on any link: this job holds no link end");
        } else {
          Entry* entry = Find(job, *name);
          if (!entry || entry->type != RightType::kLinkEnd) return invalid(*name, "a link end");
          ends.emplace_back(*name, entry->id);
        }
        const std::uint32_t handle = job.next_op++;
        OpState& op = job.ops[handle];
        op.is_receive = true;
        op.end_name = *name;
        // A message matched by an earlier "any" receive that was not taken then.
        for (const auto& [n, id] : ends) {
          auto early = job.early.find(n);
          if (early != job.early.end() && !early->second.empty()) {
            op.done = true;
            op.result = std::move(early->second.front());
            early->second.pop_front();
            break;
          }
        }
        if (!op.done) {
          for (const auto& [n, id] : ends) {
            op.posted_ends.push_back(id);
            Post(
                id.home,
                Envelope{
                    .kind = Remote::kLinkPost, .job = job_name, .object = id, .a = 1, .b = handle});
          }
        }
        WireWriter out;
        out.U32(handle);
        return Reply(job_name, request.id, JobStatus::kOk, out.out());
      }
      case JobOp::kOpWait:
      case JobOp::kOpPoll: {
        auto handle = in.U32();
        std::optional<std::uint32_t> timeout = kWaitForever;
        if (request.op == JobOp::kOpWait) timeout = in.U32();
        if (!handle || !timeout) return bad("wait/poll: missing handle");
        auto it = job.ops.find(*handle);
        if (it == job.ops.end()) return invalid(*handle, "an operation");
        OpState& op = it->second;
        if (op.done)
          return FinishOp(job_name, job, *handle, request.id, request.op == JobOp::kOpPoll);
        if (request.op == JobOp::kOpPoll) {
          WireWriter out;
          out.U8(0);
          return Reply(job_name, request.id, JobStatus::kOk, out.out());
        }
        if (op.waiting_request) return bad("another thread waits on this operation");
        if (*timeout == 0) {
          return Error(job_name, request.id, JobStatus::kTimedOut, "the operation is not done");
        }
        op.waiting_request = request.id;
        op.wait_ms = *timeout;
        if (*timeout != kWaitForever) {
          op.wait_timer = NewTimer(
              TimerInfo{.kind = TimerKind::kOpWait, .job = job_name, .handle = *handle}, *timeout);
        }
        return;
      }
      case JobOp::kOpCancel: {
        auto handle = in.U32();
        if (!handle) return bad("cancel: missing handle");
        auto it = job.ops.find(*handle);
        if (it == job.ops.end()) return invalid(*handle, "an operation");
        if (it->second.done) {
          return Error(job_name, request.id, JobStatus::kAlreadyMatched,
                       "the operation has been matched already");
        }
        auto remaining = std::make_shared<int>(static_cast<int>(it->second.posted_ends.size()));
        auto matched = std::make_shared<bool>(false);
        for (ObjectId end : it->second.posted_ends) {
          const std::uint64_t ticket = NewTicket(Ticket{.kind = TicketKind::kLinkCancel,
                                                        .node = end.home,
                                                        .job = job_name,
                                                        .request = request.id,
                                                        .remaining = remaining,
                                                        .matched = matched,
                                                        .handle = *handle});
          Post(end.home, Envelope{.kind = Remote::kLinkCancel,
                                  .ticket = ticket,
                                  .job = job_name,
                                  .object = end,
                                  .b = *handle});
        }
        return;
      }
      case JobOp::kRegionCreate: {
        auto size = in.U64();
        if (!size || *size == 0) return bad("region_create: size must be at least 1 byte");
        if (*size > limits.max_region_bytes) {
          return Error(job_name, request.id, JobStatus::kOverQuota,
                       "region_create: " + std::to_string(*size) +
                           " bytes is over this node's cap of " +
                           std::to_string(limits.max_region_bytes) +
                           " bytes a region ([ipc] max_region_bytes)");
        }
        const ObjectId id = NewObject();
        if (!store.Create(id, *size)) {
          return Error(job_name, request.id, JobStatus::kUnavailable,
                       "cannot create a region of " + std::to_string(*size) + " bytes");
        }
        regions[id.serial] = Region{*size, 1};
        WireWriter out;
        out.U32(Insert(job, RightType::kRegion, id));
        return Reply(job_name, request.id, JobStatus::kOk, out.out());
      }
      case JobOp::kRegionMap: {
        auto name = in.U32();
        if (!name) return bad("region_map: missing name");
        Entry* entry = Find(job, *name);
        if (!entry || entry->type != RightType::kRegion) return invalid(*name, "a region");
        auto region = regions.find(entry->id.serial);
        if (entry->id.home != self || region == regions.end()) {
          return Error(job_name, request.id, JobStatus::kUnavailable, "the region is gone");
        }
        WireWriter out;
        out.U64(region->second.size);
        actions.replies.push_back(
            {job_name, EncodeJobReply(request.id, JobStatus::kOk, out.out()), entry->id});
        return;
      }
    }
    bad("unknown op " + std::to_string(static_cast<int>(request.op)));
  }

  // receive_many's short cut: when the port is homed here and messages wait, they go to the
  // job in one reply ([u32 count][messages]) without a trip through the home's envelopes. A
  // message with a remote region (copied first) ends the batch, and so does reaching
  // kMaxBatchBytes (a job reads its answers whole). Nothing queued: nullopt.
  std::optional<WireWriter> TakeQueuedHere(const std::string& job_name, JobState& job,
                                           std::uint32_t name, std::uint32_t max) {
    Entry* entry = Find(job, name);
    if (!entry || entry->type != RightType::kReceive || entry->id.home != self) return {};
    auto port = ports.find(entry->id.serial);
    if (port == ports.end() || port->second.holder != Holder{self, job_name}) return {};
    auto& queue = port->second.queue;
    WireWriter out(/*share_data=*/true);
    out.U32(0);  // the count, filled in below
    std::uint32_t count = 0;
    while (count < max && !queue.empty() && out.size() < kMaxBatchBytes) {
      QueuedEntry& front = queue.front();
      if (auto* run = std::get_if<TrainRun>(&front.item)) {
        const std::uint32_t n = std::min(max - count, run->count);
        const std::uint64_t before = Cost(*run);
        router::WriteRun(out, *run, n, name);
        Uncharge(front.sender, before - Cost(*run));
        count += n;
        port->second.queued -= n;
        if (run->empty()) queue.pop_front();
        continue;
      }
      auto& message = std::get<TransitMessage>(front.item);
      if (NeedsFetch(message)) break;
      Uncharge(front.sender, Cost(message));
      if (!WriteDataOnly(out, message, name)) {
        out.WriteMessage(Convert(job, job_name, message, name, {}));
      }
      queue.pop_front();
      --port->second.queued;
      ++count;
    }
    if (count == 0) return {};
    RoomFreed(port->second);
    WireWriter header;
    header.U32(count);
    out.out().replace(0, 4, header.out());
    return out;
  }

  // A job's message that carries data only (bytes, out-of-line), as it travels; nullopt if an
  // item is a right. The reverse of WriteDataOnly.
  static std::optional<TransitMessage> DataOnly(Message message) {
    TransitMessage transit;
    transit.id = message.id;
    transit.items.reserve(message.items.size());
    for (Item& item : message.items) {
      if (item.kind != ItemKind::kBytes && item.kind != ItemKind::kOutOfLine) return std::nullopt;
      transit.items.push_back(TransitItem::Of(item));
    }
    return transit;
  }

  // A message with no rights in it, written as the job sees it without building a Message
  // (the common case of a stream). False, and nothing written, for one that carries rights.
  static bool WriteDataOnly(WireWriter& out, const TransitMessage& transit,
                            std::uint32_t receive_name) {
    if (transit.reply.type != RightType::kNone) return false;
    for (const TransitItem& item : transit.items) {
      if (item.kind != ItemKind::kBytes && item.kind != ItemKind::kOutOfLine) return false;
    }
    out.WriteMessageHeader({.destination = receive_name,
                            .id = transit.id,
                            .item_count = static_cast<std::uint32_t>(transit.items.size())});
    for (const TransitItem& item : transit.items) {
      out.U8(static_cast<std::uint8_t>(item.kind));
      out.Data(item.bytes, item.owner);
    }
    return true;
  }

  void StartReceive(const std::string& job_name, JobState& job, std::uint32_t request,
                    std::uint32_t name, std::uint32_t timeout, bool many = false) {
    Entry* entry = Find(job, name);
    if (entry && entry->type == RightType::kDeadName) {
      return Error(job_name, request, JobStatus::kDeadName, "the port is dead");
    }
    if (!entry || entry->type != RightType::kReceive) {
      return Error(job_name, request, JobStatus::kInvalidName,
                   "name " + std::to_string(name) + " is not a receive right of this job");
    }
    const std::uint64_t ticket = NewTicket(Ticket{.kind = TicketKind::kReceive,
                                                  .node = entry->id.home,
                                                  .job = job_name,
                                                  .request = request,
                                                  .name = name,
                                                  .many = many});
    Post(entry->id.home, Envelope{.kind = Remote::kReceiveWait,
                                  .ticket = ticket,
                                  .job = job_name,
                                  .object = entry->id,
                                  .a = timeout});
  }

  // The uid of the job that registered a name here (nullopt: unknown to this agent).
  std::optional<std::uint32_t> OwnerOf(const std::string& registrant) const {
    auto it = jobs.find(registrant);
    return it == jobs.end() ? std::nullopt : it->second.uid;
  }

  static std::string UidText(std::optional<std::uint32_t> uid) {
    return uid ? "uid " + std::to_string(*uid) : "an unknown user";
  }

  // Why `job` may not register `text`, which is registered here already.
  std::string TakenWhy(const JobState& job, const std::string& text,
                       std::map<std::string, std::pair<ObjectId, std::string>>::iterator taken) {
    const auto owner = OwnerOf(taken->second.second);
    if (owner == job.uid) return "the name \"" + text + "\" is registered already";
    return "the name \"" + text + "\" is registered already, by another user (" + UidText(owner) +
           ")";
  }

  void LookupFound(const std::string& job, std::uint32_t request, const std::string& text,
                   ObjectId port) {
    const std::uint64_t ticket = NewTicket(Ticket{.kind = TicketKind::kNameLookupDelta,
                                                  .node = port.home,
                                                  .job = job,
                                                  .request = request,
                                                  .object = port,
                                                  .text = text});
    Post(port.home,
         Envelope{
             .kind = Remote::kRefDelta, .ticket = ticket, .job = job, .object = port, .delta = 1});
  }

  // A right named in a message: checks it and builds its transit form plus the bookkeeping.
  JobStatus CarryRight(const std::string& job_name, JobState& job, std::uint32_t name,
                       Disposition disposition, JobState::PendingSend& send,
                       std::map<std::uint32_t, std::uint32_t>& moved, TransitRight& out,
                       std::string& error) {
    Entry* entry = Find(job, name);
    if (!entry) {
      error = "name " + std::to_string(name) + " is not a right of this job";
      return JobStatus::kInvalidName;
    }
    if (entry->type == RightType::kDeadName) {
      error = "name " + std::to_string(name) + " is a dead name";
      return JobStatus::kDeadName;
    }
    const ObjectId id = entry->id;
    const auto wrong = [&](std::string_view what) {
      error = "name " + std::to_string(name) + " is not " + std::string(what);
      return JobStatus::kInvalidName;
    };
    const auto needs_once = [&]() {
      // A right that moves whole may appear only once in a message.
      return ++moved[name] == 1;
    };
    // A right with one holder (receive right, link end) moves: its home marks it in transit
    // before the message leaves, and gives it back to the sender if the send fails.
    const auto move_held = [&](RightType type, Remote set_holder) {
      if (!needs_once()) return wrong("movable twice");
      out = {type, id};
      send.preops.emplace_back(id.home,
                               Envelope{.kind = set_holder, .job = job_name, .object = id, .a = 1});
      send.on_success.push_back([this, job_name, name] { DropIfHeld(job_name, name); });
      send.on_failure.push_back([this, job_name, id, set_holder] {
        Post(id.home, Envelope{.kind = set_holder, .job = job_name, .object = id});
      });
      return JobStatus::kOk;
    };
    switch (disposition) {
      case Disposition::kMoveReceive:
        if (entry->type != RightType::kReceive) return wrong("a receive right");
        return move_held(RightType::kReceive, Remote::kSetHolder);
      case Disposition::kMoveSend:
        if (entry->type != RightType::kSend) return wrong("a send right");
        if (++moved[name] > entry->refs) return wrong("holding that many send references");
        out = {RightType::kSend, id};
        send.on_success.push_back([this, job_name, name] { DropIfHeld(job_name, name); });
        return JobStatus::kOk;
      case Disposition::kCopySend:
      case Disposition::kMakeSend:
        if (disposition == Disposition::kCopySend && entry->type != RightType::kSend) {
          return wrong("a send right");
        }
        if (disposition == Disposition::kMakeSend && entry->type != RightType::kReceive) {
          return wrong("a receive right");
        }
        out = {RightType::kSend, id};
        send.preops.emplace_back(
            id.home,
            Envelope{.kind = Remote::kRefDelta, .job = job_name, .object = id, .delta = 1});
        send.on_failure.push_back([this, id] {
          Post(id.home, Envelope{.kind = Remote::kRefDelta, .object = id, .delta = -1});
        });
        return JobStatus::kOk;
      case Disposition::kMoveSendOnce:
        if (entry->type != RightType::kSendOnce) return wrong("a send-once right");
        if (!needs_once()) return wrong("movable twice");
        out = {RightType::kSendOnce, id};
        send.on_success.push_back([this, job_name, name] { DropIfHeld(job_name, name); });
        return JobStatus::kOk;
      case Disposition::kMakeSendOnce:
        if (entry->type != RightType::kReceive) return wrong("a receive right");
        out = {RightType::kSendOnce, id};
        return JobStatus::kOk;
      case Disposition::kMoveLinkEnd:
        if (entry->type != RightType::kLinkEnd) return wrong("a link end");
        return move_held(RightType::kLinkEnd, Remote::kSetLinkHolder);
      case Disposition::kCopyRegion:
      case Disposition::kMoveRegion:
        if (entry->type != RightType::kRegion) return wrong("a region");
        out = {RightType::kRegion, id};
        if (disposition == Disposition::kMoveRegion) {
          if (++moved[name] > entry->refs) return wrong("holding that many region references");
          send.on_success.push_back([this, job_name, name] { DropIfHeld(job_name, name); });
        } else {
          send.preops.emplace_back(
              id.home,
              Envelope{
                  .kind = Remote::kRefDelta, .job = job_name, .object = id, .a = 1, .delta = 1});
          send.on_failure.push_back([this, id] {
            Post(id.home, Envelope{.kind = Remote::kRefDelta, .object = id, .a = 1, .delta = -1});
          });
        }
        return JobStatus::kOk;
      default:
        error = "bad disposition " + std::to_string(static_cast<int>(disposition));
        return JobStatus::kBadRequest;
    }
  }

  void DropIfHeld(const std::string& job_name, std::uint32_t name) {
    auto job = jobs.find(job_name);
    if (job != jobs.end()) Drop(job->second, name);
  }

  void StartSend(const std::string& job_name, JobState& job, std::uint32_t request,
                 SendRequest send_request,
                 std::optional<std::pair<std::uint32_t, std::uint32_t>> then_receive = {}) {
    auto send = std::make_shared<JobState::PendingSend>();
    send->request = request;
    send->then_receive = then_receive;
    std::map<std::uint32_t, std::uint32_t> moved;
    const Message& message = send_request.message;
    if (message.ByteSize() > kMaxMessageBytes) {
      return Error(job_name, request, JobStatus::kTooLarge, "message over 256 MiB");
    }
    TransitMessage transit;
    transit.id = message.id;
    std::string error;
    // The destination.
    Entry* dest = Find(job, message.destination);
    if (!dest) {
      return Error(job_name, request, JobStatus::kInvalidName,
                   "name " + std::to_string(message.destination) + " is not a right of this job");
    }
    if (dest->type == RightType::kDeadName) {
      return Error(job_name, request, JobStatus::kDeadName, "the destination port is dead");
    }
    const std::uint32_t dest_name = message.destination;
    if (dest->type == RightType::kSend) {
      if (message.destination_disposition == Disposition::kMoveSend) {
        send->on_success.push_back([this, job_name, dest_name, id = dest->id] {
          DropIfHeld(job_name, dest_name);
          Post(id.home, Envelope{.kind = Remote::kRefDelta, .object = id, .delta = -1});
        });
      } else if (message.destination_disposition != Disposition::kCopySend) {
        return Error(job_name, request, JobStatus::kBadRequest,
                     "a send right is used as copy-send or move-send");
      }
    } else if (dest->type == RightType::kSendOnce) {
      send->send_once = true;
      send->on_success.push_back([this, job_name, dest_name] { DropIfHeld(job_name, dest_name); });
    } else if (dest->type != RightType::kReceive) {
      return Error(job_name, request, JobStatus::kInvalidName,
                   "name " + std::to_string(dest_name) + " is not a right to send on");
    }
    transit.destination = dest->id;
    const ObjectId dest_id = dest->id;
    job.sent_bytes[dest_id] += message.ByteSize();
    if (message.reply != 0) {
      const JobStatus status = CarryRight(job_name, job, message.reply, message.reply_disposition,
                                          *send, moved, transit.reply, error);
      if (status != JobStatus::kOk) return Error(job_name, request, status, error);
    }
    for (const Item& item : message.items) {
      TransitItem out = TransitItem::Of(item);
      if (item.kind != ItemKind::kBytes && item.kind != ItemKind::kOutOfLine) {
        const JobStatus status =
            CarryRight(job_name, job, item.name, item.disposition, *send, moved, out.right, error);
        if (status != JobStatus::kOk) return Error(job_name, request, status, error);
      }
      transit.items.push_back(std::move(out));
    }
    ObjectId notify;
    if (send_request.policy == FullPolicy::kNotify) {
      Entry* target = Find(job, send_request.notify_port);
      if (!target || (target->type != RightType::kReceive && target->type != RightType::kSend)) {
        return Error(job_name, request, JobStatus::kInvalidName,
                     "the notify port is not a port right of this job");
      }
      notify = target->id;
    }
    send->envelope = Envelope{.kind = Remote::kEnqueue,
                              .job = job_name,
                              .object = dest_id,
                              .object2 = notify,
                              .a = static_cast<std::uint32_t>(send_request.policy),
                              .b = send_request.timeout_ms,
                              .c = dest_name,
                              .message = std::move(transit)};
    // The pre-ops leave at once; the send goes on when every one has answered.
    send->outstanding = static_cast<int>(send->preops.size());
    for (auto& [node, e] : send->preops) {
      e.ticket = NewTicket(
          Ticket{.kind = TicketKind::kPreOp, .node = node, .job = job_name, .send = send});
      Post(node, std::move(e));
    }
    job.sends.push_back(send);
    PumpSends(job_name, job);
  }

  // send_many's fast path: a train of data-only messages to one port, one envelope to its
  // home and one answer (how many were accepted). Nothing to carry, so no pre-ops.
  // `body` lies inside `owner`, the request's frame: the messages' data stay there.
  void StartBatch(const std::string& job_name, JobState& job, std::uint32_t request,
                  const std::shared_ptr<const std::string>& owner, std::string_view body) {
    WireReader in(body);
    auto policy = in.U8();
    auto timeout = in.U32();
    auto notify_name = in.U32();
    auto count = in.U32();
    if (!count || *count == 0 || *policy > static_cast<std::uint8_t>(FullPolicy::kNotify)) {
      return Error(job_name, request, JobStatus::kBadRequest,
                   "send_batch: needs a policy, a timeout, a notify name and messages");
    }
    auto send = std::make_shared<JobState::PendingSend>();
    send->request = request;
    send->batch = true;
    std::string why;
    const std::string_view messages = in.rest();
    auto check = router::CheckTrain(messages, *count, why);
    if (!check) return Error(job_name, request, JobStatus::kBadRequest, "send_batch: " + why);
    if (check->data_bytes > kMaxMessageBytes) {
      return Error(job_name, request, JobStatus::kBadRequest,
                   "send_batch: over 256 MiB in one train");
    }
    const std::uint32_t destination = check->destination;
    Entry* dest = Find(job, destination);
    if (!dest || (dest->type != RightType::kSend && dest->type != RightType::kReceive)) {
      if (dest && dest->type == RightType::kDeadName) {
        return Error(job_name, request, JobStatus::kDeadName, "the destination port is dead");
      }
      return Error(job_name, request, JobStatus::kInvalidName,
                   "name " + std::to_string(destination) + " is not a send right of this job");
    }
    ObjectId notify;
    if (static_cast<FullPolicy>(*policy) == FullPolicy::kNotify) {
      Entry* target = Find(job, *notify_name);
      if (!target || (target->type != RightType::kReceive && target->type != RightType::kSend)) {
        return Error(job_name, request, JobStatus::kInvalidName,
                     "the notify port is not a port right of this job");
      }
      notify = target->id;
    }
    send->envelope = Envelope{.kind = Remote::kEnqueueBatch,
                              .job = job_name,
                              .object = dest->id,
                              .object2 = notify,
                              .a = *policy,
                              .b = *timeout,
                              .c = *notify_name,
                              .batch = TrainRun{owner, messages, *count}};
    job.sends.push_back(send);
    PumpSends(job_name, job);
  }

  // Sends leave in the order the job made them: one waiting for its pre-ops holds the rest.
  void PumpSends(const std::string& job_name, JobState& job) {
    while (!job.sends.empty() && job.sends.front()->outstanding == 0) {
      auto send = job.sends.front();
      job.sends.pop_front();
      if (send->failed) {
        for (auto& undo : send->on_failure) undo();
        Error(job_name, send->request, send->status, send->error);
        continue;
      }
      // A plain send keeps its envelope (undo needs nothing of it); a batch's is large: moved.
      Envelope e = send->batch ? std::move(send->envelope) : send->envelope;
      const bool remote = e.object.home != self;
      if (send->send_once && !send->batch) {
        e.delta = router::kEnqueueBeyondLimit;
        if (remote) {
          // Nothing can refuse it (no limit applies), so the job does not wait a network round
          // trip for an answer; a port that died meanwhile destroys it, as it destroys what was
          // queued on it.
          Post(e.object.home, std::move(e));
          SendDone(job_name, *send);
          continue;
        }
      } else if (!send->batch && remote && send->then_receive &&
                 NothingQueuedHere(job, send->then_receive->first)) {
        // The answer of this send can wait for the reply that will come from there.
        e.delta = router::kEnqueueLazyResult;
      }
      e.ticket = NewTicket(Ticket{.kind = TicketKind::kSend,
                                  .node = e.object.home,
                                  .job = job_name,
                                  .request = send->request,
                                  .send = send});
      Post(e.object.home, std::move(e));
    }
  }

  // Whether `name` is a receive right of `job` whose port lives here and has no message queued:
  // a receive on it will wait, so its send's answer may come later without delaying anything.
  bool NothingQueuedHere(JobState& job, std::uint32_t name) {
    const Entry* entry = Find(job, name);
    if (!entry || entry->type != RightType::kReceive || entry->id.home != self) return false;
    auto port = ports.find(entry->id.serial);
    return port != ports.end() && port->second.queued == 0;
  }

  // A send that went in: its rights move on, and the job gets its answer (or its receive).
  void SendDone(const std::string& job_name, const JobState::PendingSend& send) {
    for (auto& apply : send.on_success) apply();
    auto job = jobs.find(job_name);
    if (send.then_receive && job != jobs.end()) {
      return StartReceive(job_name, job->second, send.request, send.then_receive->first,
                          send.then_receive->second);
    }
    Reply(job_name, send.request, JobStatus::kOk);
  }

  void PostNotification(ObjectId port, std::uint32_t id, std::string bytes,
                        std::optional<TransitRight> right = std::nullopt) {
    TransitMessage m;
    m.destination = port;
    m.id = id;
    if (!bytes.empty()) {
      m.items.push_back(TransitItem::Data(ItemKind::kBytes,
                                          std::make_shared<const std::string>(std::move(bytes))));
    }
    if (right) m.items.push_back(TransitItem{ItemKind::kPort, nullptr, {}, *right});
    Post(port.home, Envelope{.kind = Remote::kEnqueue,
                             .object = port,
                             .a = 0,
                             .c = 0,
                             .delta = router::kEnqueueBeyondLimit,
                             .message = std::move(m)});
  }

  // ---- home side: ports -----------------------------------------------------------------
  void HomeEnqueue(Envelope& e) {
    auto it = ports.find(e.object.serial);
    const bool beyond_limit = (e.delta & router::kEnqueueBeyondLimit) != 0;
    if (it == ports.end()) {
      // A job's send keeps its rights (its sender undoes); a notification's are released.
      if (e.message && !e.ticket) ReleaseTransit(*e.message);
      if (e.ticket)
        Respond(e, Envelope{.kind = Remote::kEnqueueResult,
                            .status = JobStatus::kDeadName,
                            .text = "the destination port is dead"});
      return;
    }
    Port& port = it->second;
    const bool room = port.blocked.empty() && port.queued < port.limit;
    const Sender sender = SenderOf(e);
    const bool to_waiter = !port.waiters.empty() && port.queued == 0;
    if (room || beyond_limit) {
      if (!to_waiter && !beyond_limit && !Fits(sender, Cost(e))) return OverQuota(e);
      Accept(port, std::move(*e.message), sender, /*charged=*/false);
      if (e.ticket) Respond(e, Envelope{.kind = Remote::kEnqueueResult});
      return;
    }
    const auto policy = static_cast<FullPolicy>(e.a);
    if (policy == FullPolicy::kWait && e.b > 0) {
      // A blocked send holds its message here: it counts against the quota as if queued.
      if (!Fits(sender, Cost(e))) return OverQuota(e);
      Charge(sender, Cost(e));
      BlockedSender blocked{e, 0};
      if (e.b != kWaitForever) {
        blocked.timer = NewTimer(
            TimerInfo{.kind = TimerKind::kBlockedSender, .object = e.object, .ticket = e.ticket},
            e.b);
      }
      port.blocked.push_back(std::move(blocked));
      return;
    }
    if (policy == FullPolicy::kNotify) port.space_notify.emplace_back(e.object2, e.c);
    Respond(
        e, Envelope{
               .kind = Remote::kEnqueueResult,
               .status = policy == FullPolicy::kWait ? JobStatus::kTimedOut : JobStatus::kQueueFull,
               .text = "the port's queue is full (" + std::to_string(port.limit) + " messages)"});
  }

  // The answer to a send or a batch that ends now: a batch says how many it got in.
  void EnqueueResult(const Envelope& request, JobStatus status = JobStatus::kOk,
                     std::string text = {}) {
    Respond(request, Envelope{.kind = Remote::kEnqueueResult,
                              .a = request.kind == Remote::kEnqueueBatch
                                       ? static_cast<std::uint32_t>(request.delta)
                                       : 0,
                              .status = status,
                              .text = std::move(text)});
  }

  // Moves what fits of a train into the queue (a waiting receiver gets its message first).
  // `e.delta` counts the messages taken so far. True when the whole train is in.
  // `charged`: the train is charged to its sender already (it was blocked).
  bool TakeFromBatch(Port& port, Envelope& e, bool charged) {
    const Sender sender = SenderOf(e);
    while (!e.batch.empty() && port.queued < port.limit) {
      if (!port.waiters.empty() && port.queued == 0) {
        Accept(port, router::PopMessage(e.batch, e.object), sender, charged);
        ++e.delta;
        continue;
      }
      const std::uint32_t n = std::min(port.limit - port.queued, e.batch.count);
      TrainRun run = router::TakeFront(e.batch, n);
      if (!charged) Charge(sender, Cost(run));
      port.queue.push_back(QueuedEntry{std::move(run), sender});
      port.queued += n;
      e.delta += n;
    }
    return e.batch.empty();
  }

  void HomeEnqueueBatch(Envelope& e) {
    auto it = ports.find(e.object.serial);
    if (it == ports.end())
      return EnqueueResult(e, JobStatus::kDeadName, "the destination port is dead");
    Port& port = it->second;
    e.delta = 0;
    // A train is refused whole when all of it would not fit the sender's quota.
    if (!Fits(SenderOf(e), Cost(e))) return OverQuota(e);
    if (port.blocked.empty() && TakeFromBatch(port, e, /*charged=*/false)) return EnqueueResult(e);
    const auto policy = static_cast<FullPolicy>(e.a);
    if (policy == FullPolicy::kWait && e.b > 0) {
      Charge(SenderOf(e), Cost(e));  // what is left of it waits here
      BlockedSender blocked{std::move(e), 0};
      if (blocked.envelope.b != kWaitForever) {
        blocked.timer = NewTimer(TimerInfo{.kind = TimerKind::kBlockedSender,
                                           .object = blocked.envelope.object,
                                           .ticket = blocked.envelope.ticket},
                                 blocked.envelope.b);
      }
      port.blocked.push_back(std::move(blocked));
      return;
    }
    if (policy == FullPolicy::kNotify) port.space_notify.emplace_back(e.object2, e.c);
    EnqueueResult(e, policy == FullPolicy::kWait ? JobStatus::kTimedOut : JobStatus::kQueueFull,
                  "the port's queue is full (" + std::to_string(port.limit) + " messages)");
  }

  // The first queued message, taken out of the queue (`port_id` names the port in it).
  TransitMessage PopQueued(Port& port, ObjectId port_id) {
    --port.queued;
    QueuedEntry& front = port.queue.front();
    if (auto* run = std::get_if<TrainRun>(&front.item)) {
      const std::uint64_t before = Cost(*run);
      TransitMessage message = router::PopMessage(*run, port_id);
      Uncharge(front.sender, before - Cost(*run));
      if (run->empty()) port.queue.pop_front();
      return message;
    }
    TransitMessage message = std::move(std::get<TransitMessage>(front.item));
    Uncharge(front.sender, Cost(message));
    port.queue.pop_front();
    return message;
  }

  // Queues `message` (charged to `sender` unless `charged` already) or hands it to the first
  // waiting receiver (then it leaves the sender's quota).
  void Accept(Port& port, TransitMessage&& message, const Sender& sender, bool charged) {
    if (!port.waiters.empty() && port.queued == 0) {
      if (charged) Uncharge(sender, Cost(message));
      Waiter waiter = std::move(port.waiters.front());
      port.waiters.pop_front();
      CancelTimer(waiter.timer);
      AnswerWaiter(waiter, Envelope{.message = std::move(message)});
      return;
    }
    if (!charged) Charge(sender, Cost(message));
    port.queue.push_back(QueuedEntry{std::move(message), sender});
    ++port.queued;
  }

  // Ends a waiting receive: with a message, or with why there is none.
  void AnswerWaiter(const Waiter& waiter, Envelope result) {
    result.kind = Remote::kReceiveResult;
    result.ticket = waiter.ticket;
    result.origin = self;
    result.job = waiter.job;
    SendResult(waiter.node, std::move(result));
  }

  void CancelTimer(std::uint64_t timer) {
    if (timer && timers.erase(timer)) actions.cancelled_timers.push_back(timer);
  }

  // Room freed in a queue: let blocked senders in, then tell those who asked.
  void RoomFreed(Port& port) {
    while (!port.blocked.empty() && port.queued < port.limit) {
      BlockedSender& front = port.blocked.front();
      if (front.envelope.kind == Remote::kEnqueueBatch) {
        if (!TakeFromBatch(port, front.envelope, /*charged=*/true)) break;  // full again
      } else {
        Accept(port, std::move(*front.envelope.message), SenderOf(front.envelope),
               /*charged=*/true);
      }
      BlockedSender blocked = std::move(front);
      port.blocked.pop_front();
      CancelTimer(blocked.timer);
      EnqueueResult(blocked.envelope);
    }
    if (port.queued < port.limit && !port.space_notify.empty()) {
      auto targets = std::move(port.space_notify);
      port.space_notify.clear();
      for (const auto& [notify, name] : targets) {
        PostNotification(notify, kSendPossibleNotification, U32Bytes(name));
      }
    }
  }

  void HomeReceiveWait(const Envelope& e) {
    auto it = ports.find(e.object.serial);
    if (it == ports.end()) {
      return Respond(e, Envelope{.kind = Remote::kReceiveResult,
                                 .status = JobStatus::kDeadName,
                                 .text = "the port is dead"});
    }
    Port& port = it->second;
    if (port.holder != Holder{e.origin, e.job}) {
      return Respond(e, Envelope{.kind = Remote::kReceiveResult,
                                 .status = JobStatus::kInvalidName,
                                 .text = "this job does not hold the port's receive right"});
    }
    if (port.queued > 0) {
      TransitMessage message = PopQueued(port, e.object);
      Respond(e, Envelope{.kind = Remote::kReceiveResult, .message = std::move(message)});
      RoomFreed(port);
      return;
    }
    if (e.a == 0) {
      return Respond(e, Envelope{.kind = Remote::kReceiveResult,
                                 .status = JobStatus::kTimedOut,
                                 .text = "no message"});
    }
    Waiter waiter{e.origin, e.job, e.ticket, 0};
    if (e.a != kWaitForever) {
      waiter.timer = NewTimer(
          TimerInfo{.kind = TimerKind::kWaiter, .object = e.object, .ticket = e.ticket}, e.a);
    }
    port.waiters.push_back(std::move(waiter));
  }

  void HomeRefDelta(const Envelope& e) {
    if (e.a == 1) {
      auto it = regions.find(e.object.serial);
      if (it == regions.end()) {
        if (e.ticket)
          Respond(e, Envelope{.kind = Remote::kRefDeltaResult,
                              .status = JobStatus::kDeadName,
                              .text = "the region is gone"});
        return;
      }
      it->second.refs += e.delta;
      if (it->second.refs <= 0) {
        store.Destroy(e.object);
        regions.erase(it);
      }
      if (e.ticket) Respond(e, Envelope{.kind = Remote::kRefDeltaResult});
      return;
    }
    auto it = ports.find(e.object.serial);
    if (it == ports.end()) {
      if (e.ticket)
        Respond(e, Envelope{.kind = Remote::kRefDeltaResult,
                            .status = JobStatus::kDeadName,
                            .text = "the port is dead"});
      return;
    }
    Port& port = it->second;
    const std::int64_t before = port.send_refs;
    port.send_refs = std::max<std::int64_t>(0, port.send_refs + e.delta);
    if (before > 0 && port.send_refs == 0 && port.no_senders) {
      auto [notify, name] = *port.no_senders;
      port.no_senders.reset();
      PostNotification(notify, kNoSendersNotification, U32Bytes(name));
    }
    if (e.ticket) Respond(e, Envelope{.kind = Remote::kRefDeltaResult});
  }

  void HomeDestroyPort(const Envelope& e) {
    auto it = ports.find(e.object.serial);
    if (it == ports.end()) return;
    Port& port = it->second;
    if (!e.job.empty() && port.holder != Holder{e.origin, e.job}) return;
    if (port.port_destroyed) {
      const ObjectId notify = *port.port_destroyed;
      port.port_destroyed.reset();
      port.holder = Holder{};
      FailWaiters(port, JobStatus::kInvalidName, "the receive right moved");
      PostNotification(notify, kPortDestroyedNotification, {},
                       TransitRight{RightType::kReceive, e.object});
      return;
    }
    Port dead = std::move(port);
    ports.erase(it);
    FailWaiters(dead, JobStatus::kDeadName, "the port died");
    for (BlockedSender& blocked : dead.blocked) {
      CancelTimer(blocked.timer);
      Uncharge(SenderOf(blocked.envelope), Cost(blocked.envelope));
      EnqueueResult(blocked.envelope, JobStatus::kDeadName, "the destination port died");
    }
    for (QueuedEntry& queued : dead.queue) {
      if (auto* message = std::get_if<TransitMessage>(&queued.item)) {
        Uncharge(queued.sender, Cost(*message));
        ReleaseTransit(*message);
      } else {
        Uncharge(queued.sender, Cost(std::get<TrainRun>(queued.item)));
      }
    }
    for (const DeadNameRequest& request : dead.dead_name) {
      PostNotification(request.notify, kDeadNameNotification, U32Bytes(request.name));
    }
    for (auto name = names.begin(); name != names.end();) {
      name = name->second.first == e.object ? names.erase(name) : std::next(name);
    }
  }

  void FailWaiters(Port& port, JobStatus status, const std::string& why) {
    for (Waiter& waiter : port.waiters) {
      CancelTimer(waiter.timer);
      AnswerWaiter(waiter, Envelope{.status = status, .text = why});
    }
    port.waiters.clear();
  }

  void HomeNotifyRequest(const Envelope& e) {
    auto it = ports.find(e.object.serial);
    const auto kind = static_cast<NotificationKind>(e.a);
    if (it == ports.end()) {
      if (kind == NotificationKind::kDeadName) {
        PostNotification(e.object2, kDeadNameNotification, U32Bytes(e.c));
        return Respond(e, Envelope{.kind = Remote::kNotifyResult});
      }
      return Respond(e, Envelope{.kind = Remote::kNotifyResult,
                                 .status = JobStatus::kDeadName,
                                 .text = "the port is dead"});
    }
    Port& port = it->second;
    switch (kind) {
      case NotificationKind::kDeadName:
        port.dead_name.push_back({e.object2, e.c});
        break;
      case NotificationKind::kNoSenders:
        port.no_senders = std::make_pair(e.object2, e.c);
        break;
      case NotificationKind::kPortDestroyed:
        port.port_destroyed = e.object2;
        break;
    }
    Respond(e, Envelope{.kind = Remote::kNotifyResult});
  }

  // ---- home side: links -----------------------------------------------------------------
  void Complete(const LinkOp& op, ObjectId end, JobStatus status,
                std::optional<TransitMessage> message) {
    Envelope result{.kind = Remote::kLinkCompleted,
                    .object = end,
                    .b = op.handle,
                    .status = status,
                    .message = std::move(message)};
    result.origin = self;
    result.job = op.job;
    SendResult(op.node, std::move(result));
  }

  void HomeLinkPost(const Envelope& e) {
    auto it = links.find(e.object.serial);
    LinkOp op{e.origin, e.job, e.b, e.message};
    if (it == links.end() || it->second->broken) {
      return Complete(op, e.object, JobStatus::kLinkBroken, std::nullopt);
    }
    Link& link = *it->second;
    const int i = link.ends[0] == e.object ? 0 : 1;
    const int j = 1 - i;
    if (e.a == 0) {  // send on end i
      if (!link.receives[j].empty()) {
        LinkOp receive = std::move(link.receives[j].front());
        link.receives[j].pop_front();
        Complete(op, e.object, JobStatus::kOk, std::nullopt);
        Complete(receive, link.ends[j], JobStatus::kOk, std::move(op.message));
        return;
      }
      link.sends[i].push_back(std::move(op));
    } else {
      if (!link.sends[j].empty()) {
        LinkOp send = std::move(link.sends[j].front());
        link.sends[j].pop_front();
        Complete(send, link.ends[j], JobStatus::kOk, std::nullopt);
        Complete(op, e.object, JobStatus::kOk, std::move(send.message));
        return;
      }
      link.receives[i].push_back(std::move(op));
    }
  }

  void HomeLinkCancel(const Envelope& e) {
    auto it = links.find(e.object.serial);
    JobStatus status = JobStatus::kAlreadyMatched;
    if (it != links.end()) {
      Link& link = *it->second;
      const int i = link.ends[0] == e.object ? 0 : 1;
      for (auto* list : {&link.sends[i], &link.receives[i]}) {
        for (auto op = list->begin(); op != list->end(); ++op) {
          if (op->node == e.origin && op->job == e.job && op->handle == e.b) {
            list->erase(op);
            status = JobStatus::kOk;
            break;
          }
        }
        if (status == JobStatus::kOk) break;
      }
    }
    Respond(e, Envelope{.kind = Remote::kLinkCancelResult, .status = status});
  }

  void HomeBreakLinkEnd(const Envelope& e) {
    auto it = links.find(e.object.serial);
    if (it == links.end()) return;
    auto link = it->second;
    const int i = link->ends[0] == e.object ? 0 : 1;
    link->released[i] = true;
    if (!link->broken) {
      link->broken = true;
      for (int k = 0; k < 2; ++k) {
        for (const LinkOp& op : link->sends[k]) {
          Complete(op, link->ends[k], JobStatus::kLinkBroken, std::nullopt);
        }
        for (const LinkOp& op : link->receives[k]) {
          Complete(op, link->ends[k], JobStatus::kLinkBroken, std::nullopt);
        }
        link->sends[k].clear();
        link->receives[k].clear();
      }
    }
    if (link->released[0] && link->released[1]) {
      links.erase(link->ends[0].serial);
      links.erase(link->ends[1].serial);
    }
  }

  // ---- results on the job side ----------------------------------------------------------
  void HandleResult(Envelope& e, std::uint64_t from) {
    if (e.kind == Remote::kLinkCompleted) {
      if (!jobs.contains(e.job)) {
        if (auto moved = moved_jobs.find(e.job); moved != moved_jobs.end()) {
          return Post(moved->second.node, std::move(e));
        }
      }
      return LinkCompleted(e);
    }
    auto it = tickets.find(e.ticket);
    if (it == tickets.end()) {
      if (auto forward = forwarded_tickets.find(e.ticket); forward != forwarded_tickets.end()) {
        const std::uint64_t to = forward->second;
        forwarded_tickets.erase(forward);
        return Post(to, std::move(e));
      }
      // Its job is gone, or the node was given up on: release what the result carries.
      if (e.message) ReleaseTransit(*e.message);
      return;
    }
    Ticket ticket = std::move(it->second);
    tickets.erase(it);
    (void)from;
    auto job_it = jobs.find(ticket.job);
    const bool job_alive = job_it != jobs.end();
    switch (ticket.kind) {
      case TicketKind::kPreOp: {
        auto& send = *ticket.send;
        --send.outstanding;
        if (e.status != JobStatus::kOk && !send.failed) {
          send.failed = true;
          send.status = e.status;
          send.error = e.text;
        }
        if (job_alive) PumpSends(ticket.job, job_it->second);
        return;
      }
      case TicketKind::kSend: {
        if (ticket.send->batch) {
          if (e.status == JobStatus::kDeadName && job_alive) {
            MarkDead(job_it->second, ticket.send->envelope.object);
          }
          WireWriter out;
          out.U32(e.a);
          out.U16(static_cast<std::uint16_t>(e.status));
          out.Bytes(e.text);
          return Reply(ticket.job, ticket.request, JobStatus::kOk, out.out());
        }
        if (e.status == JobStatus::kOk) {
          SendDone(ticket.job, *ticket.send);
        } else {
          for (auto& undo : ticket.send->on_failure) undo();
          if (e.status == JobStatus::kDeadName && job_alive) {
            MarkDead(job_it->second, ticket.send->envelope.object);
          }
          Error(ticket.job, ticket.request, e.status, e.text);
        }
        return;
      }
      case TicketKind::kReceive: {
        if (e.status != JobStatus::kOk || !e.message) {
          return Error(ticket.job, ticket.request, e.status, e.text);
        }
        if (!job_alive) return ReleaseTransit(*e.message);
        auto delivery = std::make_shared<Delivery>();
        delivery->job = ticket.job;
        delivery->request = ticket.request;
        delivery->receive_name = ticket.name;
        delivery->many = ticket.many;
        delivery->message = std::move(*e.message);
        return StartDelivery(delivery);
      }
      case TicketKind::kMakeSend: {
        if (e.status != JobStatus::kOk) return Error(ticket.job, ticket.request, e.status, e.text);
        if (!job_alive) return ReleaseRight(RightType::kSend, ticket.object, 1, "");
        WireWriter out;
        out.U32(Insert(job_it->second, RightType::kSend, ticket.object));
        return Reply(ticket.job, ticket.request, JobStatus::kOk, out.out());
      }
      case TicketKind::kStatus: {
        if (e.status != JobStatus::kOk) return Error(ticket.job, ticket.request, e.status, e.text);
        WireWriter out;
        out.U32(e.a);
        out.U32(e.b);
        out.U32(e.c);
        return Reply(ticket.job, ticket.request, JobStatus::kOk, out.out());
      }
      case TicketKind::kNotify:
        if (e.status != JobStatus::kOk) return Error(ticket.job, ticket.request, e.status, e.text);
        return Reply(ticket.job, ticket.request, JobStatus::kOk);
      case TicketKind::kLinkCancel: {
        if (e.status == JobStatus::kAlreadyMatched) *ticket.matched = true;
        if (--*ticket.remaining > 0) return;
        if (!job_alive) return;
        auto op = job_it->second.ops.find(ticket.handle);
        if (*ticket.matched || op == job_it->second.ops.end()) {
          return Error(ticket.job, ticket.request, JobStatus::kAlreadyMatched,
                       "the operation has been matched already");
        }
        if (op->second.waiting_request) {
          CancelTimer(op->second.wait_timer);
          Error(ticket.job, *op->second.waiting_request, JobStatus::kCancelled,
                "the operation was cancelled");
        }
        job_it->second.ops.erase(op);
        return Reply(ticket.job, ticket.request, JobStatus::kOk);
      }
      case TicketKind::kNameRegister: {
        if (e.status != JobStatus::kOk) return Error(ticket.job, ticket.request, e.status, e.text);
        if (!job_alive || names.contains(ticket.text)) {
          ReleaseRight(RightType::kSend, ticket.object, 1, "");
          if (job_alive) {
            Error(ticket.job, ticket.request, JobStatus::kExists,
                  "the name \"" + ticket.text + "\" is registered already");
          }
          return;
        }
        if (peers.empty() || job_it->second.uid == kRootUid) {
          names[ticket.text] = {ticket.object, ticket.job};
          return Reply(ticket.job, ticket.request, JobStatus::kOk);
        }
        // Only the user who holds a name (or root) may register it on another node too: ask
        // every peer before it goes in.
        auto search = std::make_shared<NameSearch>();
        search->remaining = static_cast<int>(peers.size());
        for (std::uint64_t peer : peers) {
          const std::uint64_t check = NewTicket(Ticket{.kind = TicketKind::kNameRegisterCheck,
                                                       .node = peer,
                                                       .job = ticket.job,
                                                       .request = ticket.request,
                                                       .object = ticket.object,
                                                       .text = ticket.text,
                                                       .search = search});
          Post(peer, Envelope{.kind = Remote::kNameQuery,
                              .ticket = check,
                              .job = ticket.job,
                              .text = ticket.text});
        }
        return;
      }
      case TicketKind::kNameRegisterCheck: {
        auto& search = *ticket.search;
        // A node that cannot be reached does not hold the name against the job (it cannot
        // answer calls either); its answer would have arrived as kUnavailable.
        if (e.status == JobStatus::kOk && e.object.valid() && job_alive) {
          const std::optional<std::uint32_t> owner =
              e.b != 0 ? std::optional<std::uint32_t>(e.a) : std::nullopt;
          if (owner != job_it->second.uid && !search.conflict) {
            search.conflict = true;
            search.conflict_node = e.origin;
          }
        }
        if (--search.remaining > 0) return;
        if (!job_alive || search.conflict || names.contains(ticket.text)) {
          ReleaseRight(RightType::kSend, ticket.object, 1, "");
          if (!job_alive) return;
          if (search.conflict) {
            return Error(ticket.job, ticket.request, JobStatus::kExists,
                         "the name \"" + ticket.text + "\" is registered by another user on node " +
                             std::to_string(search.conflict_node));
          }
          return Error(ticket.job, ticket.request, JobStatus::kExists,
                       "the name \"" + ticket.text + "\" is registered already");
        }
        names[ticket.text] = {ticket.object, ticket.job};
        return Reply(ticket.job, ticket.request, JobStatus::kOk);
      }
      case TicketKind::kNameLookupDelta: {
        if (e.status != JobStatus::kOk) {
          auto stale = names.find(ticket.text);
          if (stale != names.end() && stale->second.first == ticket.object) names.erase(stale);
          return Error(ticket.job, ticket.request, JobStatus::kNotFound,
                       "no port is registered as \"" + ticket.text + "\"");
        }
        if (!job_alive) return ReleaseRight(RightType::kSend, ticket.object, 1, "");
        WireWriter out;
        out.U32(Insert(job_it->second, RightType::kSend, ticket.object));
        return Reply(ticket.job, ticket.request, JobStatus::kOk, out.out());
      }
      case TicketKind::kNameQuery: {
        auto& search = *ticket.search;
        if (search.remaining <= 0) return;  // answered already
        if (e.status == JobStatus::kOk && e.object.valid()) {
          const std::optional<std::uint32_t> owner =
              e.b != 0 ? std::optional<std::uint32_t>(e.a) : std::nullopt;
          const int rank = OwnerRank(job_alive ? job_it->second.uid : std::nullopt, owner);
          if (rank < search.rank) {
            search.rank = rank;
            search.best = e.object;
          }
          if (rank == 0) {  // the caller's own user's: nothing better can come
            search.remaining = 0;
            return LookupFound(ticket.job, ticket.request, ticket.text, e.object);
          }
        }
        if (--search.remaining > 0) return;
        if (search.best.valid()) {
          return LookupFound(ticket.job, ticket.request, ticket.text, search.best);
        }
        return Error(ticket.job, ticket.request, JobStatus::kNotFound,
                     "no port is registered as \"" + ticket.text + "\" on any node");
      }
      case TicketKind::kRegionFetch: {
        // One chunk of a remote region: the first one tells its size (e.delta), which must be
        // within this node's cap; each is written into the copy, and the next asked for.
        auto& delivery = *ticket.delivery;
        const std::uint64_t total = static_cast<std::uint64_t>(e.delta);
        bool copying = e.status == JobStatus::kOk && total > 0 && ticket.offset < total &&
                       !e.text.empty() && e.text.size() <= total - ticket.offset;
        ObjectId copy = ticket.copy;
        if (copying && ticket.offset == 0) {
          copy = NewObject();
          copying = total <= limits.max_region_bytes && store.Create(copy, total);
          if (!copying) copy = {};
        }
        copying = copying && store.Write(copy, ticket.offset, e.text);
        if (copying && ticket.offset + e.text.size() < total) {
          Ticket next = std::move(ticket);
          next.copy = copy;
          next.offset += e.text.size();
          const std::uint64_t again = NewTicket(next);
          Post(next.node, Envelope{.kind = Remote::kRegionFetch,
                                   .ticket = again,
                                   .object = next.object,
                                   .delta = static_cast<std::int64_t>(next.offset)});
          return;
        }
        if (copying) {
          regions[copy.serial] = Region{total, 1};
          delivery.copied[ticket.handle] = copy;
        } else if (copy.valid()) {
          store.Destroy(copy);
        }
        ReleaseRight(RightType::kRegion, ticket.object, 1, "");
        if (--delivery.outstanding == 0) FinishDelivery(ticket.delivery);
        return;
      }
    }
  }

  void MarkDead(JobState& job, ObjectId port) {
    auto merged = job.merged.find({RightType::kSend, port});
    if (merged == job.merged.end()) return;
    const std::uint32_t name = merged->second;
    job.merged.erase(merged);
    job.names[name].type = RightType::kDeadName;
  }

  void StartDelivery(const std::shared_ptr<Delivery>& delivery) {
    for (std::size_t i = 0; i < delivery->message.items.size(); ++i) {
      const TransitRight& right = delivery->message.items[i].right;
      if (right.type == RightType::kRegion && right.id.home != self) {
        ++delivery->outstanding;
        const std::uint64_t ticket = NewTicket(Ticket{.kind = TicketKind::kRegionFetch,
                                                      .node = right.id.home,
                                                      .job = delivery->job,
                                                      .object = right.id,
                                                      .delivery = delivery,
                                                      .handle = static_cast<std::uint32_t>(i)});
        Post(right.id.home,
             Envelope{.kind = Remote::kRegionFetch, .ticket = ticket, .object = right.id});
      }
    }
    if (delivery->outstanding == 0) FinishDelivery(delivery);
  }

  // Puts the rights of a received message into the receiver's table and answers its receive.
  void FinishDelivery(const std::shared_ptr<Delivery>& delivery) {
    auto job_it = jobs.find(delivery->job);
    TransitMessage& transit = delivery->message;
    if (job_it == jobs.end()) {
      for (auto& [index, copy] : delivery->copied) {
        transit.items[index].right.id = copy;
      }
      return ReleaseTransit(transit);
    }
    Message message =
        Convert(job_it->second, delivery->job, transit, delivery->receive_name, delivery->copied);
    WireWriter out(/*share_data=*/true);
    if (delivery->many) out.U32(1);
    out.WriteMessage(message);
    Reply(delivery->job, delivery->request, out);
  }

  bool NeedsFetch(const TransitMessage& message) const {
    for (const TransitItem& item : message.items) {
      if (item.right.type == RightType::kRegion && item.right.id.home != self) return true;
    }
    return false;
  }

  // Puts the rights of a received message into the receiver's table: the job's view of it.
  Message Convert(JobState& job, const std::string& job_name, TransitMessage& transit,
                  std::uint32_t receive_name, const std::map<std::size_t, ObjectId>& copied) {
    Message message;
    message.destination = receive_name;
    message.id = transit.id;
    const auto take = [&](const TransitRight& right) -> std::pair<std::uint32_t, Disposition> {
      switch (right.type) {
        case RightType::kReceive:
          Post(right.id.home,
               Envelope{.kind = Remote::kSetHolder, .job = job_name, .object = right.id});
          return {Insert(job, RightType::kReceive, right.id), Disposition::kMoveReceive};
        case RightType::kSend:
          return {Insert(job, RightType::kSend, right.id), Disposition::kMoveSend};
        case RightType::kSendOnce:
          return {Insert(job, RightType::kSendOnce, right.id), Disposition::kMoveSendOnce};
        case RightType::kLinkEnd:
          Post(right.id.home,
               Envelope{.kind = Remote::kSetLinkHolder, .job = job_name, .object = right.id});
          return {Insert(job, RightType::kLinkEnd, right.id), Disposition::kMoveLinkEnd};
        case RightType::kRegion:
          return {Insert(job, RightType::kRegion, right.id), Disposition::kMoveRegion};
        default:
          return {0, Disposition::kNone};
      }
    };
    if (transit.reply.type != RightType::kNone) {
      std::tie(message.reply, message.reply_disposition) = take(transit.reply);
    }
    for (std::size_t i = 0; i < transit.items.size(); ++i) {
      TransitItem& item = transit.items[i];
      if (item.kind == ItemKind::kBytes || item.kind == ItemKind::kOutOfLine) {
        message.items.push_back(Item::Shared(item.kind, item.owner, item.bytes));
        continue;
      }
      if (item.right.type == RightType::kRegion && item.right.id.home != self) {
        auto copy = copied.find(i);
        if (copy == copied.end()) continue;  // the copy failed: the item is dropped
        item.right.id = copy->second;
      }
      auto [name, disposition] = take(item.right);
      Item out;
      out.kind = item.kind;
      out.name = name;
      out.disposition = disposition;
      message.items.push_back(std::move(out));
    }
    return message;
  }

  void LinkCompleted(const Envelope& e) {
    auto job_it = jobs.find(e.job);
    if (job_it == jobs.end()) {
      if (e.message) ReleaseTransit(*e.message);
      return;
    }
    JobState& job = job_it->second;
    OpResult result;
    result.end = 0;
    for (const auto& [name, entry] : job.names) {
      if (entry.type == RightType::kLinkEnd && entry.id == e.object) result.end = name;
    }
    if (e.message) {
      result.is_receive = true;
      result.message.destination = result.end;
      result.message.id = e.message->id;
      for (const TransitItem& item : e.message->items) {
        result.message.items.push_back(Item::Shared(item.kind, item.owner, item.bytes));
      }
    }
    auto op_it = job.ops.find(e.b);
    if (op_it == job.ops.end() || op_it->second.done) {
      // A second match of an "any" receive (or a cancelled op's late match): kept for the
      // next receive on that end, never lost.
      if (e.message && e.status == JobStatus::kOk)
        job.early[result.end].push_back(std::move(result));
      return;
    }
    OpState& op = op_it->second;
    if (op.is_receive && e.status == JobStatus::kLinkBroken && op.posted_ends.size() > 1) {
      // One link of an "any" receive broke; the others may still deliver.
      std::erase(op.posted_ends, e.object);
      return;
    }
    op.done = true;
    op.status = e.status;
    op.result = std::move(result);
    if (op.is_receive && op.posted_ends.size() > 1) {
      for (ObjectId end : op.posted_ends) {
        if (end == e.object) continue;
        // Withdraw the other posts; one that matched meanwhile lands in `early`.
        Post(end.home,
             Envelope{.kind = Remote::kLinkCancel, .job = e.job, .object = end, .b = e.b});
      }
    }
    if (op.waiting_request) {
      CancelTimer(op.wait_timer);
      FinishOp(e.job, job, e.b, *op.waiting_request, false);
    }
  }

  void FinishOp(const std::string& job_name, JobState& job, std::uint32_t handle,
                std::uint32_t request, bool poll) {
    auto it = job.ops.find(handle);
    if (it == job.ops.end()) return;
    OpState op = std::move(it->second);
    job.ops.erase(it);
    if (op.status != JobStatus::kOk) {
      return Error(job_name, request, op.status,
                   op.status == JobStatus::kLinkBroken ? "the link is broken" : "failed");
    }
    WireWriter out(/*share_data=*/true);
    if (poll) out.U8(1);
    out.WriteOpResult(op.result);
    Reply(job_name, request, out);
  }

  // ---- dispatch -------------------------------------------------------------------------
  void Dispatch(Envelope& e, std::uint64_t from) {
    switch (e.kind) {
      case Remote::kEnqueue:
        return HomeEnqueue(e);
      case Remote::kEnqueueBatch:
        return HomeEnqueueBatch(e);
      case Remote::kReceiveWait:
        return HomeReceiveWait(e);
      case Remote::kRefDelta:
        return HomeRefDelta(e);
      case Remote::kSetHolder: {
        auto it = ports.find(e.object.serial);
        if (it == ports.end()) return;
        it->second.holder = e.a == 1 ? Holder{} : Holder{e.origin, e.job};
        if (e.ticket) Respond(e, Envelope{.kind = Remote::kRefDeltaResult});
        return;
      }
      case Remote::kDestroyPort:
        return HomeDestroyPort(e);
      case Remote::kNotifyRequest:
        return HomeNotifyRequest(e);
      case Remote::kPortStatus: {
        auto it = ports.find(e.object.serial);
        if (it == ports.end()) {
          return Respond(e, Envelope{.kind = Remote::kPortStatusResult,
                                     .status = JobStatus::kDeadName,
                                     .text = "the port is dead"});
        }
        return Respond(e, Envelope{.kind = Remote::kPortStatusResult,
                                   .a = it->second.queued,
                                   .b = it->second.limit,
                                   .c = static_cast<std::uint32_t>(it->second.send_refs)});
      }
      case Remote::kLinkPost:
        return HomeLinkPost(e);
      case Remote::kLinkCancel:
        if (e.ticket == 0) {
          // An "any" receive withdrawing its other posts: nothing to answer.
          auto it = links.find(e.object.serial);
          if (it == links.end()) return;
          Link& link = *it->second;
          const int i = link.ends[0] == e.object ? 0 : 1;
          std::erase_if(link.receives[i], [&](const LinkOp& op) {
            return op.node == e.origin && op.job == e.job && op.handle == e.b;
          });
          return;
        }
        return HomeLinkCancel(e);
      case Remote::kSetLinkHolder: {
        auto it = links.find(e.object.serial);
        if (it == links.end()) return;
        const int i = it->second->ends[0] == e.object ? 0 : 1;
        it->second->holder[i] = e.a == 1 ? Holder{} : Holder{e.origin, e.job};
        if (e.ticket) Respond(e, Envelope{.kind = Remote::kRefDeltaResult});
        return;
      }
      case Remote::kBreakLinkEnd:
        return HomeBreakLinkEnd(e);
      case Remote::kRegionFetch: {
        // One chunk from offset e.delta, with the region's size.
        auto region = regions.find(e.object.serial);
        const auto offset = static_cast<std::uint64_t>(e.delta);
        std::optional<std::string> bytes;
        if (region != regions.end() && offset < region->second.size) {
          bytes = store.Read(
              e.object, offset,
              static_cast<std::size_t>(std::min(kRegionChunk, region->second.size - offset)));
        }
        if (!bytes || bytes->empty()) {
          return Respond(e, Envelope{.kind = Remote::kRegionFetchResult,
                                     .status = JobStatus::kDeadName,
                                     .text = "region gone"});
        }
        return Respond(e, Envelope{.kind = Remote::kRegionFetchResult,
                                   .delta = static_cast<std::int64_t>(region->second.size),
                                   .text = std::move(*bytes)});
      }
      case Remote::kJobMoved:
        return JobMovedHere(e.job, e.origin);
      case Remote::kNameQuery: {
        auto it = names.find(e.text);
        if (it == names.end()) {
          return Respond(
              e, Envelope{.kind = Remote::kNameQueryResult, .status = JobStatus::kNotFound});
        }
        // With its owner's uid (b = 1 when known), which the asker ranks or checks.
        const auto owner = OwnerOf(it->second.second);
        return Respond(e, Envelope{.kind = Remote::kNameQueryResult,
                                   .object = it->second.first,
                                   .a = owner.value_or(0),
                                   .b = owner ? 1u : 0u});
      }
      default:
        return HandleResult(e, from);
    }
  }

  // The objects homed here that `job` holds, and its operations waiting here, now answer to
  // `node`. Forwarding from the old node covers answers sent before this arrived.
  void JobMovedHere(const std::string& job, std::uint64_t node) {
    if (node != self) {
      // It may have come back through here before; whatever was forwarded is stale now.
      if (!jobs.contains(job)) RememberMove(job, node);
    }
    for (auto& [serial, port] : ports) {
      if (port.holder.node != 0 && port.holder.job == job) port.holder.node = node;
      for (Waiter& waiter : port.waiters) {
        if (waiter.job == job) waiter.node = node;
      }
    }
    for (auto& [serial, link] : links) {
      if (link->ends[0].serial != serial) continue;  // each link once
      for (int i = 0; i < 2; ++i) {
        if (link->holder[i].node != 0 && link->holder[i].job == job) link->holder[i].node = node;
        for (auto* list : {&link->sends[i], &link->receives[i]}) {
          for (LinkOp& op : *list) {
            if (op.job == job) op.node = node;
          }
        }
      }
    }
  }

  void FailTicketsTo(std::uint64_t node) {
    std::vector<std::uint64_t> dead;
    for (const auto& [id, ticket] : tickets) {
      if (ticket.node == node) dead.push_back(id);
    }
    for (std::uint64_t id : dead) {
      // HandleResult goes by the ticket's kind; any result kind but kLinkCompleted will do.
      Envelope failure{.kind = Remote::kEnqueueResult,
                       .ticket = id,
                       .origin = node,
                       .status = JobStatus::kUnavailable,
                       .text = "node " + std::to_string(node) + " cannot be reached"};
      HandleResult(failure, node);
    }
  }
};

PortRouter::PortRouter(std::uint64_t node_id, RegionStore& regions, IpcLimits limits)
    : state_(std::make_unique<State>(node_id, regions, limits)) {}
PortRouter::~PortRouter() = default;

void PortRouter::JobAttached(const std::string& job, std::optional<std::uint32_t> uid) {
  auto& state = state_->jobs[job];
  if (uid) state.uid = uid;
}

void PortRouter::SetJobUid(const std::string& job, std::uint32_t uid) {
  auto it = state_->jobs.find(job);
  if (it != state_->jobs.end()) it->second.uid = uid;
}

std::optional<std::uint32_t> PortRouter::JobUid(const std::string& job) const {
  auto it = state_->jobs.find(job);
  return it == state_->jobs.end() ? std::nullopt : it->second.uid;
}

std::uint64_t PortRouter::QueuedBytesOf(std::uint64_t node, const std::string& job) const {
  auto it = state_->charged.find({node, job});
  return it == state_->charged.end() ? 0 : it->second;
}

void PortRouter::JobGone(const std::string& job) {
  auto it = state_->jobs.find(job);
  if (it == state_->jobs.end()) return;
  JobState gone = std::move(it->second);
  state_->jobs.erase(it);
  for (const auto& [name, entry] : gone.names) {
    state_->ReleaseRight(entry.type, entry.id, entry.refs, job);
  }
  for (const auto& [handle, op] : gone.ops) {
    if (op.done) continue;
    for (ObjectId end : op.posted_ends) {
      state_->Post(end.home,
                   Envelope{.kind = Remote::kLinkCancel, .job = job, .object = end, .b = handle});
    }
  }
  for (auto name = state_->names.begin(); name != state_->names.end();) {
    if (name->second.second == job) {
      state_->ReleaseRight(RightType::kSend, name->second.first, 1, job);
      name = state_->names.erase(name);
    } else {
      ++name;
    }
  }
  state_->Drain();
}

std::string PortRouter::JobReplyAction::Whole() const {
  std::string whole;
  whole.reserve(size());
  ForEachPiece(
      payload, shared, [&](std::string_view bytes) { whole.append(bytes); },
      [&](const SharedSpan& span) { whole.append(span.bytes); });
  return whole;
}

std::size_t PortRouter::JobReplyAction::size() const {
  std::size_t total = payload.size();
  for (const SharedSpan& span : shared) total += span.bytes.size();
  return total;
}

Expected<void> PortRouter::JobRequest(const std::string& job, std::string_view payload) {
  return JobRequest(job, std::make_shared<const std::string>(payload));
}

Expected<void> PortRouter::JobRequest(const std::string& job,
                                      std::shared_ptr<const std::string> payload) {
  auto request = DecodeJobRequest(std::move(payload));
  if (!request) return Unexpected<Error>{request.error()};
  auto it = state_->jobs.find(job);
  if (it == state_->jobs.end()) return Fail("job " + job + " has no IPC channel here");
  state_->HandleJob(job, it->second, *request);
  state_->Drain();
  return {};
}

Expected<void> PortRouter::NodeFrame(std::uint64_t from, std::string_view payload) {
  return NodeFrame(from, std::make_shared<const std::string>(payload));
}

Expected<void> PortRouter::NodeFrame(std::uint64_t from,
                                     std::shared_ptr<const std::string> payload) {
  auto envelope = router::DecodeEnvelope(std::move(payload));
  if (!envelope) return Fail("malformed IPC frame from node " + std::to_string(from));
  envelope->origin = from;  // a peer speaks only for itself
  state_->Dispatch(*envelope, from);
  state_->Drain();
  return {};
}

void PortRouter::NodeUp(std::uint64_t node) { state_->peers.insert(node); }

void PortRouter::NodeDown(std::uint64_t node) {
  state_->peers.erase(node);
  if (auto deferred = state_->deferred.find(node); deferred != state_->deferred.end()) {
    state_->CancelTimer(deferred->second.timer);
    state_->deferred.erase(deferred);
  }
  state_->FailTicketsTo(node);
  for (auto& [serial, port] : state_->ports) {
    std::erase_if(port.waiters, [&](const Waiter& w) { return w.node == node; });
  }
  state_->Drain();
}

void PortRouter::Timer(std::uint64_t id) {
  auto it = state_->timers.find(id);
  if (it == state_->timers.end()) return;
  TimerInfo info = std::move(it->second);
  state_->timers.erase(it);
  switch (info.kind) {
    case TimerKind::kWaiter: {
      auto port = state_->ports.find(info.object.serial);
      if (port == state_->ports.end()) break;
      auto& waiters = port->second.waiters;
      for (auto w = waiters.begin(); w != waiters.end(); ++w) {
        if (w->ticket == info.ticket && w->timer == id) {
          Waiter waiter = std::move(*w);
          waiters.erase(w);
          state_->AnswerWaiter(waiter, Envelope{.status = JobStatus::kTimedOut,
                                                .text = "no message within the timeout"});
          break;
        }
      }
      break;
    }
    case TimerKind::kBlockedSender: {
      auto port = state_->ports.find(info.object.serial);
      if (port == state_->ports.end()) break;
      auto& blocked = port->second.blocked;
      for (auto b = blocked.begin(); b != blocked.end(); ++b) {
        if (b->timer == id) {
          Envelope request = std::move(b->envelope);
          blocked.erase(b);
          state_->Uncharge(State::SenderOf(request), Cost(request));
          state_->EnqueueResult(request, JobStatus::kTimedOut, "the port's queue stayed full");
          break;
        }
      }
      break;
    }
    case TimerKind::kForgetMove: {
      auto moved = state_->moved_jobs.find(info.job);
      if (moved != state_->moved_jobs.end() && moved->second.forget_timer == id) {
        state_->moved_jobs.erase(moved);
      }
      break;
    }
    case TimerKind::kFlushResults: {
      auto deferred = state_->deferred.find(info.node);
      if (deferred != state_->deferred.end() && deferred->second.timer == id) {
        state_->FlushDeferred(info.node);
        state_->deferred.erase(deferred);
      }
      break;
    }
    case TimerKind::kOpWait: {
      auto job = state_->jobs.find(info.job);
      if (job == state_->jobs.end()) break;
      auto op = job->second.ops.find(info.handle);
      if (op == job->second.ops.end() || !op->second.waiting_request) break;
      const std::uint32_t request = *op->second.waiting_request;
      op->second.waiting_request.reset();
      op->second.wait_timer = 0;
      state_->Error(info.job, request, JobStatus::kTimedOut, "the operation is not done");
      break;
    }
  }
  state_->Drain();
}

PortRouter::Actions PortRouter::TakeActions() {
  Actions out = std::move(state_->actions);
  state_->actions = Actions{};
  return out;
}

bool PortRouter::JobHoldsRights(const std::string& job) const { return RightCount(job) > 0; }

std::size_t PortRouter::MovedJobCount() const { return state_->moved_jobs.size(); }

std::size_t PortRouter::RightCount(const std::string& job) const {
  auto it = state_->jobs.find(job);
  return it == state_->jobs.end() ? 0 : it->second.names.size();
}

std::set<std::string> PortRouter::JobsSharingRegions(const std::string& job) const {
  std::set<std::string> sharing;
  auto it = state_->jobs.find(job);
  if (it == state_->jobs.end()) return sharing;
  for (const auto& [name, entry] : it->second.names) {
    if (entry.type != RightType::kRegion) continue;
    for (const auto& [other, state] : state_->jobs) {
      if (other != job && state.merged.contains({RightType::kRegion, entry.id})) {
        sharing.insert(other);
      }
    }
  }
  return sharing;
}

std::size_t PortRouter::PortCount() const { return state_->ports.size(); }

std::vector<PortRouter::Traffic> PortRouter::TakeTraffic() {
  std::map<std::pair<std::string, std::string>, std::uint64_t> pairs;
  for (auto& [sender, job] : state_->jobs) {
    for (const auto& [port, bytes] : job.sent_bytes) {
      if (port.home != state_->self) continue;  // its receiver is known at its home only
      const auto found = state_->ports.find(port.serial);
      if (found == state_->ports.end()) continue;
      const std::string& receiver = found->second.holder.job;
      if (receiver.empty() || receiver == sender) continue;
      pairs[{sender, receiver}] += bytes;
    }
    job.sent_bytes.clear();
  }
  std::vector<Traffic> traffic;
  traffic.reserve(pairs.size());
  for (auto& [pair, bytes] : pairs) traffic.push_back({pair.first, pair.second, bytes});
  return traffic;
}

namespace {
std::optional<ObjectId> RightTarget(const std::map<std::string, JobState>& jobs,
                                    const std::string& job, std::uint32_t name, RightType type) {
  auto it = jobs.find(job);
  if (it == jobs.end()) return std::nullopt;
  auto entry = it->second.names.find(name);
  if (entry == it->second.names.end() || entry->second.type != type) return std::nullopt;
  return entry->second.id;
}
}  // namespace

std::optional<ObjectId> PortRouter::SendRightTarget(const std::string& job,
                                                    std::uint32_t name) const {
  return RightTarget(state_->jobs, job, name, RightType::kSend);
}

std::optional<ObjectId> PortRouter::ReceiveRightPort(const std::string& job,
                                                     std::uint32_t name) const {
  return RightTarget(state_->jobs, job, name, RightType::kReceive);
}

std::optional<PortRouter::ReceiverView> PortRouter::ReceiverOf(ObjectId port) const {
  if (port.home != state_->self) return std::nullopt;
  auto it = state_->ports.find(port.serial);
  if (it == state_->ports.end()) return std::nullopt;
  return ReceiverView{it->second.holder.node, it->second.holder.job};
}

// ---- moving a job ------------------------------------------------------------------------
// The exported state, in WireWriter's big-endian encoding:
//   [u32 next_name][u32 next_op]
//   [u32 n] n x [u32 name][u8 type][u64 home][u64 serial][u32 refs]           capability table
//   [u32 n] n x [u32 handle][u8 is_receive][u32 end_name][u32 m] m x [u64 home][u64 serial]
//               [u8 done][u16 status][op result][u8 waiting][u32 request][u32 wait_ms]
//   [u32 n] n x [u32 end][u32 m] m x [op result]                 "any" matches not yet taken
//   [u32 n] n x [u64 ticket][u64 node][u32 request][u32 name][u8 many]    waiting receives
//   [u32 n] n x [bytes name][u64 home][u64 serial]                        registered names
using router::ReadId;
using router::WriteId;

std::string PortRouter::MoveBlocker(const std::string& job) const {
  auto it = state_->jobs.find(job);
  if (it == state_->jobs.end()) return "";
  for (const auto& [name, entry] : it->second.names) {
    if (entry.type == RightType::kRegion) {
      return "the job holds a shared-memory region (name " + std::to_string(name) +
             "), whose pages stay on this node";
    }
  }
  return "";
}

PortRouter::Export PortRouter::ExportJob(const std::string& job_name, std::uint64_t to) {
  auto& s = *state_;
  auto job_it = s.jobs.find(job_name);
  if (job_it == s.jobs.end()) return {ExportOutcome::kExported, ""};
  if (auto blocker = MoveBlocker(job_name); !blocker.empty()) {
    return {ExportOutcome::kRefused, blocker};
  }
  JobState& job = job_it->second;
  if (!job.sends.empty()) {
    return {ExportOutcome::kBusy, std::to_string(job.sends.size()) + " send(s) not yet accepted"};
  }
  std::vector<std::uint64_t> waiting;
  for (const auto& [id, ticket] : s.tickets) {
    if (ticket.job != job_name) continue;
    if (ticket.kind != TicketKind::kReceive) {
      return {ExportOutcome::kBusy, "an operation at another node has not answered yet"};
    }
    waiting.push_back(id);
  }

  WireWriter out;
  out.U32(job.next_name);
  out.U32(job.next_op);
  out.U32(static_cast<std::uint32_t>(job.names.size()));
  for (const auto& [name, entry] : job.names) {
    out.U32(name);
    out.U8(static_cast<std::uint8_t>(entry.type));
    WriteId(out, entry.id);
    out.U32(entry.refs);
  }
  out.U32(static_cast<std::uint32_t>(job.ops.size()));
  for (const auto& [handle, op] : job.ops) {
    out.U32(handle);
    out.U8(op.is_receive ? 1 : 0);
    out.U32(op.end_name);
    out.U32(static_cast<std::uint32_t>(op.posted_ends.size()));
    for (ObjectId end : op.posted_ends) WriteId(out, end);
    out.U8(op.done ? 1 : 0);
    out.U16(static_cast<std::uint16_t>(op.status));
    out.WriteOpResult(op.result);
    out.U8(op.waiting_request ? 1 : 0);
    out.U32(op.waiting_request.value_or(0));
    out.U32(op.wait_ms);
  }
  out.U32(static_cast<std::uint32_t>(job.early.size()));
  for (const auto& [end, results] : job.early) {
    out.U32(end);
    out.U32(static_cast<std::uint32_t>(results.size()));
    for (const OpResult& result : results) out.WriteOpResult(result);
  }
  out.U32(static_cast<std::uint32_t>(waiting.size()));
  for (std::uint64_t id : waiting) {
    const Ticket& ticket = s.tickets.at(id);
    out.U64(id);
    out.U64(ticket.node);
    out.U32(ticket.request);
    out.U32(ticket.name);
    out.U8(ticket.many ? 1 : 0);
  }
  std::vector<std::string> registered;
  for (const auto& [text, entry] : s.names) {
    if (entry.second == job_name) registered.push_back(text);
  }
  out.U32(static_cast<std::uint32_t>(registered.size()));
  for (const std::string& text : registered) {
    out.Bytes(text);
    WriteId(out, s.names.at(text).first);
  }

  // The job is gone from here without releasing anything: its rights travel.
  for (const auto& [handle, op] : job.ops) s.CancelTimer(op.wait_timer);
  for (std::uint64_t id : waiting) {
    s.tickets.erase(id);
    s.forwarded_tickets[id] = to;
  }
  for (const std::string& text : registered) s.names.erase(text);
  s.jobs.erase(job_it);
  s.RememberMove(job_name, to);
  return {ExportOutcome::kExported, out.Take()};
}

Expected<void> PortRouter::ImportJob(const std::string& job_name, std::string_view state) {
  auto& s = *state_;
  if (auto existing = s.jobs.find(job_name);
      existing != s.jobs.end() && !existing->second.names.empty()) {
    return Fail("job " + job_name + " already holds rights here");
  }
  const auto malformed = [&] { return Fail("malformed IPC state for job " + job_name); };
  JobState job;
  struct Waiting {
    std::uint64_t id;
    Ticket ticket;
  };
  std::vector<Waiting> waiting;
  std::vector<std::pair<std::string, ObjectId>> registered;
  if (!state.empty()) {
    WireReader in(state);
    auto next_name = in.U32();
    auto next_op = in.U32();
    auto count = in.U32();
    if (!count) return malformed();
    job.next_name = *next_name;
    job.next_op = *next_op;
    for (std::uint32_t i = 0; i < *count; ++i) {
      auto name = in.U32();
      auto type = in.U8();
      auto id = ReadId(in);
      auto refs = in.U32();
      if (!refs) return malformed();
      const auto right = static_cast<RightType>(*type);
      job.names[*name] = Entry{right, *id, *refs};
      if (right == RightType::kSend || right == RightType::kRegion) {
        job.merged[{right, *id}] = *name;
      }
    }
    count = in.U32();
    if (!count) return malformed();
    for (std::uint32_t i = 0; i < *count; ++i) {
      auto handle = in.U32();
      auto is_receive = in.U8();
      auto end_name = in.U32();
      auto posted = in.U32();
      if (!posted || *posted > 1u << 20) return malformed();
      OpState op;
      op.is_receive = *is_receive != 0;
      op.end_name = *end_name;
      for (std::uint32_t k = 0; k < *posted; ++k) {
        auto end = ReadId(in);
        if (!end) return malformed();
        op.posted_ends.push_back(*end);
      }
      auto done = in.U8();
      auto status = in.U16();
      auto result = in.ReadOpResult();
      auto has_wait = in.U8();
      auto request = in.U32();
      auto wait_ms = in.U32();
      if (!wait_ms || !result) return malformed();
      op.done = *done != 0;
      op.status = static_cast<JobStatus>(*status);
      op.result = std::move(*result);
      if (*has_wait) op.waiting_request = *request;
      op.wait_ms = *wait_ms;
      job.ops[*handle] = std::move(op);
    }
    count = in.U32();
    if (!count) return malformed();
    for (std::uint32_t i = 0; i < *count; ++i) {
      auto end = in.U32();
      auto results = in.U32();
      if (!results || *results > 1u << 20) return malformed();
      for (std::uint32_t k = 0; k < *results; ++k) {
        auto result = in.ReadOpResult();
        if (!result) return malformed();
        job.early[*end].push_back(std::move(*result));
      }
    }
    count = in.U32();
    if (!count) return malformed();
    for (std::uint32_t i = 0; i < *count; ++i) {
      auto id = in.U64();
      auto node = in.U64();
      auto request = in.U32();
      auto name = in.U32();
      auto many = in.U8();
      if (!many || *id == 0) return malformed();
      waiting.push_back({*id, Ticket{.kind = TicketKind::kReceive,
                                     .node = *node,
                                     .job = job_name,
                                     .request = *request,
                                     .name = *name,
                                     .many = *many != 0}});
    }
    count = in.U32();
    if (!count) return malformed();
    for (std::uint32_t i = 0; i < *count; ++i) {
      auto text = in.Bytes();
      auto id = ReadId(in);
      if (!id) return malformed();
      registered.emplace_back(std::move(*text), *id);
    }
    if (!in.AtEnd()) return malformed();
  }

  s.ForgetMove(job_name);
  if (auto attached = s.jobs.find(job_name); attached != s.jobs.end()) {
    job.uid = attached->second.uid;  // the destination agent knows the job's user
  }
  JobState& installed = s.jobs[job_name] = std::move(job);
  for (auto& [handle, op] : installed.ops) {
    if (op.waiting_request && op.wait_ms != kWaitForever) {
      op.wait_timer = s.NewTimer(
          TimerInfo{.kind = TimerKind::kOpWait, .job = job_name, .handle = handle}, op.wait_ms);
    }
  }
  for (auto& [id, ticket] : waiting) {
    s.forwarded_tickets.erase(id);
    s.tickets[id] = std::move(ticket);
  }
  for (auto& [text, id] : registered) {
    if (!s.names.contains(text)) {
      s.names[text] = {id, job_name};
    } else {
      s.ReleaseRight(RightType::kSend, id, 1, job_name);  // taken here meanwhile
    }
  }
  // Every node learns where the job is now, before any request of the job's reaches it (the
  // links keep order).
  for (std::uint64_t peer : s.peers)
    s.Post(peer, Envelope{.kind = Remote::kJobMoved, .job = job_name});
  s.JobMovedHere(job_name, s.self);
  s.Drain();
  return {};
}

}  // namespace tern::ipc
