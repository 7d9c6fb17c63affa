// PortRouter::State: everything one router holds, and the operations on it, declared here and
// defined by concept in the files of this folder (each group below names its file). Internal to
// tern_ipc; PortRouter (port_router.hpp) is the only way in.
//
// Thread-safety: none; PortRouter's caller drives it from one thread.
#pragma once

#include <algorithm>
#include <random>
#include <tern/ipc/port_router.hpp>

#include "types.hpp"

namespace tern::ipc {

using router::BlockedSender;
using router::Cost;
using router::DeadNameRequest;
using router::Delivery;
using router::Entry;
using router::Envelope;
using router::HeldOffer;
using router::Holder;
using router::JobState;
using router::kMaxBatchBytes;
using router::kMaxEarlyResultBytes;
using router::kRegionChunk;
using router::kRememberMoveMs;
using router::kRootUid;
using router::Link;
using router::LinkMode;
using router::LinkOp;
using router::LinkSettle;
using router::MovedReceives;
using router::NameSearch;
using router::OpState;
using router::OwnerRank;
using router::Port;
using router::PortState;
using router::Queued;
using router::QueuedEntry;
using router::Region;
using router::Remote;
using router::Sender;
using router::Ticket;
using router::TicketKind;
using router::TimerInfo;
using router::TimerKind;
using router::TrainRun;
using router::TransitItem;
using router::TransitMessage;
using router::TransitRight;
using router::U32Bytes;
using router::Waiter;

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
  // Jobs exported whose move is not settled yet (SettleExport): the journal's snapshot still
  // holds their capability table and the names they registered, as before the export, so that
  // an agent killed before the move's commit record was written restores them and the job,
  // resumed here, gets its rights back. Only while the state is durable.
  struct UnsettledExport {
    JobState table;  // uid, next_name, names
    std::vector<std::pair<std::string, ObjectId>> registered;
    MovedReceives moved;
  };
  std::map<std::string, UnsettledExport> unsettled_exports;
  // Restored from the journal (an export not settled when the agent died): the answers to its
  // receives waiting at other homes are forwarded from the restore on (forwarded_tickets); when
  // the move turns out committed (PortRouter::ForgetMovedJob), those that waited at this node's
  // ports, whose waiters died with the old agent, fail where the job went. Written in each
  // snapshot until then (a second restart), dropped when the job is exported, imported or gone.
  std::map<std::string, MovedReceives> restored_moves;
  std::map<std::uint64_t, std::uint64_t> forwarded_tickets;
  // Results for a ticket this node does not have, kept by job: a job moving here whose hand-off
  // is not installed yet (its source forwards what its waiting receives got; a destination
  // restarted after the commit gets them, sent again, before it learns the outcome). ImportJob
  // hands them to the tickets it installs; the rest are released after kRememberMoveMs (or at
  // once past kMaxEarlyResultBytes). In the journal while durable (since 2026-12-07): a
  // destination killed before the import keeps them.
  struct EarlyResults {
    std::vector<Envelope> results;
    std::uint64_t forget_timer = 0;
  };
  std::map<std::string, EarlyResults> early_results;
  std::uint64_t early_result_bytes = 0;
  // Keeps `e` for its job; false when it cannot (no job named, or over the bound).
  bool KeepEarlyResult(Envelope& e);
  // Removes what is kept for `job` (its timer cancelled, its bytes no longer counted) and
  // returns it.
  std::vector<Envelope> TakeEarlyResults(const std::string& job);
  // Releases what is kept for `job` (its timer fired).
  void ForgetEarlyResults(const std::string& job);
  // Results that wait for the next frame to their node (kEnqueueLazyResult), encoded, and the
  // timer that sends what is still waiting when it fires. It is not cancelled when the results
  // leave early: a steady stream of calls arms one timer per kLazyResultMs, not one per call.
  struct DeferredResults {
    std::vector<std::string> frames;
    std::uint64_t timer = 0;
  };
  std::map<std::uint64_t, DeferredResults> deferred;
  // Durable state (durable.cpp): off until PortRouter::KeepDurableState. The queue journal's
  // records not yet taken (header and payload pieces), the journal file's size, the size past
  // which it is rewritten whole, and the snapshot last handed out.
  bool durable = false;
  bool rewrite_journal = false;
  std::vector<std::string> journal;
  std::uint64_t journal_bytes = 0;
  std::uint64_t compact_at = 0;
  std::string last_snapshot;
  // The last sequenced frame handled from each peer, and the peers whose tag changed this turn
  // (a record each at TakeDurable).
  std::map<std::uint64_t, SequenceTag> peer_delivered;
  std::set<std::uint64_t> peer_delivered_changed;
  // The numbered frames sent to each peer and not acknowledged yet (JournalSent), for a
  // rewrite of the journal.
  std::map<std::uint64_t, std::deque<Restored::Unacked>> unacked_sent;

