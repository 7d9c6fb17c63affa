// PortRouter, durable.cpp
// The state a restarted agent restores (docs/ipc.md "Port homes that survive their agent"): one
// journal holding the queues' messages in and out and, after each turn that changed them, a
// snapshot of the ports, links and names homed here and the jobs' capability tables (the last
// one stands). A rewrite starts the journal with a snapshot and a push per queued message.
//
// Records (big-endian, WireWriter's encoding; an id is [u64 home][u64 serial]):
// [u8 3][snapshot], where a snapshot is
//   [u8 version = 3 (1 and 2 are read too)][u64 node][u64 next_serial]
//   [u32 n] n x port: [u64 serial][u8 state][u64 node][bytes job][u32 limit][u64 send_refs]
//                     [u32 k] k x [id notify][u32 name]            dead-name requests
//                     [u8 has][id notify][u32 name]                no-senders request
//                     [u8 has][id notify]                          port-destroyed request
//                     [u32 k] k x [id notify][u32 name]            send-possible requests
//   [u32 n] n x link: [id end 0][id end 1] 2 x ([u8 state][u64 node][bytes job][u8 released])
//                     [u8 broken]
//                     2 x direction (version 2 on; offers sent on end 0, then on end 1):
//                       [u8 mode: 0 home, 1 direct][u64 epoch (0 when home)]
//                       [u8 has settle][u64 epoch][u32 matched_through]
//                       [u32 k] k x [u32 cancelled seq]                the last settle
//   [u32 n] n x name: [bytes text][id port][bytes registrant]
//   [u32 n] n x job:  [bytes job][u8 has uid][u32 uid][u32 names from]
//                     [u32 k] k x [u32 name][u8 type][id][u32 refs]
//   [u32 n] n x move (version 3 on; an export not settled, or restored and not yet forgotten):
//                     [bytes job][u64 to][u32 k] k x [u64 ticket][u64 home]   waiting receives
// [u8 1][envelope] a message (or a train's run) pushed at a queue's back,
// the envelope as between nodes (kEnqueue or kEnqueueBatch; object: the port; origin and job:
// the sender charged for it, empty for a notification); [u8 2][u64 serial][u32 count] that
// many messages taken off the port's front; [u8 4][u64 node][u64 epoch][u64 seq] the last
// sequenced frame from that peer handled (docs/ipc.md "Sends that wait for their home"), after
// the turn's other records (the last one per peer stands); [u8 5][u64 node][u64 epoch][u64 seq]
// [payload] a numbered frame sent to that peer (the payload as on the wire); [u8 6][u64 node]
// [u64 epoch][u64 seq] that peer acknowledged every frame of that epoch up to seq; [u8 7]
// [envelope] a result kept for a job whose hand-off is not installed yet (State::early_results;
// the envelope as between nodes, its job named); [u8 8][bytes job] that job's kept results were
// taken or released.
#include <algorithm>
#include <tern/ipc/state_journal.hpp>

#include "state.hpp"

