// PortRouter, outbox.cpp
// The router's outbox: frames to nodes (with results deferred to ride on the next one), replies to
// jobs, and the local queue of envelopes for objects homed here.
#include "state.hpp"

namespace tern::ipc {

void PortRouter::State::Post(std::uint64_t node, Envelope e) {
  e.origin = e.origin ? e.origin : self;
  if (node == self) {
    local.push_back(std::move(e));
  } else {
    Emit(node, e);
  }
}

// Every frame to another node leaves here, behind the results deferred for that node: they
// go in the same write (PeerLink writes one turn's frames together).
void PortRouter::State::Emit(std::uint64_t node, const Envelope& e) {
  FlushDeferred(node);
  actions.frames.push_back({node, router::EncodeEnvelope(e)});
}

void PortRouter::State::FlushDeferred(std::uint64_t node) {
  auto it = deferred.find(node);
  if (it == deferred.end()) return;
  for (auto& frame : it->second.frames) actions.frames.push_back({node, std::move(frame)});
  it->second.frames.clear();
}

// The answer to `request`, at the node that asked. An "ok" the asker can wait for (a send
// marked kEnqueueLazyResult) rides on the next frame to that node, or leaves on its timer.
void PortRouter::State::Respond(const Envelope& request, Envelope result) {
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
void PortRouter::State::SendResult(std::uint64_t node, Envelope result) {
  if (node == self) {
    local.push_back(std::move(result));
  } else {
    Emit(node, result);
  }
}

void PortRouter::State::Drain() {
  while (!local.empty()) {
    Envelope e = std::move(local.front());
    local.pop_front();
    Dispatch(e, self);
  }
}

void PortRouter::State::Reply(const std::string& job, std::uint32_t request, JobStatus status,
                              std::string_view body) {
  if (!jobs.contains(job)) return;
  actions.replies.push_back({job, EncodeJobReply(request, status, body), std::nullopt});
}

// A reply whose body is `out`: what it shares is written in place by the agent.
void PortRouter::State::Reply(const std::string& job, std::uint32_t request, WireWriter& out) {
  if (!jobs.contains(job)) return;
  PortRouter::JobReplyAction reply{job, EncodeJobReply(request, JobStatus::kOk, out.out()),
                                   std::nullopt, std::move(out.shared())};
  for (SharedSpan& span : reply.shared) span.at += kJobReplyHeaderSize;
  actions.replies.push_back(std::move(reply));
}

void PortRouter::State::Error(const std::string& job, std::uint32_t request, JobStatus status,
                              std::string message) {
  Reply(job, request, status, message);
}

ObjectId PortRouter::State::NewObject() { return ObjectId{self, next_serial++}; }

}  // namespace tern::ipc
