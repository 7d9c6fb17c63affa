// PortRouter, links.cpp
// Links (docs/ipc.md "Links"): two ends homed where created; sends and receives posted at the home,
// matched there, and completed on the job side as operations. A direction of a link may be direct
// (docs/ipc.md "Link operations direct"): the receiver's libtern matches the offers that reach it
// on a connection between the two jobs, the home holds those that reach it meanwhile, and the
// receiver's settle hands the direction back to the home, which judges the held offers by it.
#include "state.hpp"

namespace tern::ipc {

namespace {

int EndIndex(const Link& link, ObjectId end) { return link.ends[0] == end ? 0 : 1; }

// The answer to a receive on the peer end of a direct direction (a "kick"): libtern's, which
// then uses (or settles) its connection for that epoch. The epoch as 8 bytes, little-endian.
TransitMessage DirectNowMessage(std::uint64_t epoch) {
  auto bytes = std::make_shared<std::string>(8, '\0');
  for (std::size_t k = 0; k < 8; ++k) (*bytes)[k] = static_cast<char>(epoch >> (8 * k));
  TransitMessage message;
  message.id = kLinkDirectNowId;
  message.items.push_back(TransitItem::Data(ItemKind::kBytes, std::move(bytes)));
  return message;
}

// What a settle says of one offer: matched or cancelled on the connection, or neither (an
// untagged offer, another epoch's, or one the receiver never took).
enum class Verdict { kMatched, kCancelled, kOpen };

Verdict Judge(const LinkSettle& settle, const LinkOp& op) {
  if (op.epoch == 0 || op.epoch != settle.epoch) return Verdict::kOpen;
  if (settle.cancelled.contains(op.seq)) return Verdict::kCancelled;
  return op.seq <= settle.matched_through ? Verdict::kMatched : Verdict::kOpen;
}

Envelope CancelResult(JobStatus status) {
  return Envelope{.kind = Remote::kLinkCancelResult, .status = status};
}

// The holder of end `k` posted from `e.origin`: that is where it runs now. A job that moved
// tells every node it has a link to (kJobMoved), which need not include this home, and the
// direct connections of a link are asked for at the end holder's node.
void NoteHolderNode(Link& link, int k, const Envelope& e) {
  if (link.holder[k].receiving() && link.holder[k].job == e.job) link.holder[k].node = e.origin;
}

}  // namespace

void PortRouter::State::Complete(const LinkOp& op, ObjectId end, JobStatus status,
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

void PortRouter::State::HomeLinkPost(const Envelope& e) {
  LinkOp op{e.origin, e.job, e.b, e.message};
  if (e.a == 0 && e.delta != 0) {  // a tagged send
    op.epoch = static_cast<std::uint64_t>(e.delta);
    op.seq = e.c;
  }
  auto it = links.find(e.object.serial);
  if (it == links.end()) return Complete(op, e.object, JobStatus::kLinkBroken, std::nullopt);
  Link& link = *it->second;
  const int k = EndIndex(link, e.object);
  NoteHolderNode(link, k, e);
  if (e.a == 0) return HomeLinkOffer(link, k, std::move(op));
  HomeLinkReceive(link, k, std::move(op));
}

// While its direction is direct, every offer is held, tagged or not, so that none overtakes
// another. A tagged offer whose epoch was settled is judged by that settle, even on a broken
// link: the receiver took it (or it was cancelled) on the connection, and it must not be
// offered twice; only an offer the settle leaves open is an ordinary one.
void PortRouter::State::HomeLinkOffer(Link& link, int d, LinkOp op) {
  if (link.mode[d] == LinkMode::kDirect) {
    link.held[d].push_back(HeldOffer{std::move(op), {}});
    return;
  }
  if (link.last_settle[d]) {
    switch (Judge(*link.last_settle[d], op)) {
      case Verdict::kMatched:
        return Complete(op, link.ends[d], JobStatus::kOk, std::nullopt);
      case Verdict::kCancelled:
        return Complete(op, link.ends[d], JobStatus::kCancelled, std::nullopt);
      case Verdict::kOpen:
        break;
    }
  }
  if (link.broken) return Complete(op, link.ends[d], JobStatus::kLinkBroken, std::nullopt);
  MatchOffer(link, d, std::move(op));
}

void PortRouter::State::MatchOffer(Link& link, int d, LinkOp op) {
  const int r = 1 - d;
  if (link.receives[r].empty()) {
    link.sends[d].push_back(std::move(op));
    return;
  }
  LinkOp receive = std::move(link.receives[r].front());
  link.receives[r].pop_front();
  Complete(op, link.ends[d], JobStatus::kOk, std::nullopt);
  Complete(receive, link.ends[r], JobStatus::kOk, std::move(op.message));
}

// A receive on ends[k] takes the offers of the other direction; while that direction is direct
// it is kicked at once (its libtern takes them on the connection).
void PortRouter::State::HomeLinkReceive(Link& link, int k, LinkOp op) {
  if (link.broken) return Complete(op, link.ends[k], JobStatus::kLinkBroken, std::nullopt);
  const int d = 1 - k;
  if (link.mode[d] == LinkMode::kDirect) {
    return Complete(op, link.ends[k], JobStatus::kOk, DirectNowMessage(link.epoch[d]));
  }
  if (link.sends[d].empty()) {
    link.receives[k].push_back(std::move(op));
    return;
  }
  LinkOp send = std::move(link.sends[d].front());
  link.sends[d].pop_front();
  Complete(send, link.ends[d], JobStatus::kOk, std::nullopt);
  Complete(op, link.ends[k], JobStatus::kOk, std::move(send.message));
}

void PortRouter::State::HomeLinkCancel(const Envelope& e) {
  const auto mine = [&](const LinkOp& op) {
    return op.node == e.origin && op.job == e.job && op.handle == e.b;
  };
  auto it = links.find(e.object.serial);
  if (e.ticket == 0) {
    // An "any" receive withdrawing its other posts: nothing to answer.
    if (it == links.end()) return;
    Link& link = *it->second;
    std::erase_if(link.receives[EndIndex(link, e.object)], mine);
    return;
  }
  JobStatus status = JobStatus::kAlreadyMatched;
  if (it != links.end()) {
    Link& link = *it->second;
    const int i = EndIndex(link, e.object);
    for (auto* list : {&link.sends[i], &link.receives[i]}) {
      auto op = std::find_if(list->begin(), list->end(), mine);
      if (op == list->end()) continue;
      list->erase(op);
      status = JobStatus::kOk;
      break;
    }
    auto held = std::find_if(link.held[i].begin(), link.held[i].end(),
                             [&](const HeldOffer& offer) { return mine(offer.op); });
    if (status != JobStatus::kOk && held != link.held[i].end()) {
      // Whether the receiver matched it on the connection is known at the settle (or lost at
      // the break), which answers this cancel.
      held->cancels.push_back(e);
      return;
    }
  }
  Respond(e, CancelResult(status));
}

std::uint64_t PortRouter::State::NewEpoch() {
  for (;;) {
    if (const std::uint64_t epoch = epochs(); epoch != 0) return epoch;
  }
}

// The sender asks to offer on its connection. Granted only while the direction is idle here:
// an offer queued or held here would be overtaken by those on the connection, and a receiver
// whose end travels in a message could not be kicked. The receives already waiting on the peer
// end are kicked now; any previous epoch's settle is forgotten (every offer of it was judged:
// none was queued or held).
void PortRouter::State::HomeLinkDirectBegin(const Envelope& e) {
  const auto refuse = [&](std::string why) {
    Respond(e, Envelope{.kind = Remote::kLinkDirectBeginResult,
                        .status = JobStatus::kUnavailable,
                        .text = std::move(why)});
  };
  auto it = links.find(e.object.serial);
  if (it == links.end() || it->second->broken) return refuse("the link is broken");
  Link& link = *it->second;
  const int d = EndIndex(link, e.object);
  const int r = 1 - d;
  NoteHolderNode(link, d, e);
  if (link.mode[d] == LinkMode::kDirect) return refuse("this end's offers are direct already");
  if (!link.sends[d].empty() || !link.held[d].empty()) {
    return refuse("offers on this end wait at the link's home");
  }
  if (!link.holder[r].receiving()) return refuse("the peer end is in a message");
  link.mode[d] = LinkMode::kDirect;
  link.epoch[d] = NewEpoch();
  link.last_settle[d].reset();
  for (const LinkOp& receive : std::exchange(link.receives[r], {})) {
    Complete(receive, link.ends[r], JobStatus::kOk, DirectNowMessage(link.epoch[d]));
  }
  Respond(e, Envelope{.kind = Remote::kLinkDirectBeginResult,
                      .delta = static_cast<std::int64_t>(link.epoch[d])});
}

// The receiver hands the direction back: what it matched and cancelled on the connection is
// final. The held offers are judged by it in order: matched ones complete ok (nothing is
// delivered again), cancelled ones complete cancelled, and the rest are ordinary offers again,
// in the order they came. A settle of an epoch that is not the direction's now (repeated,
// stale) changes nothing.
void PortRouter::State::HomeLinkSettle(const Envelope& e) {
  const auto answer = [&](JobStatus status, std::string why = {}) {
    Respond(e, Envelope{.kind = Remote::kLinkSettleResult, .status = status, .text = why});
  };
  if (e.text.size() % 4 != 0) return answer(JobStatus::kBadRequest, "malformed cancelled seqs");
  const auto epoch = static_cast<std::uint64_t>(e.delta);
  auto it = links.find(e.object.serial);
  if (it == links.end()) return answer(JobStatus::kOk);
  Link& link = *it->second;
  const int d = 1 - EndIndex(link, e.object);  // the direction whose offers the receiver took
  NoteHolderNode(link, 1 - d, e);
  if (link.mode[d] != LinkMode::kDirect || link.epoch[d] != epoch) return answer(JobStatus::kOk);
  LinkSettle settle{.epoch = epoch, .matched_through = e.c};
  for (WireReader seqs(e.text); !seqs.AtEnd();) settle.cancelled.insert(*seqs.U32());
  link.mode[d] = LinkMode::kHome;
  link.epoch[d] = 0;
  link.last_settle[d] = std::move(settle);
  // Before any answer to the receiver's later posts (they come after it on the same path).
  answer(JobStatus::kOk);
  for (HeldOffer& held : std::exchange(link.held[d], {})) {
    const Verdict verdict = Judge(*link.last_settle[d], held.op);
    if (verdict == Verdict::kMatched) {
      Complete(held.op, link.ends[d], JobStatus::kOk, std::nullopt);
      for (const Envelope& cancel : held.cancels) {
        Respond(cancel, CancelResult(JobStatus::kAlreadyMatched));
      }
      continue;
    }
    if (!held.cancels.empty()) {
      // Never matched, and its sender cancelled it: the cancel takes it, as it takes a queued
      // offer (the job side drops the operation on the cancel's answer).
      for (const Envelope& cancel : held.cancels) Respond(cancel, CancelResult(JobStatus::kOk));
      continue;
    }
    if (verdict == Verdict::kCancelled) {
      Complete(held.op, link.ends[d], JobStatus::kCancelled, std::nullopt);
      continue;
    }
    MatchOffer(link, d, std::move(held.op));
  }
}

void PortRouter::State::HomeBreakLinkEnd(const Envelope& e) {
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
      // Whether the receiver matched the held offers on the connection is lost with the link:
      // broken, as the queued ones; a cancel that waited for one finds it completed.
      for (const HeldOffer& held : link->held[k]) {
        Complete(held.op, link->ends[k], JobStatus::kLinkBroken, std::nullopt);
        for (const Envelope& cancel : held.cancels) {
          Respond(cancel, CancelResult(JobStatus::kAlreadyMatched));
        }
      }
      link->held[k].clear();
      link->mode[k] = LinkMode::kHome;
      link->epoch[k] = 0;
    }
  }
  if (link->released[0] && link->released[1]) {
    links.erase(link->ends[0].serial);
    links.erase(link->ends[1].serial);
  }
}