  // The epochs of links' direct directions (NewEpoch), seeded once from `random`.
  std::mt19937_64 epochs;

  // Tickets start at a point `random` draws: a moving job takes its waiting tickets along, and
  // they must not collide with the new node's own.
  State(std::uint64_t node, RegionStore& regions_store, IpcLimits ipc_limits,
        const RandomSource& random)
      : self(node), store(regions_store), limits(ipc_limits) {
    // 2^62 values apart from wrapping; 0 means "no ticket".
    next_ticket = (random() >> 2) | 1;
    epochs.seed(random());
  }

  // ---- quota.cpp
  static Sender SenderOf(const Envelope& e);
  bool Fits(const Sender& sender, std::uint64_t cost) const;
  void Charge(const Sender& sender, std::uint64_t cost);
  void Uncharge(const Sender& sender, std::uint64_t cost);
  void OverQuota(const Envelope& e);

  // ---- outbox.cpp
  void Post(std::uint64_t node, Envelope e);
  void Emit(std::uint64_t node, const Envelope& e);
  void FlushDeferred(std::uint64_t node);
  void Respond(const Envelope& request, Envelope result);
  void SendResult(std::uint64_t node, Envelope result);
  void Drain();
  void Reply(const std::string& job, std::uint32_t request, JobStatus status,
             std::string_view body = {});
  void Reply(const std::string& job, std::uint32_t request, WireWriter& out);
  void Error(const std::string& job, std::uint32_t request, JobStatus status, std::string message);
  ObjectId NewObject();

  // ---- tickets.cpp
  std::uint64_t NewTicket(Ticket ticket);
  std::uint64_t NewTimer(TimerInfo info, std::uint32_t ms);
  void CancelTimer(std::uint64_t timer);
  // Asks `port`'s home for one more ref of a send right for `job` (make_send, a name registered
  // or found here); the answer comes back under a ticket of `kind`, with `request`, `text` and
  // `name` (a lookup's wanted name).
  void PostRefIncrement(TicketKind kind, const std::string& job, std::uint32_t request,
                        ObjectId port, std::string text = {}, std::uint32_t name = 0);
  void HandleResult(Envelope& e, std::uint64_t from);
  // HandleResult's handlers, one per TicketKind; `job` is null when the ticket's job is gone.
  void OnPreOpResult(Ticket& ticket, Envelope& e, JobState* job);
  void OnSendResult(Ticket& ticket, Envelope& e, JobState* job);
  void OnReceiveResult(Ticket& ticket, Envelope& e, JobState* job);
  void OnMakeSendResult(Ticket& ticket, Envelope& e, JobState* job);
  void OnStatusResult(Ticket& ticket, Envelope& e);
  void OnNotifyResult(Ticket& ticket, Envelope& e);
  void OnLinkCancelResult(Ticket& ticket, Envelope& e, JobState* job);
  void OnLinkDirectResult(Ticket& ticket, Envelope& e);
  void OnNameRegisterResult(Ticket& ticket, Envelope& e, JobState* job);
  void OnNameRegisterCheckResult(Ticket& ticket, Envelope& e, JobState* job);
  void OnNameLookupDeltaResult(Ticket& ticket, Envelope& e, JobState* job);
  void OnNameQueryResult(Ticket& ticket, Envelope& e, JobState* job);
  void OnRegionFetchResult(Ticket& ticket, Envelope& e);
  void FailTicketsTo(std::uint64_t node);

