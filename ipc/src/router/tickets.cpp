// PortRouter, tickets.cpp
// Tickets: an operation sent to another home waits under a ticket for its result; results come back
// here, one handler per ticket kind (HandleResult picks it). Timers are allocated here too.
#include "state.hpp"

namespace tern::ipc {

std::uint64_t PortRouter::State::NewTicket(Ticket ticket) {
  const std::uint64_t id = next_ticket++;
  tickets.emplace(id, std::move(ticket));
  return id;
}

std::uint64_t PortRouter::State::NewTimer(TimerInfo info, std::uint32_t ms) {
  const std::uint64_t id = next_timer++;
  timers.emplace(id, std::move(info));
  actions.timers.push_back({id, std::chrono::milliseconds(ms)});
  return id;
}

void PortRouter::State::CancelTimer(std::uint64_t timer) {
  if (timer && timers.erase(timer)) actions.cancelled_timers.push_back(timer);
}

void PortRouter::State::PostRefIncrement(TicketKind kind, const std::string& job,
                                         std::uint32_t request, ObjectId port, std::string text,
                                         std::uint32_t name) {
  const std::uint64_t ticket = NewTicket(Ticket{.kind = kind,
                                                .node = port.home,
                                                .job = job,
                                                .request = request,
                                                .name = name,
                                                .object = port,
                                                .text = std::move(text)});
  Post(port.home,
       Envelope{
           .kind = Remote::kRefDelta, .ticket = ticket, .job = job, .object = port, .delta = 1});
}

void PortRouter::State::HandleResult(Envelope& e, std::uint64_t from) {
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
    // Before the ticket: its job's hand-off is on its way here (ImportJob takes it).
    if (KeepEarlyResult(e)) return;
    // Its job is gone, or the node was given up on: release what the result carries.
    if (e.message) ReleaseTransit(*e.message);
    return;
  }
  Ticket ticket = std::move(it->second);
  tickets.erase(it);
  (void)from;
  auto job_it = jobs.find(ticket.job);
  JobState* job = job_it != jobs.end() ? &job_it->second : nullptr;
  switch (ticket.kind) {
    case TicketKind::kPreOp:
      return OnPreOpResult(ticket, e, job);
    case TicketKind::kSend:
      return OnSendResult(ticket, e, job);
    case TicketKind::kReceive:
      return OnReceiveResult(ticket, e, job);
    case TicketKind::kMakeSend:
      return OnMakeSendResult(ticket, e, job);
    case TicketKind::kStatus:
      return OnStatusResult(ticket, e);
    case TicketKind::kNotify:
      return OnNotifyResult(ticket, e);
    case TicketKind::kLinkCancel:
      return OnLinkCancelResult(ticket, e, job);
    case TicketKind::kNameRegister:
      return OnNameRegisterResult(ticket, e, job);
    case TicketKind::kNameRegisterCheck:
      return OnNameRegisterCheckResult(ticket, e, job);
    case TicketKind::kNameLookupDelta:
      return OnNameLookupDeltaResult(ticket, e, job);
    case TicketKind::kNameQuery:
      return OnNameQueryResult(ticket, e, job);
    case TicketKind::kRegionFetch:
      return OnRegionFetchResult(ticket, e);
    case TicketKind::kLinkDirectBegin:
    case TicketKind::kLinkSettle:
      return OnLinkDirectResult(ticket, e);
  }
}

bool PortRouter::State::KeepEarlyResult(Envelope& e) {
  if (e.job.empty() || e.kind == Remote::kLinkCompleted) return false;
  const std::uint64_t cost = Cost(e);
  if (early_result_bytes + cost > kMaxEarlyResultBytes) return false;
  auto& kept = early_results[e.job];
  if (kept.forget_timer == 0) {
    kept.forget_timer =
        NewTimer(TimerInfo{.kind = TimerKind::kForgetEarlyResults, .job = e.job}, kRememberMoveMs);
  }
  early_result_bytes += cost;
  JournalEarlyResult(e);
  kept.results.push_back(std::move(e));
  return true;
}

std::vector<Envelope> PortRouter::State::TakeEarlyResults(const std::string& job) {
  auto it = early_results.find(job);
  if (it == early_results.end()) return {};
  std::vector<Envelope> results = std::move(it->second.results);
  CancelTimer(it->second.forget_timer);  // none left when it is the timer that fired
  early_results.erase(it);
  JournalEarlyResultsGone(job);
  for (const Envelope& e : results) early_result_bytes -= Cost(e);
  return results;
}