void PortRouter::State::LinkCompleted(const Envelope& e) {
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
    if (e.message && e.status == JobStatus::kOk) job.early[result.end].push_back(std::move(result));
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
      Post(end.home, Envelope{.kind = Remote::kLinkCancel, .job = e.job, .object = end, .b = e.b});
    }
  }
  if (op.waiting_request) {
    CancelTimer(op.wait_timer);
    FinishOp(e.job, job, e.b, *op.waiting_request, false);
  }
}

void PortRouter::State::FinishOp(const std::string& job_name, JobState& job, std::uint32_t handle,
                                 std::uint32_t request, bool poll) {
  auto it = job.ops.find(handle);
  if (it == job.ops.end()) return;
  OpState op = std::move(it->second);
  job.ops.erase(it);
  if (op.status != JobStatus::kOk) {
    return Error(job_name, request, op.status,
                 op.status == JobStatus::kLinkBroken  ? "the link is broken"
                 : op.status == JobStatus::kCancelled ? "the operation was cancelled"
                                                      : "failed");
  }
  WireWriter out(/*share_data=*/true);
  if (poll) out.U8(1);
  out.WriteOpResult(op.result);
  Reply(job_name, request, out);
}

void PortRouter::State::OnLinkCreate(const std::string& job_name, JobState& job,
                                     ipc::JobRequest& request, WireReader& /*in*/) {
  auto link = std::make_shared<Link>();
  // Serials 2k and 2k+1: a node that holds one end names the other without asking the home
  // (PortRouter::LinkPeerOf; the home confirms it before it routes a direct connection).
  if (next_serial % 2 == 1) ++next_serial;
  link->ends[0] = NewObject();
  link->ends[1] = NewObject();
  link->holder[0] = link->holder[1] = Holder::Receiving(self, job_name);
  links[link->ends[0].serial] = link;
  links[link->ends[1].serial] = link;
  WireWriter out;
  out.U32(Insert(job, RightType::kLinkEnd, link->ends[0]));
  out.U32(Insert(job, RightType::kLinkEnd, link->ends[1]));
  return Reply(job_name, request.id, JobStatus::kOk, out.out());
}

