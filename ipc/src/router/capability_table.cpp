// PortRouter, capability_table.cpp
// Capability tables: each job's names for rights, and rights carried in messages (checked on the
// way out, installed on the way in).
#include "state.hpp"

namespace tern::ipc {

Entry* PortRouter::State::Find(JobState& job, std::uint32_t name) {
  auto it = job.names.find(name);
  return it == job.names.end() ? nullptr : &it->second;
}

std::uint32_t PortRouter::State::Insert(JobState& job, RightType type, ObjectId id,
                                        std::uint32_t refs) {
  if (type == RightType::kSend || type == RightType::kRegion) {
    auto merged = job.merged.find({type, id});
    if (merged != job.merged.end()) {
      job.names[merged->second].refs += refs;
      return merged->second;
    }
  }
  // A job that re-attached holds names it asked for (InsertAt) among the new ones: never reused.
  std::uint32_t name = job.next_name++;
  while (name == 0 || job.names.contains(name)) name = job.next_name++;
  job.names[name] = Entry{type, id, refs};
  if (type == RightType::kSend || type == RightType::kRegion) job.merged[{type, id}] = name;
  return name;
}

void router::WriteTableEntry(WireWriter& out, std::uint32_t name, const Entry& entry) {
  out.U32(name);
  out.U8(static_cast<std::uint8_t>(entry.type));
  router::WriteId(out, entry.id);
  out.U32(entry.refs);
}

bool router::ReadTableEntry(WireReader& in, JobState& job,
                            std::initializer_list<RightType> allowed) {
  auto name = in.U32();
  auto type = in.U8();
  auto id = router::ReadId(in);
  auto refs = in.U32();
  if (!name || !type || !id || !refs || *name == 0 || *refs == 0 || job.names.contains(*name)) {
    return false;
  }
  const auto right = static_cast<RightType>(*type);
  if (std::find(allowed.begin(), allowed.end(), right) == allowed.end()) return false;
  if (right == RightType::kSend || right == RightType::kRegion) {
    if (!job.merged.emplace(std::pair{right, *id}, *name).second) return false;
  }
  job.names[*name] = Entry{right, *id, *refs};
  return true;
}

std::uint32_t PortRouter::State::InsertAt(JobState& job, RightType type, ObjectId id,
                                          std::uint32_t wanted) {
  const bool merges = type == RightType::kSend || type == RightType::kRegion;
  if (wanted == 0 || job.names.contains(wanted) || (merges && job.merged.contains({type, id}))) {
    return Insert(job, type, id);
  }
  job.names[wanted] = Entry{type, id, 1};
  if (merges) job.merged[{type, id}] = wanted;
  return wanted;
}

// Drops `refs` references of a name (all of a non-counted right); no home bookkeeping.
void PortRouter::State::Drop(JobState& job, std::uint32_t name, std::uint32_t refs) {
  auto it = job.names.find(name);
  if (it == job.names.end()) return;
  Entry& entry = it->second;
  if ((entry.type == RightType::kSend || entry.type == RightType::kRegion) && entry.refs > refs) {
    entry.refs -= refs;
    return;
  }
  job.merged.erase({entry.type, entry.id});
  job.names.erase(it);
}

// Releases a right a job no longer holds, at its home.
void PortRouter::State::ReleaseRight(RightType type, ObjectId id, std::uint32_t refs,
                                     const std::string& job) {
  switch (type) {
    case RightType::kSend:
      Post(id.home, Envelope{.kind = Remote::kRefDelta,
                             .job = job,
                             .object = id,
                             .delta = -static_cast<std::int64_t>(refs)});
      break;
    case RightType::kRegion:
      Post(id.home, Envelope{.kind = Remote::kRefDelta,
                             .job = job,
                             .object = id,
                             .a = 1,
                             .delta = -static_cast<std::int64_t>(refs)});
      break;
    case RightType::kReceive:
      Post(id.home, Envelope{.kind = Remote::kDestroyPort, .job = job, .object = id});
      break;
    case RightType::kLinkEnd:
      Post(id.home, Envelope{.kind = Remote::kBreakLinkEnd, .job = job, .object = id});
      break;
    default:
      break;
  }
}

void PortRouter::State::ReleaseTransit(const TransitMessage& message) {
  if (message.reply.type != RightType::kNone)
    ReleaseRight(message.reply.type, message.reply.id, 1, "");
  for (const TransitItem& item : message.items) {
    if (item.right.type != RightType::kNone) ReleaseRight(item.right.type, item.right.id, 1, "");
  }
}

// A right named in a message: checks it and builds its transit form plus the bookkeeping.
JobStatus PortRouter::State::CarryRight(const std::string& job_name, JobState& job,
                                        std::uint32_t name, Disposition disposition,
                                        JobState::PendingSend& send,
                                        std::map<std::uint32_t, std::uint32_t>& moved,
                                        TransitRight& out, std::string& error) {
  Entry* entry = Find(job, name);
  if (!entry) {
    error = "name " + std::to_string(name) + " is not a right of this job";
    return JobStatus::kInvalidName;
  }
  if (entry->type == RightType::kDeadName) {
    error = "name " + std::to_string(name) + " is a dead name";
    return JobStatus::kDeadName;
  }
  const ObjectId id = entry->id;
  const auto wrong = [&](std::string_view what) {
    error = "name " + std::to_string(name) + " is not " + std::string(what);
    return JobStatus::kInvalidName;
  };
  const auto needs_once = [&]() {
    // A right that moves whole may appear only once in a message.
    return ++moved[name] == 1;
  };
  // A right with one holder (receive right, link end) moves: its home marks it in transit
  // before the message leaves, and gives it back to the sender if the send fails.
  const auto move_held = [&](RightType type, Remote set_holder) {
    if (!needs_once()) return wrong("movable twice");
    out = {type, id};
    send.preops.emplace_back(id.home,
                             Envelope{.kind = set_holder, .job = job_name, .object = id, .a = 1});
    send.on_success.push_back([this, job_name, name] { DropIfHeld(job_name, name); });
    send.on_failure.push_back([this, job_name, id, set_holder] {
      Post(id.home, Envelope{.kind = set_holder, .job = job_name, .object = id});
    });
    return JobStatus::kOk;
  };
  switch (disposition) {
    case Disposition::kMoveReceive:
      if (entry->type != RightType::kReceive) return wrong("a receive right");
      return move_held(RightType::kReceive, Remote::kSetHolder);
    case Disposition::kMoveSend:
      if (entry->type != RightType::kSend) return wrong("a send right");
      if (++moved[name] > entry->refs) return wrong("holding that many send references");
      out = {RightType::kSend, id};
      send.on_success.push_back([this, job_name, name] { DropIfHeld(job_name, name); });
      return JobStatus::kOk;
    case Disposition::kCopySend:
    case Disposition::kMakeSend:
      if (disposition == Disposition::kCopySend && entry->type != RightType::kSend) {
        return wrong("a send right");
      }
      if (disposition == Disposition::kMakeSend && entry->type != RightType::kReceive) {
        return wrong("a receive right");
      }
      out = {RightType::kSend, id};
      send.preops.emplace_back(
          id.home, Envelope{.kind = Remote::kRefDelta, .job = job_name, .object = id, .delta = 1});
      send.on_failure.push_back([this, id] {
        Post(id.home, Envelope{.kind = Remote::kRefDelta, .object = id, .delta = -1});
      });
      return JobStatus::kOk;
    case Disposition::kMoveSendOnce:
      if (entry->type != RightType::kSendOnce) return wrong("a send-once right");
      if (!needs_once()) return wrong("movable twice");
      out = {RightType::kSendOnce, id};
      send.on_success.push_back([this, job_name, name] { DropIfHeld(job_name, name); });
      return JobStatus::kOk;
    case Disposition::kMakeSendOnce:
      if (entry->type != RightType::kReceive) return wrong("a receive right");
      out = {RightType::kSendOnce, id};
      return JobStatus::kOk;
    case Disposition::kMoveLinkEnd:
      if (entry->type != RightType::kLinkEnd) return wrong("a link end");
      return move_held(RightType::kLinkEnd, Remote::kSetLinkHolder);
    case Disposition::kCopyRegion:
    case Disposition::kMoveRegion:
      if (entry->type != RightType::kRegion) return wrong("a region");
      out = {RightType::kRegion, id};
      if (disposition == Disposition::kMoveRegion) {
        if (++moved[name] > entry->refs) return wrong("holding that many region references");
        send.on_success.push_back([this, job_name, name] { DropIfHeld(job_name, name); });
      } else {
        send.preops.emplace_back(
            id.home,
            Envelope{.kind = Remote::kRefDelta, .job = job_name, .object = id, .a = 1, .delta = 1});
        send.on_failure.push_back([this, id] {
          Post(id.home, Envelope{.kind = Remote::kRefDelta, .object = id, .a = 1, .delta = -1});
        });
      }
      return JobStatus::kOk;
    default:
      error = "bad disposition " + std::to_string(static_cast<int>(disposition));
      return JobStatus::kBadRequest;
  }
}

void PortRouter::State::DropIfHeld(const std::string& job_name, std::uint32_t name) {
  auto job = jobs.find(job_name);
  if (job != jobs.end()) Drop(job->second, name);
}

void PortRouter::State::MarkDead(JobState& job, ObjectId port) {
  auto merged = job.merged.find({RightType::kSend, port});
  if (merged == job.merged.end()) return;
  const std::uint32_t name = merged->second;
  job.merged.erase(merged);
  job.names[name].type = RightType::kDeadName;
}

// Puts the rights of a received message into the receiver's table: the job's view of it.
Message PortRouter::State::Convert(JobState& job, const std::string& job_name,
                                   TransitMessage& transit, std::uint32_t receive_name,
                                   const std::map<std::size_t, ObjectId>& copied) {
  Message message;
  message.destination = receive_name;
  message.id = transit.id;
  const auto take = [&](const TransitRight& right) -> std::pair<std::uint32_t, Disposition> {
    switch (right.type) {
      case RightType::kReceive:
        Post(right.id.home,
             Envelope{.kind = Remote::kSetHolder, .job = job_name, .object = right.id});
        return {Insert(job, RightType::kReceive, right.id), Disposition::kMoveReceive};
      case RightType::kSend:
        return {Insert(job, RightType::kSend, right.id), Disposition::kMoveSend};
      case RightType::kSendOnce:
        return {Insert(job, RightType::kSendOnce, right.id), Disposition::kMoveSendOnce};
      case RightType::kLinkEnd:
        Post(right.id.home,
             Envelope{.kind = Remote::kSetLinkHolder, .job = job_name, .object = right.id});
        return {Insert(job, RightType::kLinkEnd, right.id), Disposition::kMoveLinkEnd};
      case RightType::kRegion:
        return {Insert(job, RightType::kRegion, right.id), Disposition::kMoveRegion};
      default:
        return {0, Disposition::kNone};
    }
  };
  if (transit.reply.type != RightType::kNone) {
    std::tie(message.reply, message.reply_disposition) = take(transit.reply);
  }
  for (std::size_t i = 0; i < transit.items.size(); ++i) {
    TransitItem& item = transit.items[i];
    if (item.kind == ItemKind::kBytes || item.kind == ItemKind::kOutOfLine) {
      message.items.push_back(Item::Shared(item.kind, item.owner, item.bytes));
      continue;
    }
    if (item.right.type == RightType::kRegion && item.right.id.home != self) {
      auto copy = copied.find(i);
      if (copy == copied.end()) continue;  // the copy failed: the item is dropped
      item.right.id = copy->second;
    }
    auto [name, disposition] = take(item.right);
    Item out;
    out.kind = item.kind;
    out.name = name;
    out.disposition = disposition;
    message.items.push_back(std::move(out));
  }
  return message;
}

}  // namespace tern::ipc