void PortRouter::State::ForgetEarlyResults(const std::string& job) {
  for (Envelope& e : TakeEarlyResults(job)) {
    if (e.message) ReleaseTransit(*e.message);
  }
}

// A pre-operation of a send (a right it carries, moved or copied at its home) is done.
void PortRouter::State::OnPreOpResult(Ticket& ticket, Envelope& e, JobState* job) {
  auto& send = *ticket.send;
  --send.outstanding;
  if (e.status != JobStatus::kOk && !send.failed) {
    send.failed = true;
    send.status = e.status;
    send.error = e.text;
  }
  if (job) PumpSends(ticket.job, *job);
}

void PortRouter::State::OnSendResult(Ticket& ticket, Envelope& e, JobState* job) {
  if (ticket.send->batch) {
    if (e.status == JobStatus::kDeadName && job) MarkDead(*job, ticket.send->envelope.object);
    WireWriter out;
    out.U32(e.a);
    out.U16(static_cast<std::uint16_t>(e.status));
    out.Bytes(e.text);
    return Reply(ticket.job, ticket.request, JobStatus::kOk, out.out());
  }
  if (e.status == JobStatus::kOk) return SendDone(ticket.job, *ticket.send);
  for (auto& undo : ticket.send->on_failure) undo();
  if (e.status == JobStatus::kDeadName && job) MarkDead(*job, ticket.send->envelope.object);
  Error(ticket.job, ticket.request, e.status, e.text);
}

void PortRouter::State::OnReceiveResult(Ticket& ticket, Envelope& e, JobState* job) {
  if (e.status != JobStatus::kOk || !e.message) {
    return Error(ticket.job, ticket.request, e.status, e.text);
  }
  if (!job) return ReleaseTransit(*e.message);
  auto delivery = std::make_shared<Delivery>();
  delivery->job = ticket.job;
  delivery->request = ticket.request;
  delivery->receive_name = ticket.name;
  delivery->many = ticket.many;
  delivery->message = std::move(*e.message);
  StartDelivery(delivery);
}

void PortRouter::State::OnMakeSendResult(Ticket& ticket, Envelope& e, JobState* job) {
  if (e.status != JobStatus::kOk) return Error(ticket.job, ticket.request, e.status, e.text);
  if (!job) return ReleaseRight(RightType::kSend, ticket.object, 1, "");
  WireWriter out;
  out.U32(Insert(*job, RightType::kSend, ticket.object));
  Reply(ticket.job, ticket.request, JobStatus::kOk, out.out());
}

void PortRouter::State::OnStatusResult(Ticket& ticket, Envelope& e) {
  if (e.status != JobStatus::kOk) return Error(ticket.job, ticket.request, e.status, e.text);
  WireWriter out;
  out.U32(e.a);
  out.U32(e.b);
  out.U32(e.c);
  Reply(ticket.job, ticket.request, JobStatus::kOk, out.out());
}

void PortRouter::State::OnNotifyResult(Ticket& ticket, Envelope& e) {
  if (e.status != JobStatus::kOk) return Error(ticket.job, ticket.request, e.status, e.text);
  Reply(ticket.job, ticket.request, JobStatus::kOk);
}

// One home's answer to cancelling a link operation; the job hears once every home answered.
void PortRouter::State::OnLinkCancelResult(Ticket& ticket, Envelope& e, JobState* job) {
  if (e.status == JobStatus::kAlreadyMatched) *ticket.matched = true;
  if (--*ticket.remaining > 0) return;
  if (!job) return;
  auto op = job->ops.find(ticket.handle);
  if (*ticket.matched || op == job->ops.end()) {
    return Error(ticket.job, ticket.request, JobStatus::kAlreadyMatched,
                 "the operation has been matched already");
  }
  if (op->second.waiting_request) {
    CancelTimer(op->second.wait_timer);
    Error(ticket.job, *op->second.waiting_request, JobStatus::kCancelled,
          "the operation was cancelled");
  }
  job->ops.erase(op);
  Reply(ticket.job, ticket.request, JobStatus::kOk);
}

// The home's answer to a link_direct_begin ({u64 epoch}) or a link_settle ({}).
void PortRouter::State::OnLinkDirectResult(Ticket& ticket, Envelope& e) {
  if (e.status != JobStatus::kOk) return Error(ticket.job, ticket.request, e.status, e.text);
  WireWriter out;
  if (ticket.kind == TicketKind::kLinkDirectBegin) out.U64(static_cast<std::uint64_t>(e.delta));
  Reply(ticket.job, ticket.request, JobStatus::kOk, out.out());
}