void PortRouter::State::OnLinkSend(const std::string& job_name, JobState& job,
                                   ipc::JobRequest& request, WireReader& in) {
  auto name = in.U32();  // missing: the message cannot be read either
  return PostLinkSend(job_name, job, request, name.value_or(0), 0, 0, in);
}

void PortRouter::State::OnLinkSendTagged(const std::string& job_name, JobState& job,
                                         ipc::JobRequest& request, WireReader& in) {
  auto name = in.U32();
  auto epoch = in.U64();
  auto seq = in.U32();
  if (!seq) return Bad(job_name, request, "link_send_tagged: missing end, epoch or seq");
  if (*epoch == 0) return Bad(job_name, request, "link_send_tagged: epoch 0 is no direct epoch");
  return PostLinkSend(job_name, job, request, *name, *epoch, *seq, in);
}

void PortRouter::State::PostLinkSend(const std::string& job_name, JobState& job,
                                     ipc::JobRequest& request, std::uint32_t name,
                                     std::uint64_t epoch, std::uint32_t seq, WireReader& in) {
  auto message = in.ReadMessage();
  if (!message) return Bad(job_name, request, "link_send: malformed message");
  Entry* entry = Find(job, name);
  if (!entry || entry->type != RightType::kLinkEnd)
    return Invalid(job_name, request, name, "a link end");
  auto transit = DataOnly(std::move(*message));
  if (!transit)
    return Bad(job_name, request, "link messages carry data; send rights in port messages");
  const std::uint32_t handle = job.next_op++;
  job.ops[handle] = OpState{.is_receive = false, .end_name = name, .posted_ends = {entry->id}};
  Post(entry->id.home, Envelope{.kind = Remote::kLinkPost,
                                .job = job_name,
                                .object = entry->id,
                                .a = 0,
                                .b = handle,
                                .c = seq,
                                .delta = static_cast<std::int64_t>(epoch),
                                .message = std::move(*transit)});
  WireWriter out;
  out.U32(handle);
  return Reply(job_name, request.id, JobStatus::kOk, out.out());
}

