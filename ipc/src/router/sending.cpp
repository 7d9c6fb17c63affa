// PortRouter, sending.cpp
// The job side of messages: sends (one at a time per job, in order), send trains, receives, and
// notifications.
#include "state.hpp"

namespace tern::ipc {

// receive_many's short cut: when the port is homed here and messages wait, they go to the
// job in one reply ([u32 count][messages]) without a trip through the home's envelopes. A
// message with a remote region (copied first) ends the batch, and so does reaching
// kMaxBatchBytes (a job reads its answers whole). Nothing queued: nullopt.
std::optional<WireWriter> PortRouter::State::TakeQueuedHere(const std::string& job_name,
                                                            JobState& job, std::uint32_t name,
                                                            std::uint32_t max) {
  Entry* entry = Find(job, name);
  if (!entry || entry->type != RightType::kReceive || entry->id.home != self) return {};
  auto port = ports.find(entry->id.serial);
  if (port == ports.end() || port->second.holder != Holder::Receiving(self, job_name)) return {};
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
  JournalPop(entry->id.serial, count);
  RoomFreed(port->second);
  WireWriter header;
  header.U32(count);
  out.out().replace(0, 4, header.out());
  return out;
}

// A job's message that carries data only (bytes, out-of-line), as it travels; nullopt if an
// item is a right. The reverse of WriteDataOnly.
std::optional<TransitMessage> PortRouter::State::DataOnly(Message message) {
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
bool PortRouter::State::WriteDataOnly(WireWriter& out, const TransitMessage& transit,
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

void PortRouter::State::StartReceive(const std::string& job_name, JobState& job,
                                     std::uint32_t request, std::uint32_t name,
                                     std::uint32_t timeout, bool many) {
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

void PortRouter::State::StartSend(
    const std::string& job_name, JobState& job, std::uint32_t request, SendRequest send_request,
    std::optional<std::pair<std::uint32_t, std::uint32_t>> then_receive) {
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
    e.ticket =
        NewTicket(Ticket{.kind = TicketKind::kPreOp, .node = node, .job = job_name, .send = send});
    Post(node, std::move(e));
  }
  job.sends.push_back(send);
  PumpSends(job_name, job);
}

// send_many's fast path: a train of data-only messages to one port, one envelope to its
// home and one answer (how many were accepted). Nothing to carry, so no pre-ops.
// `body` lies inside `owner`, the request's frame: the messages' data stay there.
void PortRouter::State::StartBatch(const std::string& job_name, JobState& job,
                                   std::uint32_t request,
                                   const std::shared_ptr<const std::string>& owner,
                                   std::string_view body) {
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
void PortRouter::State::PumpSends(const std::string& job_name, JobState& job) {
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
bool PortRouter::State::NothingQueuedHere(JobState& job, std::uint32_t name) {
  const Entry* entry = Find(job, name);
  if (!entry || entry->type != RightType::kReceive || entry->id.home != self) return false;
  auto port = ports.find(entry->id.serial);
  return port != ports.end() && port->second.queued == 0;
}

// A send that went in: its rights move on, and the job gets its answer (or its receive).
void PortRouter::State::SendDone(const std::string& job_name, const JobState::PendingSend& send) {
  for (auto& apply : send.on_success) apply();
  auto job = jobs.find(job_name);
  if (send.then_receive && job != jobs.end()) {
    return StartReceive(job_name, job->second, send.request, send.then_receive->first,
                        send.then_receive->second);
  }
  Reply(job_name, send.request, JobStatus::kOk);
}

void PortRouter::State::PostNotification(ObjectId port, std::uint32_t id, std::string bytes,
                                         std::optional<TransitRight> right) {
  TransitMessage m;
  m.destination = port;
  m.id = id;
  if (!bytes.empty()) {
    m.items.push_back(
        TransitItem::Data(ItemKind::kBytes, std::make_shared<const std::string>(std::move(bytes))));
  }
  if (right) m.items.push_back(TransitItem{ItemKind::kPort, nullptr, {}, *right});
  Post(port.home, Envelope{.kind = Remote::kEnqueue,
                           .object = port,
                           .a = 0,
                           .c = 0,
                           .delta = router::kEnqueueBeyondLimit,
                           .message = std::move(m)});
}

// The answer to a send or a batch that ends now: a batch says how many it got in.
void PortRouter::State::EnqueueResult(const Envelope& request, JobStatus status, std::string text) {
  Respond(request, Envelope{.kind = Remote::kEnqueueResult,
                            .a = request.kind == Remote::kEnqueueBatch
                                     ? static_cast<std::uint32_t>(request.delta)
                                     : 0,
                            .status = status,
                            .text = std::move(text)});
}

}  // namespace tern::ipc
