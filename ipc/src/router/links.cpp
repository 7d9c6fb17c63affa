// PortRouter, links.cpp
// Links (docs/ipc.md "Links"): two ends homed where created; sends and receives posted at the home,
// matched there, and completed on the job side as operations.
#include "state.hpp"

namespace tern::ipc {

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

void PortRouter::State::HomeLinkCancel(const Envelope& e) {
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
                 op.status == JobStatus::kLinkBroken ? "the link is broken" : "failed");
  }
  WireWriter out(/*share_data=*/true);
  if (poll) out.U8(1);
  out.WriteOpResult(op.result);
  Reply(job_name, request, out);
}

void PortRouter::State::OnLinkCreate(const std::string& job_name, JobState& job,
                                     ipc::JobRequest& request, WireReader& /*in*/) {
  auto link = std::make_shared<Link>();
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
  auto name = in.U32();
  auto message = in.ReadMessage();
  if (!message) return Bad(job_name, request, "link_send: malformed message");
  Entry* entry = Find(job, *name);
  if (!entry || entry->type != RightType::kLinkEnd)
    return Invalid(job_name, request, *name, "a link end");
  auto transit = DataOnly(std::move(*message));
  if (!transit)
    return Bad(job_name, request, "link messages carry data; send rights in port messages");
  const std::uint32_t handle = job.next_op++;
  job.ops[handle] = OpState{.is_receive = false, .end_name = *name, .posted_ends = {entry->id}};
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