void PortRouter::State::OnLinkDirectBegin(const std::string& job_name, JobState& job,
                                          ipc::JobRequest& request, WireReader& in) {
  auto name = in.U32();
  if (!name) return Bad(job_name, request, "link_direct_begin: missing end");
  Entry* entry = Find(job, *name);
  if (!entry || entry->type != RightType::kLinkEnd)
    return Invalid(job_name, request, *name, "a link end");
  const std::uint64_t ticket = NewTicket(Ticket{.kind = TicketKind::kLinkDirectBegin,
                                                .node = entry->id.home,
                                                .job = job_name,
                                                .request = request.id});
  Post(entry->id.home, Envelope{.kind = Remote::kLinkDirectBegin,
                                .ticket = ticket,
                                .job = job_name,
                                .object = entry->id});
}

// The cancelled seqs travel to the home as they came: big-endian u32s (Remote::kLinkSettle).
void PortRouter::State::OnLinkSettle(const std::string& job_name, JobState& job,
                                     ipc::JobRequest& request, WireReader& in) {
  auto name = in.U32();
  auto epoch = in.U64();
  auto matched_through = in.U32();
  auto count = in.U32();
  if (!count) {
    return Bad(job_name, request, "link_settle: missing end, epoch, matched_through or count");
  }
  if (std::uint64_t{*count} * 4 > in.remaining()) {
    return Bad(job_name, request, "link_settle: fewer cancelled seqs than its count");
  }
  Entry* entry = Find(job, *name);
  if (!entry || entry->type != RightType::kLinkEnd)
    return Invalid(job_name, request, *name, "a link end");
  const std::uint64_t ticket = NewTicket(Ticket{.kind = TicketKind::kLinkSettle,
                                                .node = entry->id.home,
                                                .job = job_name,
                                                .request = request.id});
  Post(entry->id.home, Envelope{.kind = Remote::kLinkSettle,
                                .ticket = ticket,
                                .job = job_name,
                                .object = entry->id,
                                .c = *matched_through,
                                .delta = static_cast<std::int64_t>(*epoch),
                                .text = std::string(in.rest().substr(0, std::size_t{*count} * 4))});
}