namespace tern::ipc {

namespace {

// Version 2 added each link direction's mode and last settle (docs/ipc.md "Link operations
// direct"); a version 1 snapshot is still read (every direction at home, no settle). Version 3
// added the moves not settled (State::restored_moves); an older one restores none.
constexpr std::uint8_t kSnapshotVersion = 3;
constexpr std::uint8_t kSnapshotVersionBeforeMoves = 2;
constexpr std::uint8_t kSnapshotVersionBeforeDirectLinks = 1;
// The most waiting receives a move in a snapshot may list: a file saying more is a junk file's.
constexpr std::uint32_t kMaxMovedReceives = 1'000'000;
// The most cancelled seqs a settle in a snapshot may list: a file saying more is a junk file's.
constexpr std::uint32_t kMaxSettleCancelled = 1'000'000;
constexpr std::uint8_t kPush = 1;
constexpr std::uint8_t kPop = 2;
constexpr std::uint8_t kSnapshot = 3;
constexpr std::uint8_t kPeerDelivered = 4;
constexpr std::uint8_t kSent = 5;
constexpr std::uint8_t kAcked = 6;
constexpr std::uint8_t kEarlyResult = 7;
constexpr std::uint8_t kEarlyResultsGone = 8;
// The journal is rewritten from the queues once it is this large and twice what that rewrite
// wrote last: appending stays the common case, and the file stays within a few times the
// bytes queued.
constexpr std::uint64_t kCompactAtLeast = std::uint64_t{64} << 20;

using router::ReadId;
using router::WriteId;

// What a snapshot keeps of a job's next name: the next multiple of 2^16 above it, so that the
// snapshot changes once per 65536 names, not with every name (a call's reply right is one), and
// a restored job is never given a name it held before the kill.
std::uint32_t NamesFrom(std::uint32_t next_name) {
  return next_name >= 0xffff0000u ? next_name : (next_name | 0xffffu) + 1;
}

// Whether a job's right is in the snapshot. A region's memory is the agent's (a memfd): it does
// not outlive the agent. A send-once right is a request's reply being served: a call in flight,
// which the agent's death fails anyway, and keeping it would change the snapshot twice per call.
bool Kept(const Entry& entry) {
  return entry.type != RightType::kRegion && entry.type != RightType::kSendOnce;
}

void WriteHolder(WireWriter& out, const Holder& holder) {
  out.U8(static_cast<std::uint8_t>(holder.state));
  out.U64(holder.node);
  out.Bytes(holder.job);
}

std::optional<Holder> ReadHolder(WireReader& in) {
  auto state = in.U8();
  auto node = in.U64();
  auto job = in.Bytes();
  if (!job || *state > static_cast<std::uint8_t>(PortState::kReceiving)) return std::nullopt;
  if (*state == static_cast<std::uint8_t>(PortState::kReceiving)) {
    return Holder::Receiving(*node, std::move(*job));
  }
  return Holder::InTransit();
}

// One direction of a link: how it is matched, and the last settle of its direct epochs.
void WriteDirection(WireWriter& out, const Link& link, int d) {
  out.U8(static_cast<std::uint8_t>(link.mode[d]));
  out.U64(link.epoch[d]);
  const auto& settle = link.last_settle[d];
  out.U8(settle ? 1 : 0);
  out.U64(settle ? settle->epoch : 0);
  out.U32(settle ? settle->matched_through : 0);
  out.U32(settle ? static_cast<std::uint32_t>(settle->cancelled.size()) : 0);
  if (settle) {
    for (std::uint32_t seq : settle->cancelled) out.U32(seq);
  }
}

// False for a direction no router writes: an unknown mode, a direct one without an epoch (or a
// home one with one), a settle of epoch 0, a cancelled list over the bound or past the record.
bool ReadDirection(WireReader& in, Link& link, int d) {
  auto mode = in.U8();
  auto epoch = in.U64();
  auto has_settle = in.U8();
  auto settle_epoch = in.U64();
  auto matched_through = in.U32();
  auto count = in.U32();
  if (!count || *mode > static_cast<std::uint8_t>(LinkMode::kDirect) || *has_settle > 1 ||
      *count > kMaxSettleCancelled || *count > in.remaining() / 4) {
    return false;
  }
  link.mode[d] = static_cast<LinkMode>(*mode);
  if ((link.mode[d] == LinkMode::kDirect) != (*epoch != 0)) return false;
  link.epoch[d] = *epoch;
  if (*has_settle == 0) return *settle_epoch == 0 && *matched_through == 0 && *count == 0;
  if (*settle_epoch == 0) return false;
  LinkSettle settle{.epoch = *settle_epoch, .matched_through = *matched_through};
  for (std::uint32_t k = 0; k < *count; ++k) settle.cancelled.insert(*in.U32());
  if (settle.cancelled.size() != *count) return false;  // each seq once, as written
  link.last_settle[d] = std::move(settle);
  return true;
}

// A journal record's pieces: its header and its payload, kept apart so that a large message
// is not copied once more to join them.
void AddRecord(std::vector<std::string>& pieces, std::string payload) {
  pieces.push_back(StateRecordHeader(payload));
  pieces.push_back(std::move(payload));
}

std::string PushPayload(ObjectId port, const Queued& item, const Sender& sender) {
  Envelope e{.origin = sender.first, .job = sender.second, .object = port};
  if (const auto* message = std::get_if<TransitMessage>(&item)) {
    e.kind = Remote::kEnqueue;
    e.message = *message;
  } else {
    e.kind = Remote::kEnqueueBatch;
    e.batch = std::get<TrainRun>(item);
  }
  std::string payload(1, static_cast<char>(kPush));
  payload.append(router::EncodeEnvelope(e));
  return payload;
}

std::string TagRecord(std::uint8_t kind, std::uint64_t node, SequenceTag tag) {
  WireWriter out;
  out.U8(kind);
  out.U64(node);
  out.U64(tag.epoch);
  out.U64(tag.seq);
  return out.Take();
}

std::string EarlyResultPayload(const Envelope& e) {
  return std::string(1, static_cast<char>(kEarlyResult)) + router::EncodeEnvelope(e);
}

std::string PeerDeliveredPayload(std::uint64_t node, SequenceTag tag) {
  return TagRecord(kPeerDelivered, node, tag);
}

std::string SentPayload(std::uint64_t node, SequenceTag tag, std::string_view frame) {
  std::string payload = TagRecord(kSent, node, tag);
  payload.append(frame);
  return payload;
}

}  // namespace

void PortRouter::PeerDelivered(std::uint64_t node, SequenceTag tag) {
  state_->peer_delivered[node] = tag;
  if (state_->durable) state_->peer_delivered_changed.insert(node);
}

std::map<std::uint64_t, SequenceTag> PortRouter::PeerDeliveries() const {
  return state_->peer_delivered;
}

void PortRouter::JournalSent(std::uint64_t node, SequenceTag tag,
                             std::shared_ptr<const std::string> payload) {
  auto& s = *state_;
  if (!s.durable) return;
  if (!s.rewrite_journal) {
    std::string record = SentPayload(node, tag, *payload);
    s.journal_bytes += record.size() + 8;
    AddRecord(s.journal, std::move(record));
  }
  s.unacked_sent[node].push_back({tag, std::move(payload)});
}

void PortRouter::JournalAcked(std::uint64_t node, SequenceTag tag) {
  auto& s = *state_;
  auto found = s.unacked_sent.find(node);
  if (!s.durable || found == s.unacked_sent.end()) return;
  auto& list = found->second;
  const std::size_t before = list.size();
  while (!list.empty() && list.front().tag.epoch == tag.epoch && list.front().tag.seq <= tag.seq) {
    list.pop_front();
  }
  if (list.size() == before) return;
  if (list.empty()) s.unacked_sent.erase(found);
  if (s.rewrite_journal) return;
  std::string record = TagRecord(kAcked, node, tag);
  s.journal_bytes += record.size() + 8;
  AddRecord(s.journal, std::move(record));
}

void PortRouter::State::JournalPush(ObjectId port, const Queued& item, const Sender& sender) {
  if (!durable || rewrite_journal) return;
  std::string payload = PushPayload(port, item, sender);
  journal_bytes += payload.size() + 8;
  AddRecord(journal, std::move(payload));
}

void PortRouter::State::JournalPop(std::uint64_t serial, std::uint32_t count) {
  if (!durable || rewrite_journal || count == 0) return;
  WireWriter out;
  out.U8(kPop);
  out.U64(serial);
  out.U32(count);
  journal_bytes += out.out().size() + 8;
  AddRecord(journal, out.Take());
}

void PortRouter::State::JournalEarlyResult(const Envelope& e) {
  if (durable) AddRecord(journal, EarlyResultPayload(e));
}

void PortRouter::State::JournalEarlyResultsGone(const std::string& job) {
  if (!durable) return;
  WireWriter out;
  out.U8(kEarlyResultsGone);
  out.Bytes(job);
  AddRecord(journal, out.Take());
}

std::vector<std::string> PortRouter::State::QueuesJournal() const {
  std::vector<std::string> pieces{std::string(kJournalMagic)};
  AddRecord(pieces, std::string(1, static_cast<char>(kSnapshot)) + EncodeSnapshot());
  for (const auto& [serial, port] : ports) {
    for (const QueuedEntry& entry : port.queue) {
      AddRecord(pieces, PushPayload(ObjectId{self, serial}, entry.item, entry.sender));
    }
  }
  for (const auto& [node, tag] : peer_delivered) {
    AddRecord(pieces, PeerDeliveredPayload(node, tag));
  }
  for (const auto& [node, list] : unacked_sent) {
    for (const auto& sent : list) AddRecord(pieces, SentPayload(node, sent.tag, *sent.payload));
  }
  for (const auto& [job, kept] : early_results) {
    for (const Envelope& e : kept.results) AddRecord(pieces, EarlyResultPayload(e));
  }
  return pieces;
}

std::string PortRouter::State::EncodeSnapshot() const {
  WireWriter out;
  out.U8(kSnapshotVersion);
  out.U64(self);
  out.U64(next_serial);
  out.U32(static_cast<std::uint32_t>(ports.size()));
  for (const auto& [serial, port] : ports) {
    out.U64(serial);
    WriteHolder(out, port.holder);
    out.U32(port.limit);
    out.U64(static_cast<std::uint64_t>(port.send_refs));
    out.U32(static_cast<std::uint32_t>(port.dead_name.size()));
    for (const DeadNameRequest& request : port.dead_name) {
      WriteId(out, request.notify);
      out.U32(request.name);
    }
    out.U8(port.no_senders ? 1 : 0);
    WriteId(out, port.no_senders ? port.no_senders->first : ObjectId{});
    out.U32(port.no_senders ? port.no_senders->second : 0);
    out.U8(port.port_destroyed ? 1 : 0);
    WriteId(out, port.port_destroyed.value_or(ObjectId{}));
    out.U32(static_cast<std::uint32_t>(port.space_notify.size()));
    for (const auto& [notify, name] : port.space_notify) {
      WriteId(out, notify);
      out.U32(name);
    }
  }
  std::uint32_t link_count = 0;
  for (const auto& [serial, link] : links) link_count += link->ends[0].serial == serial ? 1 : 0;
  out.U32(link_count);
  for (const auto& [serial, link] : links) {
    if (link->ends[0].serial != serial) continue;  // each link once
    WriteId(out, link->ends[0]);
    WriteId(out, link->ends[1]);
    for (int i = 0; i < 2; ++i) {
      WriteHolder(out, link->holder[i]);
      out.U8(link->released[i] ? 1 : 0);
    }
    out.U8(link->broken ? 1 : 0);
    for (int d = 0; d < 2; ++d) WriteDirection(out, *link, d);
  }
  // Exported jobs not settled yet are written as if still here (UnsettledExport), after the
  // router's own; a name or job the router has (again) is its own. No copies: this runs after
  // every turn, and while nothing is unsettled both lists stay empty.
  struct KeptName {
    const std::string* text;
    ObjectId port;
    const std::string* job;
  };
  std::vector<KeptName> kept_names;
  std::vector<std::pair<const std::string*, const JobState*>> kept_jobs;
  for (const auto& [name, kept] : unsettled_exports) {
    if (!jobs.contains(name)) kept_jobs.emplace_back(&name, &kept.table);
    for (const auto& entry : kept.registered) {
      const std::string& text = entry.first;
      const bool written =
          names.contains(text) || std::any_of(kept_names.begin(), kept_names.end(),
                                              [&](const KeptName& k) { return *k.text == text; });
      if (!written) kept_names.push_back({&text, entry.second, &name});
    }
  }
  const auto write_name = [&out](const std::string& text, ObjectId port, const std::string& job) {
    out.Bytes(text);
    WriteId(out, port);
    out.Bytes(job);
  };
  out.U32(static_cast<std::uint32_t>(names.size() + kept_names.size()));
  for (const auto& [text, entry] : names) write_name(text, entry.first, entry.second);
  for (const KeptName& kept : kept_names) write_name(*kept.text, kept.port, *kept.job);
  const auto write_job = [&out](const std::string& name, const JobState& job) {
    out.Bytes(name);
    out.U8(job.uid ? 1 : 0);
    out.U32(job.uid.value_or(0));
    out.U32(NamesFrom(job.next_name));
    std::uint32_t kept = 0;
    for (const auto& [handle, entry] : job.names) kept += Kept(entry) ? 1 : 0;
    out.U32(kept);
    for (const auto& [handle, entry] : job.names) {
      if (Kept(entry)) router::WriteTableEntry(out, handle, entry);
    }
  };
  out.U32(static_cast<std::uint32_t>(jobs.size() + kept_jobs.size()));
  for (const auto& [name, job] : jobs) write_job(name, job);
  for (const auto& [name, job] : kept_jobs) write_job(*name, *job);
  std::vector<std::pair<const std::string*, const MovedReceives*>> moves;
  for (const auto& [name, kept] : unsettled_exports) moves.emplace_back(&name, &kept.moved);
  for (const auto& [name, moved] : restored_moves) {
    if (!unsettled_exports.contains(name)) moves.emplace_back(&name, &moved);
  }
  out.U32(static_cast<std::uint32_t>(moves.size()));
  for (const auto& [name, moved] : moves) {
    out.Bytes(*name);
    out.U64(moved->to);
    out.U32(static_cast<std::uint32_t>(moved->receives.size()));
    for (const auto& [ticket, home] : moved->receives) {
      out.U64(ticket);
      out.U64(home);
    }
  }
  return out.Take();
}

void PortRouter::KeepDurableState() {
  state_->durable = true;
  state_->rewrite_journal = true;  // the first write starts the journal afresh
  state_->last_snapshot.clear();
}

PortRouter::DurableWrite PortRouter::TakeDurable() {
  auto& s = *state_;
  DurableWrite write;
  if (!s.durable) return write;
  std::string snapshot = s.EncodeSnapshot();
  if (s.rewrite_journal || s.journal_bytes >= s.compact_at) {
    s.journal.clear();
    s.peer_delivered_changed.clear();
    write.journal = s.QueuesJournal();
    write.rewrite_journal = true;
    s.journal_bytes = 0;
    for (const std::string& piece : write.journal) s.journal_bytes += piece.size();
    s.compact_at = std::max(kCompactAtLeast, 2 * s.journal_bytes);
    s.rewrite_journal = false;
  } else {
    write.journal = std::exchange(s.journal, {});
    // After the turn's queue records: the state they leave the ports in.
    if (snapshot != s.last_snapshot) {
      std::string payload(1, static_cast<char>(kSnapshot));
      payload.append(snapshot);
      s.journal_bytes += payload.size() + 8;
      AddRecord(write.journal, std::move(payload));
    }
    for (std::uint64_t node : std::exchange(s.peer_delivered_changed, {})) {
      std::string payload = PeerDeliveredPayload(node, s.peer_delivered[node]);
      s.journal_bytes += payload.size() + 8;
      AddRecord(write.journal, std::move(payload));
    }
  }
  s.last_snapshot = std::move(snapshot);
  return write;
}

namespace {

// One snapshot record, parsed; nothing of the router changes until all of the journal is read.
struct Snapshot {
  std::uint64_t next_serial = 1;
  std::map<std::uint64_t, Port> ports;
  std::map<std::uint64_t, std::shared_ptr<Link>> links;
  std::map<std::string, std::pair<ObjectId, std::string>> names;
  std::map<std::string, JobState> jobs;
  std::map<std::string, MovedReceives> moves;
};

Expected<Snapshot> ParseSnapshot(std::string_view record, std::uint64_t self) {
  const auto malformed = [](std::string what) { return Fail("IPC snapshot: malformed " + what); };
  Snapshot parsed;

  WireReader in(record);
  auto version = in.U8();
  auto node = in.U64();
  auto next_serial = in.U64();
  if (!next_serial || (*version != kSnapshotVersion && *version != kSnapshotVersionBeforeMoves &&
                       *version != kSnapshotVersionBeforeDirectLinks)) {
    return malformed("header");
  }
  if (*node != self) {
    return Fail("IPC snapshot: it is node " + std::to_string(*node) + "'s, not this node's (" +
                std::to_string(self) + ")");
  }
  auto count = in.U32();
  if (!count) return malformed("port count");
  for (std::uint32_t i = 0; i < *count; ++i) {
    auto serial = in.U64();
    auto holder = ReadHolder(in);
    auto limit = in.U32();
    auto refs = in.U64();
    if (!refs || !holder || *serial == 0 || *serial >= *next_serial || *limit == 0 ||
        parsed.ports.contains(*serial)) {
      return malformed("port");
    }
    Port port;
    port.holder = std::move(*holder);
    port.limit = *limit;
    port.send_refs = static_cast<std::int64_t>(*refs);
    auto requests = in.U32();
    if (!requests) return malformed("port");
    for (std::uint32_t k = 0; k < *requests; ++k) {
      auto notify = ReadId(in);
      auto name = in.U32();
      if (!name) return malformed("dead-name request");
      port.dead_name.push_back({*notify, *name});
    }
    auto has = in.U8();
    auto notify = in.U64();
    auto notify_serial = in.U64();
    auto name = in.U32();
    if (!name) return malformed("no-senders request");
    if (*has) port.no_senders = {{ObjectId{*notify, *notify_serial}, *name}};
    has = in.U8();
    notify = in.U64();
    notify_serial = in.U64();
    if (!notify_serial) return malformed("port-destroyed request");
    if (*has) port.port_destroyed = ObjectId{*notify, *notify_serial};
    requests = in.U32();
    if (!requests) return malformed("port");
    for (std::uint32_t k = 0; k < *requests; ++k) {
      auto space = ReadId(in);
      auto space_name = in.U32();
      if (!space_name) return malformed("send-possible request");
      port.space_notify.emplace_back(*space, *space_name);
    }
    parsed.ports[*serial] = std::move(port);
  }
  count = in.U32();
  if (!count) return malformed("link count");
  for (std::uint32_t i = 0; i < *count; ++i) {
    auto link = std::make_shared<Link>();
    for (ObjectId& end : link->ends) {
      auto id = ReadId(in);
      if (!id || id->home != self || id->serial >= *next_serial ||
          parsed.links.contains(id->serial)) {
        return malformed("link");
      }
      end = *id;
    }
    if (link->ends[0].serial == link->ends[1].serial) return malformed("link");
    for (int k = 0; k < 2; ++k) {
      auto holder = ReadHolder(in);
      auto released = in.U8();
      if (!released || !holder) return malformed("link end");
      link->holder[k] = std::move(*holder);
      link->released[k] = *released != 0;
    }
    auto broken = in.U8();
    if (!broken) return malformed("link");
    link->broken = *broken != 0;
    if (*version != kSnapshotVersionBeforeDirectLinks) {
      for (int d = 0; d < 2; ++d) {
        if (!ReadDirection(in, *link, d)) return malformed("link direction");
      }
    }
    parsed.links[link->ends[0].serial] = link;
    parsed.links[link->ends[1].serial] = link;
  }
  count = in.U32();
  if (!count) return malformed("name count");
  for (std::uint32_t i = 0; i < *count; ++i) {
    auto text = in.Bytes();
    auto port = ReadId(in);
    auto registrant = in.Bytes();
    if (!registrant || !port || !text) return malformed("name");
    parsed.names[std::move(*text)] = {*port, std::move(*registrant)};
  }
  count = in.U32();
  if (!count) return malformed("job count");
  for (std::uint32_t i = 0; i < *count; ++i) {
    auto name = in.Bytes();
    auto has_uid = in.U8();
    auto uid = in.U32();
    auto next_name = in.U32();
    auto entries = in.U32();
    if (!entries || !name || parsed.jobs.contains(*name)) return malformed("job");
    JobState job;
    if (*has_uid) job.uid = *uid;
    job.next_name = *next_name;
    for (std::uint32_t k = 0; k < *entries; ++k) {
      // The kinds Kept() writes.
      if (!router::ReadTableEntry(
              in, job,
              {RightType::kReceive, RightType::kSend, RightType::kDeadName, RightType::kLinkEnd})) {
        return malformed("right of job " + *name);
      }
    }
    // New names after every name the job held (a hostile file's 0 is not a name).
    if (!job.names.empty()) job.next_name = std::max(job.next_name, job.names.rbegin()->first + 1);
    if (job.next_name == 0) job.next_name = 1;
    parsed.jobs[std::move(*name)] = std::move(job);
  }
  if (*version == kSnapshotVersion) {
    count = in.U32();
    if (!count) return malformed("move count");
    for (std::uint32_t i = 0; i < *count; ++i) {
      auto name = in.Bytes();
      auto to = in.U64();
      auto receives = in.U32();
      if (!receives || !name || *to == 0 || *to == self || *receives > kMaxMovedReceives ||
          parsed.moves.contains(*name)) {
        return malformed("move");
      }
      MovedReceives moved{.to = *to};
      for (std::uint32_t k = 0; k < *receives; ++k) {
        auto ticket = in.U64();
        auto home = in.U64();
        if (!home || *ticket == 0) return malformed("move's receive");
        moved.receives.emplace_back(*ticket, *home);
      }
      parsed.moves[std::move(*name)] = std::move(moved);
    }
  }
  if (!in.AtEnd()) return malformed("end (bytes left over)");
  parsed.next_serial = *next_serial;
  return parsed;
}

}  // namespace

Expected<PortRouter::Restored> PortRouter::RestoreDurable(std::string_view journal_file) {
  auto& s = *state_;
  if (!s.ports.empty() || !s.links.empty() || !s.jobs.empty() || !s.names.empty()) {
    return Fail("the IPC state can only be restored into an empty router");
  }
  Restored restored;
  if (journal_file.empty()) return restored;  // nothing was ever written: a first start
  auto journal = ReadStateRecords(journal_file, kJournalMagic);
  if (!journal) return Fail("IPC journal: " + journal.error().message);
  // The last snapshot stands; the queues are every message pushed less those taken, by port
  // (serials are never reused). A queue whose port the last snapshot does not hold is a dead
  // port's, or one made in a turn whose snapshot was cut short (it acknowledged nothing).
  std::optional<Snapshot> last;
  std::map<std::uint64_t, std::deque<QueuedEntry>> queues;
  std::map<std::uint64_t, SequenceTag> delivered;
  std::map<std::uint64_t, std::deque<Restored::Unacked>> sent;
  std::map<std::string, std::vector<Envelope>> early;
  for (std::string_view record : journal->records) {
    if (record.empty()) return Fail("IPC journal: an empty record");
    const auto kind = static_cast<std::uint8_t>(record.front());
    record.remove_prefix(1);
    if (kind == kSnapshot) {
      auto parsed = ParseSnapshot(record, s.self);
      if (!parsed) return Unexpected<Error>{parsed.error()};
      last = std::move(*parsed);
      continue;
    }
    if (kind == kPop) {
      WireReader pop(record);
      auto serial = pop.U64();
      auto taken = pop.U32();
      if (!taken || !pop.AtEnd()) return Fail("IPC journal: a malformed record of messages taken");
      auto found = queues.find(*serial);
      if (found == queues.end()) continue;
      auto& queue = found->second;
      for (std::uint32_t left = *taken; left > 0 && !queue.empty();) {
        if (auto* run = std::get_if<TrainRun>(&queue.front().item)) {
          const std::uint32_t n = std::min(left, run->count);
          router::TakeFront(*run, n);
          left -= n;
          if (run->empty()) queue.pop_front();
        } else {
          queue.pop_front();
          --left;
        }
      }
      continue;
    }
    if (kind == kPeerDelivered) {
      WireReader peer(record);
      auto node = peer.U64();
      auto epoch = peer.U64();
      auto seq = peer.U64();
      if (!seq || !peer.AtEnd() || *node == s.self || *seq == 0) {
        return Fail("IPC journal: a malformed record of a peer's frames handled");
      }
      delivered[*node] = SequenceTag{*epoch, *seq};
      continue;
    }
    if (kind == kEarlyResult) {
      auto envelope = router::DecodeEnvelope(std::make_shared<const std::string>(record));
      if (!envelope || envelope->job.empty()) {
        return Fail("IPC journal: a malformed early result");
      }
      early[envelope->job].push_back(std::move(*envelope));
      continue;
    }
    if (kind == kEarlyResultsGone) {
      WireReader gone(record);
      auto job = gone.Bytes();
      if (!job || !gone.AtEnd()) return Fail("IPC journal: a malformed record of early results");
      early.erase(*job);
      continue;
    }
    if (kind == kSent || kind == kAcked) {
      WireReader tagged(record);
      auto node = tagged.U64();
      auto epoch = tagged.U64();
      auto seq = tagged.U64();
      if (!seq || *node == s.self || *seq == 0 || (kind == kAcked && !tagged.AtEnd()) ||
          (kind == kSent && tagged.AtEnd())) {
        return Fail("IPC journal: a malformed record of a frame sent");
      }
      auto& list = sent[*node];
      if (kind == kAcked) {
        while (!list.empty() && list.front().tag.epoch == *epoch && list.front().tag.seq <= *seq) {
          list.pop_front();
        }
        continue;
      }
      const SequenceTag tag{*epoch, *seq};
      // One sequence per peer, in order: a frame out of it is a junk file's.
      if (!list.empty() && (list.back().tag.epoch != tag.epoch || list.back().tag.seq >= tag.seq)) {
        list.clear();  // a new epoch (the node was given up): what was held is gone
        if (tag.seq != 1) return Fail("IPC journal: a frame sent out of its sequence");
      }
      auto payload = std::make_shared<const std::string>(tagged.rest());
      if (ReadSequenceTrailer(*payload) != tag) {
        return Fail("IPC journal: a frame sent whose trailer is not its record's");
      }
      list.push_back({tag, std::move(payload)});
      continue;
    }
    if (kind != kPush) {
      return Fail("IPC journal: a record of unknown kind " + std::to_string(kind));
    }
    auto envelope = router::DecodeEnvelope(std::make_shared<const std::string>(record));
    const bool message = envelope && envelope->kind == Remote::kEnqueue && envelope->message;
    const bool run =
        envelope && envelope->kind == Remote::kEnqueueBatch && !envelope->batch.empty();
    if (!message && !run) return Fail("IPC journal: a malformed queued message");
    if (envelope->object.home != s.self) return Fail("IPC journal: a message for another node");
    Sender sender;
    if (!envelope->job.empty()) sender = {envelope->origin, std::move(envelope->job)};
    auto& queue = queues[envelope->object.serial];
    if (message) {
      queue.push_back(QueuedEntry{std::move(*envelope->message), sender});
    } else {
      queue.push_back(QueuedEntry{std::move(envelope->batch), sender});
    }
  }
  if (!last) return Fail("IPC journal: no snapshot in it");

  // Installed: what is derived from the queues is counted again.
  s.next_serial = last->next_serial;
  s.ports = std::move(last->ports);
  s.links = std::move(last->links);
  s.names = std::move(last->names);
  s.jobs = std::move(last->jobs);
  // Answers to a moved job's receives waiting at other homes go on to where it went, as the
  // old agent would have sent them (what waited here died with it: ForgetMovedJob).
  for (const auto& [job, moved] : last->moves) {
    for (const auto& [ticket, home] : moved.receives) {
      if (home != s.self) s.forwarded_tickets[ticket] = moved.to;
    }
  }
  s.restored_moves = std::move(last->moves);
  // Results kept for hand-offs not installed yet, as the old agent kept them (it acknowledged
  // the frames that brought them): kept again the same way (not journalled twice: the state is
  // not durable until the restore is done).
  for (auto& [job, results] : early) {
    for (Envelope& e : results) {
      if (!s.KeepEarlyResult(e) && e.message) s.ReleaseTransit(*e.message);
    }
  }
  s.peer_delivered = std::move(delivered);
  for (auto& [node, list] : sent) {
    if (list.empty()) continue;
    restored.unacked[node].assign(list.begin(), list.end());
    s.unacked_sent[node] = std::move(list);
  }
  for (auto& [serial, port] : s.ports) {
    if (auto found = queues.find(serial); found != queues.end())
      port.queue = std::move(found->second);
    port.queued = 0;
    for (const QueuedEntry& entry : port.queue) {
      if (const auto* taken = std::get_if<TrainRun>(&entry.item)) {
        port.queued += taken->count;
        s.Charge(entry.sender, Cost(*taken));
      } else {
        ++port.queued;
        s.Charge(entry.sender, Cost(std::get<TransitMessage>(entry.item)));
      }
    }
    restored.messages += port.queued;
  }
  restored.ports = s.ports.size();
  for (const auto& [name, job] : s.jobs) restored.jobs.push_back(name);
  restored.dropped_tail = journal->dropped_tail;
  return restored;
}

}  // namespace tern::ipc
