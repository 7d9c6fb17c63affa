// PortRouter, job_ops.cpp
// Job requests: one handler per JobOp, and HandleJob that picks it. The handlers of links, names
// and regions live in links.cpp, names.cpp and regions.cpp.
#include "state.hpp"

namespace tern::ipc {

void PortRouter::State::HandleJob(const std::string& job_name, JobState& job,
                                  ipc::JobRequest& request) {
  WireReader in(request.body);
  switch (request.op) {
    case JobOp::kPortAllocate:
      return OnPortAllocate(job_name, job, request, in);
    case JobOp::kMakeSend:
      return OnMakeSend(job_name, job, request, in);
    case JobOp::kDeallocate:
      return OnDeallocate(job_name, job, request, in);
    case JobOp::kRightInfo:
      return OnRightInfo(job_name, job, request, in);
    case JobOp::kPortStatus:
      return OnPortStatus(job_name, job, request, in);
    case JobOp::kSend:
      return OnSend(job_name, job, request, in);
    case JobOp::kSendBatch:
      return StartBatch(job_name, job, request.id, request.payload, request.body);
    case JobOp::kDirectOpen:
    case JobOp::kDirectAccept:
      // The agent serves these (it owns the sockets); a router alone has no direct calls.
      return Bad(job_name, request, "direct calls are not served here");
    case JobOp::kSendReceive:
      return OnSendReceive(job_name, job, request, in);
    case JobOp::kReceive:
      return OnReceive(job_name, job, request, in);
    case JobOp::kReceiveMany:
      return OnReceiveMany(job_name, job, request, in);
    case JobOp::kRequestNotification:
      return OnRequestNotification(job_name, job, request, in);
    case JobOp::kNameRegister:
      return OnNameRegister(job_name, job, request, in);
    case JobOp::kNameUnregister:
      return OnNameUnregister(job_name, job, request, in);
    case JobOp::kNameLookup:
      return OnNameLookup(job_name, job, request, in);
    case JobOp::kLinkCreate:
      return OnLinkCreate(job_name, job, request, in);
    case JobOp::kLinkSend:
      return OnLinkSend(job_name, job, request, in);
    case JobOp::kLinkReceive:
      return OnLinkReceive(job_name, job, request, in);
    case JobOp::kLinkDirectBegin:
      return OnLinkDirectBegin(job_name, job, request, in);
    case JobOp::kLinkSettle:
      return OnLinkSettle(job_name, job, request, in);
    case JobOp::kLinkSendTagged:
      return OnLinkSendTagged(job_name, job, request, in);
    case JobOp::kOpWait:
    case JobOp::kOpPoll:
      return OnOpWaitOrPoll(job_name, job, request, in);
    case JobOp::kOpCancel:
      return OnOpCancel(job_name, job, request, in);
    case JobOp::kRegionCreate:
      return OnRegionCreate(job_name, job, request, in);
    case JobOp::kRegionMap:
      return OnRegionMap(job_name, job, request, in);
  }
  Bad(job_name, request, "unknown op " + std::to_string(static_cast<int>(request.op)));
}

void PortRouter::State::Bad(const std::string& job_name, const ipc::JobRequest& request,
                            std::string why) {
  Error(job_name, request.id, JobStatus::kBadRequest, std::move(why));
}

void PortRouter::State::Invalid(const std::string& job_name, const ipc::JobRequest& request,
                                std::uint32_t name, std::string_view what) {
  Error(job_name, request.id, JobStatus::kInvalidName,
        "name " + std::to_string(name) + " is not " + std::string(what) + " of this job");
}

void PortRouter::State::OnPortAllocate(const std::string& job_name, JobState& job,
                                       ipc::JobRequest& request, WireReader& in) {
  auto limit = in.U32();
  if (!limit) return Bad(job_name, request, "port_allocate: missing queue limit");
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
  port.holder = Holder::Receiving(self, job_name);
  port.limit = *limit == 0 ? kDefaultQueueLimit : *limit;
  WireWriter out;
  out.U32(Insert(job, RightType::kReceive, id));
  return Reply(job_name, request.id, JobStatus::kOk, out.out());
}

void PortRouter::State::OnMakeSend(const std::string& job_name, JobState& job,
                                   ipc::JobRequest& request, WireReader& in) {
  auto name = in.U32();
  if (!name) return Bad(job_name, request, "make_send: missing name");
  Entry* entry = Find(job, *name);
  if (!entry || entry->type != RightType::kReceive)
    return Invalid(job_name, request, *name, "a receive right");
  PostRefIncrement(TicketKind::kMakeSend, job_name, request.id, entry->id);
}

void PortRouter::State::OnDeallocate(const std::string& job_name, JobState& job,
                                     ipc::JobRequest& request, WireReader& in) {
  auto name = in.U32();
  if (!name) return Bad(job_name, request, "deallocate: missing name");
  Entry* entry = Find(job, *name);
  if (!entry) return Invalid(job_name, request, *name, "a right");
  const Entry copy = *entry;
  Drop(job, *name);
  ReleaseRight(copy.type, copy.id, 1, job_name);
  return Reply(job_name, request.id, JobStatus::kOk);
}

void PortRouter::State::OnRightInfo(const std::string& job_name, JobState& job,
                                    ipc::JobRequest& request, WireReader& in) {
  auto name = in.U32();
  if (!name) return Bad(job_name, request, "right_info: missing name");
  Entry* entry = Find(job, *name);
  if (!entry) return Invalid(job_name, request, *name, "a right");
  WireWriter out;
  out.U8(static_cast<std::uint8_t>(entry->type));
  out.U32(entry->refs);
  out.U64(entry->id.home);
  out.U64(entry->id.serial);
  return Reply(job_name, request.id, JobStatus::kOk, out.out());
}

void PortRouter::State::OnPortStatus(const std::string& job_name, JobState& job,
                                     ipc::JobRequest& request, WireReader& in) {
  auto name = in.U32();
  if (!name) return Bad(job_name, request, "port_status: missing name");
  Entry* entry = Find(job, *name);
  if (!entry || entry->type != RightType::kReceive)
    return Invalid(job_name, request, *name, "a receive right");
  const std::uint64_t ticket = NewTicket(Ticket{
      .kind = TicketKind::kStatus, .node = entry->id.home, .job = job_name, .request = request.id});
  Post(entry->id.home,
       Envelope{
           .kind = Remote::kPortStatus, .ticket = ticket, .job = job_name, .object = entry->id});
  return;
}

void PortRouter::State::OnSend(const std::string& job_name, JobState& job, ipc::JobRequest& request,
                               WireReader& /*in*/) {
  auto send = DecodeSendRequest(request.body, request.payload);
  if (!send) return Bad(job_name, request, "send: malformed message");
  return StartSend(job_name, job, request.id, std::move(*send));
}

void PortRouter::State::OnSendReceive(const std::string& job_name, JobState& job,
                                      ipc::JobRequest& request, WireReader& in) {
  auto name = in.U32();
  auto timeout = in.U32();
  auto send = timeout ? DecodeSendRequest(request.body.substr(8), request.payload) : std::nullopt;
  if (!send) return Bad(job_name, request, "send_receive: malformed request");
  Entry* entry = Find(job, *name);
  if (!entry || entry->type != RightType::kReceive)
    return Invalid(job_name, request, *name, "a receive right");
  return StartSend(job_name, job, request.id, std::move(*send), std::make_pair(*name, *timeout));
}

void PortRouter::State::OnReceive(const std::string& job_name, JobState& job,
                                  ipc::JobRequest& request, WireReader& in) {
  auto name = in.U32();
  auto timeout = in.U32();
  if (!timeout) return Bad(job_name, request, "receive: missing name or timeout");
  return StartReceive(job_name, job, request.id, *name, *timeout);
}

void PortRouter::State::OnReceiveMany(const std::string& job_name, JobState& job,
                                      ipc::JobRequest& request, WireReader& in) {
  auto name = in.U32();
  auto timeout = in.U32();
  auto max = in.U32();
  if (!max || *max == 0)
    return Bad(job_name, request, "receive_many: needs a name, a timeout and a maximum");
  if (auto batch = TakeQueuedHere(job_name, job, *name, *max)) {
    return Reply(job_name, request.id, *batch);
  }
  return StartReceive(job_name, job, request.id, *name, *timeout, /*many=*/true);
}

void PortRouter::State::OnRequestNotification(const std::string& job_name, JobState& job,
                                              ipc::JobRequest& request, WireReader& in) {
  auto name = in.U32();
  auto kind = in.U8();
  auto notify = in.U32();
  if (!notify || *kind < 1 || *kind > 3)
    return Bad(job_name, request, "request_notification: bad arguments");
  Entry* entry = Find(job, *name);
  Entry* target = Find(job, *notify);
  if (!target || target->type == RightType::kDeadName || target->type == RightType::kLinkEnd ||
      target->type == RightType::kRegion) {
    return Invalid(job_name, request, *notify, "a right to a live port");
  }
  const auto want = static_cast<NotificationKind>(*kind);
  const RightType needed =
      want == NotificationKind::kDeadName ? RightType::kSend : RightType::kReceive;
  if (!entry) return Invalid(job_name, request, *name, "a right");
  if (want == NotificationKind::kDeadName && entry->type == RightType::kDeadName) {
    // Already dead: tell at once, as Mach does.
    PostNotification(target->id, kDeadNameNotification, U32Bytes(*name));
    return Reply(job_name, request.id, JobStatus::kOk);
  }
  if (entry->type != needed &&
      !(needed == RightType::kSend && entry->type == RightType::kSendOnce)) {
    return Invalid(job_name, request, *name,
                   needed == RightType::kSend ? "a send right" : "a receive right");
  }
  const std::uint64_t ticket = NewTicket(Ticket{
      .kind = TicketKind::kNotify, .node = entry->id.home, .job = job_name, .request = request.id});
  Post(entry->id.home, Envelope{.kind = Remote::kNotifyRequest,
                                .ticket = ticket,
                                .job = job_name,
                                .object = entry->id,
                                .object2 = target->id,
                                .a = *kind,
                                .c = *name});
  return;
}

}  // namespace tern::ipc