void PortRouter::State::OnLinkReceive(const std::string& job_name, JobState& job,
                                      ipc::JobRequest& request, WireReader& in) {
  auto name = in.U32();
  if (!name) return Bad(job_name, request, "link_receive: missing end");
  std::vector<std::pair<std::uint32_t, ObjectId>> ends;
  if (*name == 0) {
    for (const auto& [n, entry] : job.names) {
      if (entry.type == RightType::kLinkEnd) ends.emplace_back(n, entry.id);
    }
    if (ends.empty())
      return Bad(job_name, request, "link_receive on any link: this job holds no link end");
  } else {
    Entry* entry = Find(job, *name);
    if (!entry || entry->type != RightType::kLinkEnd)
      return Invalid(job_name, request, *name, "a link end");
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
      Post(id.home,
           Envelope{.kind = Remote::kLinkPost, .job = job_name, .object = id, .a = 1, .b = handle});
    }
  }
  WireWriter out;
  out.U32(handle);
  return Reply(job_name, request.id, JobStatus::kOk, out.out());
}

void PortRouter::State::OnOpWaitOrPoll(const std::string& job_name, JobState& job,
                                       ipc::JobRequest& request, WireReader& in) {
  auto handle = in.U32();
  std::optional<std::uint32_t> timeout = kWaitForever;
  if (request.op == JobOp::kOpWait) timeout = in.U32();
  if (!handle || !timeout) return Bad(job_name, request, "wait/poll: missing handle");
  auto it = job.ops.find(*handle);
  if (it == job.ops.end()) return Invalid(job_name, request, *handle, "an operation");
  OpState& op = it->second;
  if (op.done) return FinishOp(job_name, job, *handle, request.id, request.op == JobOp::kOpPoll);
  if (request.op == JobOp::kOpPoll) {
    WireWriter out;
    out.U8(0);
    return Reply(job_name, request.id, JobStatus::kOk, out.out());
  }
  if (op.waiting_request) return Bad(job_name, request, "another thread waits on this operation");
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

void PortRouter::State::OnOpCancel(const std::string& job_name, JobState& job,
                                   ipc::JobRequest& request, WireReader& in) {
  auto handle = in.U32();
  if (!handle) return Bad(job_name, request, "cancel: missing handle");
  auto it = job.ops.find(*handle);
  if (it == job.ops.end()) return Invalid(job_name, request, *handle, "an operation");
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

// A link end left in a message (a=1), or a job holds it again.
void PortRouter::State::HomeSetLinkHolder(const Envelope& e) {
  auto it = links.find(e.object.serial);
  if (it == links.end()) return;
  const int i = it->second->ends[0] == e.object ? 0 : 1;
  it->second->holder[i] = e.a == 1 ? Holder::InTransit() : Holder::Receiving(e.origin, e.job);
  if (e.ticket) Respond(e, Envelope{.kind = Remote::kRefDeltaResult});
  return;
}

}  // namespace tern::ipc
