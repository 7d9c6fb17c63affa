// PortRouter's facade (port_router.hpp): each event goes into State (router/state.hpp), whose
// operations live by concept in router/*.cpp, and the local envelopes it queued run before the
// call returns.
#include <random>
#include <tern/ipc/port_router.hpp>

#include "router/state.hpp"

namespace tern::ipc {

namespace {

std::uint64_t DeviceRandom() {
  std::random_device random;
  const std::uint64_t high = random();
  return (high << 32) | random();
}

}  // namespace

PortRouter::PortRouter(std::uint64_t node_id, RegionStore& regions, IpcLimits limits,
                       RandomSource random)
    : state_(std::make_unique<State>(node_id, regions, limits,
                                     random ? random : RandomSource(DeviceRandom))) {}
PortRouter::~PortRouter() = default;

void PortRouter::JobAttached(const std::string& job, std::optional<std::uint32_t> uid) {
  auto& state = state_->jobs[job];
  if (uid) state.uid = uid;
}

void PortRouter::JobReattached(const std::string& job, std::optional<std::uint32_t> uid,
                               std::uint32_t first_name) {
  if (state_->jobs.contains(job)) JobGone(job);
  auto& state = state_->jobs[job];
  state.uid = uid;
  state.next_name = first_name == 0 ? 1 : first_name;
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
  state_->restored_moves.erase(job);
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

void PortRouter::NodeUnreachable(std::uint64_t node) {
  for (auto& [serial, port] : state_->ports) {
    std::deque<Waiter> gone;
    for (auto w = port.waiters.begin(); w != port.waiters.end();) {
      if (w->node != node) {
        ++w;
        continue;
      }
      gone.push_back(std::move(*w));
      w = port.waiters.erase(w);
    }
    for (const Waiter& waiter : gone) {
      state_->CancelTimer(waiter.timer);
      state_->AnswerWaiter(waiter, Envelope{.status = JobStatus::kUnavailable,
                                            .text = "the link to the receiver's node broke "
                                                    "while it waited (nothing was taken)"});
    }
  }
  state_->Drain();
}

void PortRouter::PeerRestarted(std::uint64_t node, const std::vector<std::string_view>& pending) {
  NodeUnreachable(node);
  std::set<std::uint64_t> asked;  // receives whose request the new agent has yet to run
  for (std::string_view frame : pending) {
    if (frame.size() < kSequenceTrailerBytes) continue;
    frame.remove_suffix(kSequenceTrailerBytes);
    auto e = router::DecodeEnvelope(std::make_shared<const std::string>(frame));
    if (e && e->kind == Remote::kReceiveWait) asked.insert(e->ticket);
  }
  std::vector<std::uint64_t> receives;
  for (const auto& [id, ticket] : state_->tickets) {
    if (ticket.node == node && ticket.kind == TicketKind::kReceive && !asked.contains(id)) {
      receives.push_back(id);
    }
  }
  for (std::uint64_t id : receives) {
    Envelope failure{.kind = Remote::kReceiveResult,
                     .ticket = id,
                     .origin = node,
                     .status = JobStatus::kUnavailable,
                     .text =
                         "the link to the port's node broke while the receive waited there "
                         "(nothing was taken)"};
    state_->HandleResult(failure, node);
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
    case TimerKind::kForgetEarlyResults: {
      auto kept = state_->early_results.find(info.job);
      if (kept != state_->early_results.end() && kept->second.forget_timer == id) {
        state_->ForgetEarlyResults(info.job);
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

std::optional<ObjectId> PortRouter::LinkEndOf(const std::string& job, std::uint32_t name) const {
  return RightTarget(state_->jobs, job, name, RightType::kLinkEnd);
}

std::optional<ObjectId> PortRouter::LinkPeerOf(const std::string& job, std::uint32_t name) const {
  const auto end = LinkEndOf(job, name);
  if (!end) return std::nullopt;
  if (end->home == state_->self) {
    auto it = state_->links.find(end->serial);
    if (it == state_->links.end()) return std::nullopt;
    return it->second->ends[0] == *end ? it->second->ends[1] : it->second->ends[0];
  }
  return ObjectId{end->home, end->serial ^ 1};
}

std::optional<PortRouter::LinkHolderView> PortRouter::LinkHolderOf(ObjectId end) const {
  if (end.home != state_->self) return std::nullopt;
  auto it = state_->links.find(end.serial);
  if (it == state_->links.end() || it->second->broken) return std::nullopt;
  const Link& link = *it->second;
  const int i = link.ends[0] == end ? 0 : 1;
  return LinkHolderView{link.holder[i].node, link.holder[i].job, link.ends[1 - i]};
}

}  // namespace tern::ipc