  // ---- capability_table.cpp
  Entry* Find(JobState& job, std::uint32_t name);
  std::uint32_t Insert(JobState& job, RightType type, ObjectId id, std::uint32_t refs = 1);
  // Insert, under `wanted` when that name is free and the job holds no name for the right yet
  // (a send right looked up again after a re-attach keeps the job's old name); else as Insert.
  std::uint32_t InsertAt(JobState& job, RightType type, ObjectId id, std::uint32_t wanted);
  void Drop(JobState& job, std::uint32_t name, std::uint32_t refs = 1);
  void ReleaseRight(RightType type, ObjectId id, std::uint32_t refs, const std::string& job);
  void ReleaseTransit(const TransitMessage& message);
  JobStatus CarryRight(const std::string& job_name, JobState& job, std::uint32_t name,
                       Disposition disposition, JobState::PendingSend& send,
                       std::map<std::uint32_t, std::uint32_t>& moved, TransitRight& out,
                       std::string& error);
  void DropIfHeld(const std::string& job_name, std::uint32_t name);
  void MarkDead(JobState& job, ObjectId port);
  Message Convert(JobState& job, const std::string& job_name, TransitMessage& transit,
                  std::uint32_t receive_name, const std::map<std::size_t, ObjectId>& copied);

  // ---- job_ops.cpp
  void HandleJob(const std::string& job_name, JobState& job, ipc::JobRequest& request);
  // The answers every handler gives to a malformed request or a name that is not the job's.
  void Bad(const std::string& job_name, const ipc::JobRequest& request, std::string why);
  void Invalid(const std::string& job_name, const ipc::JobRequest& request, std::uint32_t name,
               std::string_view what);
  void OnPortAllocate(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                      WireReader& in);
  void OnMakeSend(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                  WireReader& in);
  void OnDeallocate(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                    WireReader& in);
  void OnRightInfo(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                   WireReader& in);
  void OnPortStatus(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                    WireReader& in);
  void OnSend(const std::string& job_name, JobState& job, ipc::JobRequest& request, WireReader& in);
  void OnSendReceive(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                     WireReader& in);
  void OnReceive(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                 WireReader& in);
  void OnReceiveMany(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                     WireReader& in);
  void OnRequestNotification(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                             WireReader& in);

  // ---- sending.cpp
  std::optional<WireWriter> TakeQueuedHere(const std::string& job_name, JobState& job,
                                           std::uint32_t name, std::uint32_t max);
  static std::optional<TransitMessage> DataOnly(Message message);
  static bool WriteDataOnly(WireWriter& out, const TransitMessage& transit,
                            std::uint32_t receive_name);
  void StartReceive(const std::string& job_name, JobState& job, std::uint32_t request,
                    std::uint32_t name, std::uint32_t timeout, bool many = false);
  void StartSend(const std::string& job_name, JobState& job, std::uint32_t request,
                 SendRequest send_request,
                 std::optional<std::pair<std::uint32_t, std::uint32_t>> then_receive = {});
  void StartBatch(const std::string& job_name, JobState& job, std::uint32_t request,
                  const std::shared_ptr<const std::string>& owner, std::string_view body);
  void PumpSends(const std::string& job_name, JobState& job);
  bool NothingQueuedHere(JobState& job, std::uint32_t name);
  void SendDone(const std::string& job_name, const JobState::PendingSend& send);
  void PostNotification(ObjectId port, std::uint32_t id, std::string bytes,
                        std::optional<TransitRight> right = std::nullopt);
  void EnqueueResult(const Envelope& request, JobStatus status = JobStatus::kOk,
                     std::string text = {});

  // ---- names.cpp
  void HomeNameQuery(const Envelope& e);
  std::optional<std::uint32_t> OwnerOf(const std::string& registrant) const;
  static std::string UidText(std::optional<std::uint32_t> uid);
  std::string TakenWhy(const JobState& job, const std::string& text,
                       std::map<std::string, std::pair<ObjectId, std::string>>::iterator taken);
  // `wanted`: the name the job asks the right to have (0: any), as after a re-attach.
  void LookupFound(const std::string& job, std::uint32_t request, const std::string& text,
                   ObjectId port, std::uint32_t wanted);
  void OnNameRegister(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                      WireReader& in);
  void OnNameUnregister(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                        WireReader& in);
  void OnNameLookup(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                    WireReader& in);

