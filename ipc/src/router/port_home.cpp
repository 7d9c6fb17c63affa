// PortRouter, port_home.cpp
// The home side of ports: queues, waiting receives, blocked senders, reference counts, the receive
// right's state (see PortState in types.hpp) and port death.
#include "state.hpp"

namespace tern::ipc {

void PortRouter::State::HomeEnqueue(Envelope& e) {
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
      e,
      Envelope{.kind = Remote::kEnqueueResult,
               .status = policy == FullPolicy::kWait ? JobStatus::kTimedOut : JobStatus::kQueueFull,
               .text = "the port's queue is full (" + std::to_string(port.limit) + " messages)"});
}

// Moves what fits of a train into the queue (a waiting receiver gets its message first).
// `e.delta` counts the messages taken so far. True when the whole train is in.
// `charged`: the train is charged to its sender already (it was blocked).
bool PortRouter::State::TakeFromBatch(Port& port, Envelope& e, bool charged) {
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
    JournalPush(e.object, port.queue.back().item, sender);
    port.queued += n;
    e.delta += n;
  }
  return e.batch.empty();
}

void PortRouter::State::HomeEnqueueBatch(Envelope& e) {
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
TransitMessage PortRouter::State::PopQueued(Port& port, ObjectId port_id) {
  --port.queued;
  JournalPop(port_id.serial, 1);
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
void PortRouter::State::Accept(Port& port, TransitMessage&& message, const Sender& sender,
                               bool charged) {
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
  const Queued& queued = port.queue.back().item;
  JournalPush(std::get<TransitMessage>(queued).destination, queued, sender);
  ++port.queued;
}

// Ends a waiting receive: with a message, or with why there is none.
void PortRouter::State::AnswerWaiter(const Waiter& waiter, Envelope result) {
  result.kind = Remote::kReceiveResult;
  result.ticket = waiter.ticket;
  result.origin = self;
  result.job = waiter.job;
  SendResult(waiter.node, std::move(result));
}

// Room freed in a queue: let blocked senders in, then tell those who asked.
void PortRouter::State::RoomFreed(Port& port) {
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

void PortRouter::State::HomeReceiveWait(const Envelope& e) {
  auto it = ports.find(e.object.serial);
  if (it == ports.end()) {
    return Respond(e, Envelope{.kind = Remote::kReceiveResult,
                               .status = JobStatus::kDeadName,
                               .text = "the port is dead"});
  }
  Port& port = it->second;
  if (port.holder != Holder::Receiving(e.origin, e.job)) {
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

void PortRouter::State::HomeRefDelta(const Envelope& e) {
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

void PortRouter::State::HomeDestroyPort(const Envelope& e) {
  auto it = ports.find(e.object.serial);
  if (it == ports.end()) return;
  Port& port = it->second;
  if (!e.job.empty() && port.holder != Holder::Receiving(e.origin, e.job)) return;
  if (port.port_destroyed) {
    const ObjectId notify = *port.port_destroyed;
    port.port_destroyed.reset();
    port.holder = Holder::InTransit();
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

void PortRouter::State::FailWaiters(Port& port, JobStatus status, const std::string& why) {
  for (Waiter& waiter : port.waiters) {
    CancelTimer(waiter.timer);
    AnswerWaiter(waiter, Envelope{.status = status, .text = why});
  }
  port.waiters.clear();
}

void PortRouter::State::HomeNotifyRequest(const Envelope& e) {
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

// The receive right left in a message (a=1), or a job holds it again.
void PortRouter::State::HomeSetHolder(const Envelope& e) {
  auto it = ports.find(e.object.serial);
  if (it == ports.end()) return;
  it->second.holder = e.a == 1 ? Holder::InTransit() : Holder::Receiving(e.origin, e.job);
  if (e.ticket) Respond(e, Envelope{.kind = Remote::kRefDeltaResult});
  return;
}

void PortRouter::State::HomePortStatus(const Envelope& e) {
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

}  // namespace tern::ipc