// The send right the name will stand for is made at the port's home.
void PortRouter::State::OnNameRegisterResult(Ticket& ticket, Envelope& e, JobState* job) {
  if (e.status != JobStatus::kOk) return Error(ticket.job, ticket.request, e.status, e.text);
  if (!job || names.contains(ticket.text)) {
    ReleaseRight(RightType::kSend, ticket.object, 1, "");
    if (job) {
      Error(ticket.job, ticket.request, JobStatus::kExists,
            "the name \"" + ticket.text + "\" is registered already");
    }
    return;
  }
  if (peers.empty() || job->uid == kRootUid) {
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
    Post(peer,
         Envelope{
             .kind = Remote::kNameQuery, .ticket = check, .job = ticket.job, .text = ticket.text});
  }
}

// One peer's answer to whether another user holds the name there.
void PortRouter::State::OnNameRegisterCheckResult(Ticket& ticket, Envelope& e, JobState* job) {
  auto& search = *ticket.search;
  // A node that cannot be reached does not hold the name against the job (it cannot
  // answer calls either); its answer would have arrived as kUnavailable.
  if (e.status == JobStatus::kOk && e.object.valid() && job) {
    const std::optional<std::uint32_t> owner =
        e.b != 0 ? std::optional<std::uint32_t>(e.a) : std::nullopt;
    if (owner != job->uid && !search.conflict) {
      search.conflict = true;
      search.conflict_node = e.origin;
    }
  }
  if (--search.remaining > 0) return;
  if (!job || search.conflict || names.contains(ticket.text)) {
    ReleaseRight(RightType::kSend, ticket.object, 1, "");
    if (!job) return;
    if (search.conflict) {
      return Error(ticket.job, ticket.request, JobStatus::kExists,
                   "the name \"" + ticket.text + "\" is registered by another user on node " +
                       std::to_string(search.conflict_node));
    }
    return Error(ticket.job, ticket.request, JobStatus::kExists,
                 "the name \"" + ticket.text + "\" is registered already");
  }
  names[ticket.text] = {ticket.object, ticket.job};
  Reply(ticket.job, ticket.request, JobStatus::kOk);
}

// A name found here stands for a port elsewhere: its home added the send right's ref.
void PortRouter::State::OnNameLookupDeltaResult(Ticket& ticket, Envelope& e, JobState* job) {
  if (e.status != JobStatus::kOk) {
    auto stale = names.find(ticket.text);
    if (stale != names.end() && stale->second.first == ticket.object) names.erase(stale);
    return Error(ticket.job, ticket.request, JobStatus::kNotFound,
                 "no port is registered as \"" + ticket.text + "\"");
  }
  if (!job) return ReleaseRight(RightType::kSend, ticket.object, 1, "");
  WireWriter out;
  out.U32(InsertAt(*job, RightType::kSend, ticket.object, ticket.name));
  Reply(ticket.job, ticket.request, JobStatus::kOk, out.out());
}

// One peer's answer to a lookup asked of every node; the best owner wins.
void PortRouter::State::OnNameQueryResult(Ticket& ticket, Envelope& e, JobState* job) {
  auto& search = *ticket.search;
  if (search.remaining <= 0) return;  // answered already
  if (e.status == JobStatus::kOk && e.object.valid()) {
    const std::optional<std::uint32_t> owner =
        e.b != 0 ? std::optional<std::uint32_t>(e.a) : std::nullopt;
    const int rank = OwnerRank(job ? job->uid : std::nullopt, owner);
    if (rank < search.rank) {
      search.rank = rank;
      search.best = e.object;
    }
    if (rank == 0) {  // the caller's own user's: nothing better can come
      search.remaining = 0;
      return LookupFound(ticket.job, ticket.request, ticket.text, e.object, search.wanted);
    }
  }
  if (--search.remaining > 0) return;
  if (search.best.valid()) {
    return LookupFound(ticket.job, ticket.request, ticket.text, search.best, search.wanted);
  }
  Error(ticket.job, ticket.request, JobStatus::kNotFound,
        "no port is registered as \"" + ticket.text + "\" on any node");
}

// One chunk of a remote region: the first one tells its size (e.delta), which must be within
// this node's cap; each is written into the copy, and the next asked for.
void PortRouter::State::OnRegionFetchResult(Ticket& ticket, Envelope& e) {
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
}

void PortRouter::State::FailTicketsTo(std::uint64_t node) {
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

}  // namespace tern::ipc