  // ---- links.cpp
  void Complete(const LinkOp& op, ObjectId end, JobStatus status,
                std::optional<TransitMessage> message);
  void HomeLinkPost(const Envelope& e);
  // An offer in direction d of `link` (sent on ends[d]) and a receive on ends[k], at the home.
  void HomeLinkOffer(Link& link, int d, LinkOp op);
  void HomeLinkReceive(Link& link, int k, LinkOp op);
  // An offer the home matches: taken by the oldest receive on the peer end, or queued.
  void MatchOffer(Link& link, int d, LinkOp op);
  void HomeLinkCancel(const Envelope& e);
  void HomeLinkDirectBegin(const Envelope& e);
  void HomeLinkSettle(const Envelope& e);
  std::uint64_t NewEpoch();
  void HomeBreakLinkEnd(const Envelope& e);
  void HomeSetLinkHolder(const Envelope& e);
  void LinkCompleted(const Envelope& e);
  void FinishOp(const std::string& job_name, JobState& job, std::uint32_t handle,
                std::uint32_t request, bool poll);
  void OnLinkCreate(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                    WireReader& in);
  void OnLinkSend(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                  WireReader& in);
  void OnLinkSendTagged(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                        WireReader& in);
  // kLinkSend and kLinkSendTagged after their own fields (epoch 0: untagged).
  void PostLinkSend(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                    std::uint32_t name, std::uint64_t epoch, std::uint32_t seq, WireReader& in);
  void OnLinkDirectBegin(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                         WireReader& in);
  void OnLinkSettle(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                    WireReader& in);
  void OnLinkReceive(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                     WireReader& in);
  void OnOpWaitOrPoll(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                      WireReader& in);
  void OnOpCancel(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                  WireReader& in);

  // ---- regions.cpp
  void HomeRegionFetch(const Envelope& e);
  void StartDelivery(const std::shared_ptr<Delivery>& delivery);
  void FinishDelivery(const std::shared_ptr<Delivery>& delivery);
  bool NeedsFetch(const TransitMessage& message) const;
  void OnRegionCreate(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                      WireReader& in);
  void OnRegionMap(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                   WireReader& in);

  // ---- port_home.cpp
  void HomeEnqueue(Envelope& e);
  bool TakeFromBatch(Port& port, Envelope& e, bool charged);
  void HomeEnqueueBatch(Envelope& e);
  TransitMessage PopQueued(Port& port, ObjectId port_id);
  void Accept(Port& port, TransitMessage&& message, const Sender& sender, bool charged);
  void AnswerWaiter(const Waiter& waiter, Envelope result);
  void RoomFreed(Port& port);
  void HomeReceiveWait(const Envelope& e);
  void HomeRefDelta(const Envelope& e);
  void HomeDestroyPort(const Envelope& e);
  void FailWaiters(Port& port, JobStatus status, const std::string& why);
  void HomeNotifyRequest(const Envelope& e);
  void HomeSetHolder(const Envelope& e);
  void HomePortStatus(const Envelope& e);

  // ---- durable.cpp
  // A queue's message in (`item` is what was pushed, to `port`'s back) or out (`count`
  // messages off its front), recorded while durable.
  void JournalPush(ObjectId port, const Queued& item, const Sender& sender);
  void JournalPop(std::uint64_t serial, std::uint32_t count);
  // An early result kept for its job (KeepEarlyResult), and all of a job's taken or released:
  // a destination killed before it installs the hand-off keeps what the source forwarded.
  void JournalEarlyResult(const Envelope& e);
  void JournalEarlyResultsGone(const std::string& job);
  std::string EncodeSnapshot() const;
  // The whole journal file for the queues as they are now.
  std::vector<std::string> QueuesJournal() const;

  // ---- dispatch.cpp
  void Dispatch(Envelope& e, std::uint64_t from);

  // ---- job_move.cpp
  void RememberMove(const std::string& job, std::uint64_t node);
  void ForgetMove(const std::string& job);
  void JobMovedHere(const std::string& job, std::uint64_t node);
};

}  // namespace tern::ipc
