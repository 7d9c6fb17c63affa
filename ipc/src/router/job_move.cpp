// PortRouter, job_move.cpp
// A job that moves to another node: its export and import, and the homes that learn where it lives
// now (the proxying state of a moved job: late answers are forwarded).
#include "state.hpp"

namespace tern::ipc {

void PortRouter::State::RememberMove(const std::string& job, std::uint64_t node) {
  ForgetMove(job);
  moved_jobs[job] = MovedJob{
      node, NewTimer(TimerInfo{.kind = TimerKind::kForgetMove, .job = job}, kRememberMoveMs)};
}

void PortRouter::State::ForgetMove(const std::string& job) {
  auto it = moved_jobs.find(job);
  if (it == moved_jobs.end()) return;
  CancelTimer(it->second.forget_timer);
  moved_jobs.erase(it);
}

// The objects homed here that `job` holds, and its operations waiting here, now answer to
// `node`. Forwarding from the old node covers answers sent before this arrived.
void PortRouter::State::JobMovedHere(const std::string& job, std::uint64_t node) {
  if (node != self) {
    // It may have come back through here before; whatever was forwarded is stale now.
    if (!jobs.contains(job)) RememberMove(job, node);
  }
  for (auto& [serial, port] : ports) {
    if (port.holder.receiving() && port.holder.job == job) port.holder.node = node;
    for (Waiter& waiter : port.waiters) {
      if (waiter.job == job) waiter.node = node;
    }
  }
  for (auto& [serial, link] : links) {
    if (link->ends[0].serial != serial) continue;  // each link once
    for (int i = 0; i < 2; ++i) {
      if (link->holder[i].receiving() && link->holder[i].job == job) link->holder[i].node = node;
      for (auto* list : {&link->sends[i], &link->receives[i]}) {
        for (LinkOp& op : *list) {
          if (op.job == job) op.node = node;
        }
      }
      for (HeldOffer& held : link->held[i]) {
        if (held.op.job == job) held.op.node = node;
      }
    }
  }
}

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
  for (const auto& [name, entry] : job.names) router::WriteTableEntry(out, name, entry);
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
  std::vector<std::pair<std::string, ObjectId>> registered;
  for (const auto& [text, entry] : s.names) {
    if (entry.second == job_name) registered.emplace_back(text, entry.first);
  }
  out.U32(static_cast<std::uint32_t>(registered.size()));
  for (const auto& [text, port] : registered) {
    out.Bytes(text);
    WriteId(out, port);
  }

  for (const auto& [text, port] : registered) s.names.erase(text);
  if (s.durable) {
    State::UnsettledExport& kept = s.unsettled_exports[job_name] = {};
    kept.table.uid = job.uid;
    kept.table.next_name = job.next_name;
    kept.table.names = job.names;
    kept.registered = std::move(registered);
    kept.moved.to = to;
    for (std::uint64_t id : waiting) kept.moved.receives.emplace_back(id, s.tickets.at(id).node);
  }
  s.restored_moves.erase(job_name);  // this export's record stands
  // The job is gone from here without releasing anything: its rights travel.
  for (const auto& [handle, op] : job.ops) s.CancelTimer(op.wait_timer);
  for (std::uint64_t id : waiting) {
    s.tickets.erase(id);
    s.forwarded_tickets[id] = to;
  }
  s.jobs.erase(job_it);
  s.RememberMove(job_name, to);
  return {ExportOutcome::kExported, out.Take()};
}

void PortRouter::SettleExport(const std::string& job) { state_->unsettled_exports.erase(job); }

void PortRouter::ForgetMovedJob(const std::string& job_name) {
  auto& s = *state_;
  s.unsettled_exports.erase(job_name);
  if (auto moved = s.restored_moves.find(job_name); moved != s.restored_moves.end()) {
    const MovedReceives away = std::move(moved->second);
    s.restored_moves.erase(moved);
    s.RememberMove(job_name, away.to);
    for (const auto& [ticket, home] : away.receives) {
      if (home != s.self) continue;  // forwarded since the restore
      // Its waiter died with the old agent, which had taken nothing for it (a message handed
      // to it was forwarded and is in the journal, sent again ahead of this).
      s.Post(away.to, Envelope{.kind = Remote::kReceiveResult,
                               .ticket = ticket,
                               .job = job_name,
                               .status = JobStatus::kUnavailable,
                               .text = "the agent of the port's node restarted while the "
                                       "receive waited there (nothing was taken)"});
    }
  }
  auto job_it = s.jobs.find(job_name);
  if (job_it == s.jobs.end()) return;
  for (const auto& [handle, op] : job_it->second.ops) s.CancelTimer(op.wait_timer);
  std::erase_if(s.tickets, [&](const auto& entry) { return entry.second.job == job_name; });
  std::erase_if(s.names, [&](const auto& entry) { return entry.second.second == job_name; });
  s.jobs.erase(job_it);
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
      // A peer's table is refused whole where it arrives, not later: the journal's restore
      // refuses what the router's table would then hold.
      if (!router::ReadTableEntry(
              in, job,
              {RightType::kReceive, RightType::kSend, RightType::kSendOnce, RightType::kDeadName,
               RightType::kLinkEnd, RightType::kRegion})) {
        return malformed();
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
  s.unsettled_exports.erase(job_name);  // it came back: its table is here again
  s.restored_moves.erase(job_name);
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
  // Results that came before the hand-off (State::early_results) go to their tickets now; one
  // for no ticket of the job's is released.
  for (Envelope& e : s.TakeEarlyResults(job_name)) {
    if (s.tickets.contains(e.ticket)) {
      s.HandleResult(e, e.origin);
    } else if (e.message) {
      s.ReleaseTransit(*e.message);
    }
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
