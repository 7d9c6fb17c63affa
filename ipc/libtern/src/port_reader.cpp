// tern::PortReader and MessageView: a stream's messages read in place from receive_many's
// answers and from direct stream connections (docs/ipc.md "Direct streams").
//
// The reader keeps one receive_many posted at the agent and one direct_accept, and waits in
// poll on the channel's event fd, the channel itself (when no other thread reads it) and its
// connections, so that whichever path answers first feeds the one buffer and nothing is
// cancelled. Messages wait in `ready_` (views into the frames that brought them, which they
// keep alive) until handed out; a numbered message (a PortWriter's, once it went direct) goes
// through the per-writer StreamReorder first (a direct frame that is exactly next is taken
// whole and handed out message by message off the frame). A same-node connection's frames
// come through shared memory (StreamInbox, stream_rings.hpp): before it sleeps the reader
// waits briefly for them, then arms the ring and polls the socket.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <memory>
#include <tern/ipc.hpp>
#include <vector>

#include "channel_impl.hpp"
#include "send_all.hpp"
#include "stream_inbox.hpp"
#include "stream_reorder.hpp"
#include "stream_wire.hpp"

namespace tern {

namespace {

using Clock = std::chrono::steady_clock;
using ipc::JobOp;
using ipc::WireReader;
using ipc::WireWriter;

// The posted receive's and accept's waits at the agent: re-posted when they end.
constexpr Timeout kPostedWait{1000};
// How long past the caller's deadline the reader waits for a receive it posted for that
// deadline (normally one round trip; longer while the job moves).
constexpr auto kDueSlack = std::chrono::milliseconds(50);
// After a refused direct_accept (not an old agent's): ask again after this long.
constexpr auto kAcceptRetry = std::chrono::seconds(1);
// An ack goes when this much was received or handed out since the last (or before the reader
// blocks, whatever the amount).
constexpr std::size_t kAckBytes = 1 << 20;
constexpr std::uint64_t kAckMessages = 256;

bool IsUnixSocket(int fd) {
  int domain = 0;
  socklen_t size = sizeof domain;
  return ::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &size) == 0 && domain == AF_UNIX;
}

bool IsData(ItemKind kind) { return kind == ItemKind::kBytes || kind == ItemKind::kOutOfLine; }

// One message in WireWriter::WriteMessage's layout, its data items as views into `in`'s input.
bool ReadView(WireReader& in, MessageView& out) {
  auto header = in.ReadMessageHeader();
  if (!header) return false;
  out.destination = header->destination;
  out.reply = header->reply;
  out.reply_disposition = header->reply_disposition;
  out.id = header->id;
  out.items.clear();
  for (std::uint32_t i = 0; i < header->item_count; ++i) {
    auto kind = in.U8();
    if (!kind || *kind < 1 || *kind > 5) return false;
    ItemView& item = out.items.emplace_back();
    item.kind = static_cast<ItemKind>(*kind);
    if (IsData(item.kind)) {
      auto bytes = in.BytesView();
      if (!bytes) return false;
      item.bytes = *bytes;
    } else {
      auto name = in.U32();
      auto item_disposition = in.U8();
      if (!item_disposition) return false;
      item.name = *name;
      item.disposition = static_cast<Disposition>(*item_disposition);
    }
  }
  return true;
}

Clock::time_point DeadlineAfter(Timeout timeout) {
  if (libtern::TimeoutMs(timeout) == ipc::kWaitForever) return Clock::time_point::max();
  return Clock::now() + timeout;
}

int PollMs(Clock::time_point until) {
  if (until == Clock::time_point::max()) return -1;
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - Clock::now()).count();
  return static_cast<int>(std::clamp<std::int64_t>(left, 0, 1 << 30));
}

}  // namespace

std::string_view MessageView::bytes() const {
  // A stream's message: one data item (PortReader hands most out so).
  if (items.size() == 1 && IsData(items.front().kind)) return items.front().bytes;
  for (const ItemView& item : items) {
    if (IsData(item.kind)) return item.bytes;
  }
  return {};
}

Message MessageView::ToMessage() const {
  Message message;
  message.destination = destination;
  message.reply = reply;
  message.reply_disposition = reply_disposition;
  message.id = id;
  for (const ItemView& item : items) {
    if (item.kind == ItemKind::kBytes) {
      message.items.push_back(Item::Bytes(std::string(item.bytes)));
    } else if (item.kind == ItemKind::kOutOfLine) {
      message.items.push_back(Item::OutOfLine(std::string(item.bytes)));
    } else {
      Item right;
      right.kind = item.kind;
      right.name = item.name;
      right.disposition = item.disposition;
      message.items.push_back(std::move(right));
    }
  }
  return message;
}

class PortReader::State {
 public:
  State(Channel channel, std::uint32_t port, Options options)
      : channel_(std::move(channel)), port_(port), options_(options) {
    if (options_.batch == 0) options_.batch = 1;
  }
  ~State() {
    if (receiving_) Impl().Abandon(*receiving_);
    if (accepting_) Impl().Abandon(*accepting_);
  }

  IpcResult<void> Next(MessageView& out, Timeout timeout);
  // The common case of Next, inline: the next message of a direct frame being handed out, of
  // one data item, neither the frame's last nor one whose hand-out an ack may read (those, and
  // everything else, through Next). False when it did not hand one out.
  bool HandOutFromRun(MessageView& out);
  std::size_t buffered() const { return ready_.size() + in_runs_; }
  std::uint64_t handed_direct() const { return handed_direct_; }
  std::uint64_t handed_shared() const { return handed_shared_; }
  std::uint64_t dropped() const { return reorder_.dropped(); }

 private:
  // A message taken and not yet handed out.
  struct Held {
    std::shared_ptr<const std::string> owner;  // the frame it lies in
    std::string_view message;  // agent: WriteMessage's layout; direct: [u32 count][items]
    std::uint32_t id = 0;      // direct only
    bool direct = false;
    bool shared = false;  // direct, through the rings
    bool strip = false;   // agent path, numbered: its first item is the stream header
    std::uint64_t writer = 0;
    std::uint64_t sequence = 0;  // a run's: of its next message
    // A run: a direct frame released whole (StreamReorder::TakeRun), `message` its messages
    // not yet handed out, `run` how many; 0: one message.
    std::uint32_t run = 0;
  };
  struct Connection {
    explicit Connection(UniqueFd fd) : socket(std::move(fd)) {}
    libtern::StreamInbox socket;
    std::uint64_t writer = 0;  // known from its first frame
    libtern::StreamAck acked;  // the last ack sent
    std::size_t bytes_since_ack = 0;
    bool dead = false;  // closed at the next wait
    // Channel::Impl::reattached() when it was accepted: one a restarted agent never knew is
    // closed (it could not shut it down before a move, so the job could not move).
    std::uint64_t reattached = 0;
  };

  Channel::Impl& Impl() { return *channel_.impl_; }
  // Waits once for something to come (a posted answer, a connection's frames) until
  // `deadline`; timed_out when it passed with nothing handed out.
  IpcResult<void> Wait(Clock::time_point deadline);
  IpcResult<void> PostReceive(Clock::time_point deadline);
  void PostAccept();
  IpcResult<void> Collected();
  IpcResult<void> TakeBatch(Channel::Impl::Reply reply);
  void TakeAccepted(UniqueFd fd);
  // Reads what `connection` has; false when it is to be closed.
  bool ServeConnection(Connection& connection);
  // Serves the connections whose frames come through rings; true if any message came.
  bool ServeRings();
  void Release(Held held) { ready_.push_back(std::move(held)); }
  // Acks every connection whose writer has something new (`all`) or enough of it.
  void SendAcks(bool all);
  bool SendAck(Connection& connection, bool all);
  bool HandOut(MessageView& out);
  // Acks `writer`'s connection if enough was handed out since its last ack.
  void AckHanded(std::uint64_t writer);

  Channel channel_;
  const std::uint32_t port_;
  Options options_;
  std::deque<Held> ready_;
  std::size_t in_runs_ = 0;  // messages in ready_'s runs beyond one per run
  libtern::StreamReorder<Held> reorder_;
  std::shared_ptr<const std::string> current_;  // the frame of the message handed out last

  std::optional<std::uint32_t> receiving_;  // the posted receive_many
  Clock::time_point receive_ends_{};        // when the agent answers it at the latest
  std::optional<std::uint32_t> accepting_;  // the posted direct_accept
  bool direct_off_ = false;                 // the agent does not know direct_accept
  Clock::time_point accept_after_{};
  std::uint32_t credits_ = 0;  // the port's queue limit, read on the first accept
  std::vector<std::unique_ptr<Connection>> connections_;
  std::uint64_t handed_direct_ = 0;
  std::uint64_t handed_shared_ = 0;
  std::vector<pollfd> fds_;
  libtern::SpinWait spin_;  // before sleeping for a ring's frames
};

inline bool PortReader::State::HandOutFromRun(MessageView& out) {
  if (ready_.empty()) return false;
  Held& run = ready_.front();
  // HandOut tells the table of every 64th (an ack reads it) and of the run's last.
  if (run.run <= 1 || run.sequence % 64 == 0 || out.items.size() != 1) return false;
  const std::string_view messages = run.message;
  // As TakeStreamMessageFast reads it (the run was checked whole when it was taken).
  if (messages.size() < libtern::kOneItemHead ||
      tern::LoadBigEndian<std::uint32_t>(messages.data() + 4) != 1) {
    return false;
  }
  const auto length = tern::LoadBigEndian<std::uint32_t>(messages.data() + 9);
  if (length > messages.size() - libtern::kOneItemHead) return false;
  out.destination = port_;
  out.reply = 0;
  out.reply_disposition = Disposition::kNone;
  out.id = tern::LoadBigEndian<std::uint32_t>(messages.data());
  ItemView& item = out.items.front();
  item.kind = static_cast<ItemKind>(messages[8]);
  item.bytes = messages.substr(libtern::kOneItemHead, length);
  item.name = 0;
  item.disposition = Disposition::kNone;
  run.message = messages.substr(libtern::kOneItemHead + length);
  ++run.sequence;
  --run.run;
  --in_runs_;
  ++handed_direct_;
  handed_shared_ += run.shared ? 1 : 0;
  return true;
}

IpcResult<void> PortReader::State::Next(MessageView& out, Timeout timeout) {
  if (!options_.direct) {
    // The agent path alone: one blocking receive_many when the buffer is empty, as before
    // direct streams.
    if (HandOut(out)) return {};
    WireWriter request;
    request.U32(port_);
    request.U32(libtern::TimeoutMs(timeout));
    request.U32(options_.batch);
    auto reply = Impl().Request(JobOp::kReceiveMany, request.out());
    if (!reply) return reply.error();
    if (auto took = TakeBatch(std::move(*reply)); !took) return took;
    if (HandOut(out)) return {};
    return IpcError{JobStatus::kTimedOut, "no message in time"};  // all were syncs
  }
  // The clock is read only when the reader must wait: most calls of a busy stream hand out a
  // message taken already, and a clock read costs as much as the rest of such a call here.
  if (HandOut(out)) return {};
  // The caller's last view is no longer valid: its frame goes back before a wait (one read in
  // place holds ring 0's room, which the writer may be waiting for).
  current_.reset();
  const Clock::time_point deadline = DeadlineAfter(timeout);
  for (;;) {
    if (auto waited = Wait(deadline); !waited) return waited;
    if (HandOut(out)) return {};
  }
}

bool PortReader::State::HandOut(MessageView& out) {
  while (!ready_.empty()) {
    if (Held& run = ready_.front(); run.run != 0) {
      // A direct frame's next message, read off the frame in place: no table, no copy of the
      // frame's owner per message (bench/README.md, eighth session).
      out.destination = port_;
      out.reply = 0;
      out.reply_disposition = Disposition::kNone;
      out.items.clear();
      if (!libtern::TakeStreamMessageFast(run.message, out.id, out.items)) {
        in_runs_ -= run.run - 1;
        ready_.pop_front();  // checked when taken: cannot happen
        continue;
      }
      const std::uint64_t writer = run.writer;
      const std::uint64_t sequence = run.sequence++;
      ++handed_direct_;
      if (run.shared) ++handed_shared_;
      // What was handed out is told to the table only where an ack may read it: every 64th
      // message and the run's last (acks are read nowhere else while a run is in ready_: Wait
      // runs only once ready_ is empty, and ready_ hands out in order).
      if (--run.run == 0) {
        reorder_.HandedOut(writer, sequence);
        current_ = std::move(run.owner);
        ready_.pop_front();
        AckHanded(writer);
      } else {
        --in_runs_;
        if (sequence % 64 == 0) {
          reorder_.HandedOut(writer, sequence);
          AckHanded(writer);
        }
      }
      return true;
    }
    Held held = std::move(ready_.front());
    ready_.pop_front();
    bool ok = false;
    if (held.direct) {
      out.destination = port_;
      out.reply = 0;
      out.reply_disposition = Disposition::kNone;
      out.id = held.id;
      out.items.clear();
      ok = libtern::ReadStreamItems(held.message, out.items);
    } else {
      WireReader reader(held.message);
      ok = ReadView(reader, out);
      if (ok && held.strip && !out.items.empty()) out.items.erase(out.items.begin());
    }
    if (!ok) continue;  // checked when taken: cannot happen
    current_ = std::move(held.owner);
    if (held.writer != 0) {
      reorder_.HandedOut(held.writer, held.sequence);
      if (held.direct) ++handed_direct_;
      if (held.shared) ++handed_shared_;
      // Credits flow back as the caller takes messages, not only when the reader blocks.
      AckHanded(held.writer);
    }
    return true;
  }
  return false;
}

void PortReader::State::AckHanded(std::uint64_t writer) {
  for (auto& connection : connections_) {
    if (connection->writer == writer && !SendAck(*connection, false)) connection->dead = true;
  }
}

IpcResult<void> PortReader::State::Wait(Clock::time_point deadline) {
  if (!receiving_) {
    if (auto posted = PostReceive(deadline); !posted) return posted;
  }
  if (options_.direct && !accepting_ && !direct_off_ && Clock::now() >= accept_after_) PostAccept();
  const std::uint64_t reattached = Impl().reattached();
  for (auto& connection : connections_) connection->dead |= connection->reattached != reattached;
  SendAcks(/*all=*/true);
  std::erase_if(connections_, [](const auto& c) { return c->dead || c->socket.broken(); });

  // What may have come already (another thread read the channel for us, a writer filled a
  // ring).
  if (auto got = Collected(); !got || !ready_.empty()) return got;
  if (ServeRings() && !ready_.empty()) {
    SendAcks(/*all=*/true);
    return {};
  }

  const int event = Impl().event_fd();
  const int channel = Impl().idle_fd();
  fds_.clear();
  fds_.push_back({event, POLLIN, 0});
  fds_.push_back({channel, POLLIN, 0});  // -1: ignored by poll
  // A writer in the middle of a frame: a short wait for it beats a sleep and a bell.
  // The rest of a frame begun (a large one, which the writer is copying in) is waited for with
  // the fixed wait, as the writer waits for room (stream_rings.hpp, SpinBriefly): it outlasts
  // the adaptive wait, which would soon not wait at all; the next frame with the adaptive one.
  bool rings = false;
  bool in_frame = false;
  for (const auto& connection : connections_) {
    rings |= connection->socket.shared();
    in_frame |= connection->socket.shared() && connection->socket.InFrame();
  }
  const auto frames = [&] {
    for (const auto& connection : connections_) {
      if (connection->socket.HasFrames()) return true;
    }
    return false;
  };
  if (rings && (in_frame ? libtern::SpinBriefly(frames) : spin_(frames))) {
    if (ServeRings() && !ready_.empty()) {
      SendAcks(/*all=*/true);
      return {};
    }
  }
  // A ring's writer rings the socket only for a reader that said it sleeps (armed).
  bool sleep = true;
  for (const auto& connection : connections_) {
    fds_.push_back({connection->socket.fd(), POLLIN, 0});
    if (connection->socket.shared() && !connection->socket.ArmForFrames()) sleep = false;
  }
  // Past the caller's deadline only while a receive posted for it is due (one round trip).
  const bool due = receiving_ && receive_ends_ <= deadline &&
                   (deadline == Clock::time_point::max() || Clock::now() < deadline + kDueSlack);
  Clock::time_point until = deadline;
  if (due && Clock::now() >= deadline) until = Clock::now() + std::chrono::milliseconds(5);
  if (accepting_ == std::nullopt && options_.direct && !direct_off_) {
    until = std::min(until, accept_after_);
  }
  const int ready = ::poll(fds_.data(), fds_.size(), sleep ? PollMs(until) : 0);
  for (const auto& connection : connections_) connection->socket.Disarm();
  if (ready < 0 && errno != EINTR) {
    return libtern::Unavailable(std::string("poll: ") + std::strerror(errno));
  }
  if (fds_[0].revents != 0) {
    std::uint64_t count = 0;
    (void)!::read(event, &count, sizeof count);
  }
  if (channel >= 0 && fds_[1].revents != 0) Impl().ReadIfIdle();
  for (std::size_t i = 2; i < fds_.size(); ++i) {
    Connection& connection = *connections_[i - 2];
    if (connection.socket.shared()) {
      // Its socket holds bells or its end; its frames are in the ring.
      if (fds_[i].revents != 0 && !connection.socket.TakeBells()) connection.dead = true;
      if (!connection.dead && !ServeConnection(connection)) connection.dead = true;
      continue;
    }
    if (fds_[i].revents == 0) continue;
    if (!ServeConnection(connection)) connection.dead = true;
  }
  if (auto got = Collected(); !got) return got;
  // What came on a connection is acknowledged as received at once, whether or not the caller
  // takes it soon: a writer's flush() waits for exactly that.
  SendAcks(/*all=*/true);
  if (!ready_.empty()) return {};
  if (Clock::now() >= deadline && !due) {
    return IpcError{JobStatus::kTimedOut, "no message in time"};
  }
  return {};
}

IpcResult<void> PortReader::State::PostReceive(Clock::time_point deadline) {
  Timeout wait = kPostedWait;
  if (deadline != Clock::time_point::max()) {
    wait = std::clamp(std::chrono::duration_cast<Timeout>(deadline - Clock::now()), Timeout(0),
                      kPostedWait);
  }
  WireWriter request;
  request.U32(port_);
  request.U32(libtern::TimeoutMs(wait));
  request.U32(options_.batch);
  auto posted = Impl().Post(JobOp::kReceiveMany, request.out(), /*watched=*/true);
  if (!posted) return posted.error();
  receiving_ = *posted;
  receive_ends_ = Clock::now() + wait;
  return {};
}

void PortReader::State::PostAccept() {
  if (credits_ == 0) {
    // The writers' credits: what the port's queue would hold.
    auto status = channel_.port_status(port_);
    credits_ = status && status->limit != 0 ? status->limit : 64;
  }
  WireWriter request;
  request.U32(port_);
  request.U32(libtern::TimeoutMs(kPostedWait));
  auto posted = Impl().Post(JobOp::kDirectAccept, request.out(), /*watched=*/true);
  if (!posted) {
    accept_after_ = Clock::now() + kAcceptRetry;
    return;
  }
  accepting_ = *posted;
}

IpcResult<void> PortReader::State::Collected() {
  if (accepting_) {
    if (auto answer = Impl().TryCollect(*accepting_)) {
      accepting_.reset();
      auto& result = *answer;
      if (result && result->fd.valid()) {
        TakeAccepted(std::move(result->fd));
      } else if (result.status() == JobStatus::kBadRequest) {
        direct_off_ = true;  // an agent older than direct calls
      } else if (result.status() != JobStatus::kTimedOut) {
        // Refused for now (no listener, a re-attach, the port moving): later.
        accept_after_ = Clock::now() + kAcceptRetry;
      }
    }
  }
  if (receiving_) {
    if (auto answer = Impl().TryCollect(*receiving_)) {
      receiving_.reset();
      auto& result = *answer;
      if (result) return TakeBatch(std::move(*result));
      if (result.status() == JobStatus::kTimedOut) return {};
      // Lost with a restarted agent: ask again on the new channel.
      if (result.status() == JobStatus::kUnavailable && channel_.connected()) return {};
      return result.error();
    }
  }
  return {};
}

IpcResult<void> PortReader::State::TakeBatch(Channel::Impl::Reply reply) {
  auto owner = std::make_shared<const std::string>(std::move(reply.payload));
  WireReader reader(std::string_view(*owner).substr(reply.body_at));
  auto count = reader.U32();
  if (!count || *count == 0) {
    return IpcError{JobStatus::kBadRequest, "malformed receive_many answer from the agent"};
  }
  MessageView view;
  for (std::uint32_t i = 0; i < *count; ++i) {
    const std::string_view start = reader.rest();
    if (!ReadView(reader, view)) {
      // Where it broke, so that a report of it says what the answer looked like.
      const std::string_view body = std::string_view(*owner).substr(reply.body_at);
      const std::size_t at = body.size() - start.size();
      std::string head;
      for (std::size_t b = at; b < std::min(body.size(), at + 24); ++b) {
        static constexpr char kHex[] = "0123456789abcdef";
        head += kHex[static_cast<unsigned char>(body[b]) >> 4];
        head += kHex[static_cast<unsigned char>(body[b]) & 15];
      }
      return IpcError{JobStatus::kBadRequest, "malformed message " + std::to_string(i + 1) +
                                                  " of " + std::to_string(*count) +
                                                  " in a receive_many answer of " +
                                                  std::to_string(body.size()) + " bytes, at byte " +
                                                  std::to_string(at) + ": " + head};
    }
    Held held;
    held.owner = owner;
    held.message = start.substr(0, start.size() - reader.remaining());
    std::optional<libtern::StreamHeader> header;
    if (!view.items.empty()) {
      header = libtern::DecodeStreamHeader(view.items[0].kind, view.items[0].bytes);
    }
    if (!header) {
      Release(std::move(held));
      continue;
    }
    const auto release = [this](Held h) { Release(std::move(h)); };
    if (view.id == libtern::kStreamSyncId && view.items.size() == 1) {
      reorder_.Sync(header->writer, header->sequence, release);
      continue;
    }
    held.strip = true;
    held.writer = header->writer;
    held.sequence = header->sequence;
    reorder_.Offer(header->writer, header->sequence, /*through_agents=*/true, std::move(held),
                   release);
  }
  return {};
}

void PortReader::State::TakeAccepted(UniqueFd fd) {
  auto connection = std::make_unique<Connection>(std::move(fd));
  connection->reattached = Impl().reattached();
  // The welcome: the writer goes direct once it reads it (a receiver that is not a PortReader
  // never sends one, so its writers stay on the agent path).
  std::string welcome;
  libtern::AppendStreamAck(welcome, {0, 0, 0, credits_});
  if (!connection->socket.Welcome(welcome,
                                  options_.shared_memory && IsUnixSocket(connection->socket.fd())))
    return;
  connections_.push_back(std::move(connection));
}

bool PortReader::State::ServeConnection(Connection& connection) {
  // A bounded number of reads: a fast writer must not keep the reader from handing out (its
  // credits bound what it can send anyway).
  for (int reads = 0; reads < 16; ++reads) {
    const auto received = connection.socket.Receive();
    while (auto frame = connection.socket.Next()) {
      if (frame->type != libtern::kDirectStream) return false;
      auto run = libtern::ParseStreamRun(frame->payload);
      if (!run) return false;
      if (connection.writer == 0) connection.writer = run->writer;
      if (run->writer != connection.writer) return false;
      connection.bytes_since_ack += frame->payload.size();
      // In order, as nearly always: the frame is handed out whole, message by message.
      if (reorder_.TakeRun(run->writer, run->first, run->count)) {
        Held held;
        held.owner = std::move(frame->owner);
        held.message = run->messages;
        held.direct = true;
        held.shared = frame->shared;
        held.writer = run->writer;
        held.sequence = run->first;
        held.run = run->count;
        in_runs_ += run->count - 1;
        Release(std::move(held));
        continue;
      }
      if (frame->in_ring) {
        // Kept until its gap fills: out of ring 0, which it would hold (and all after it).
        auto copy = std::make_shared<const std::string>(frame->payload);
        frame->payload = *copy;
        frame->owner = std::move(copy);
        frame->in_ring = false;
      }
      auto parsed = libtern::ParseStreamFrame(frame->payload);
      if (!parsed) return false;
      for (std::size_t i = 0; i < parsed->messages.size(); ++i) {
        Held held;
        held.owner = frame->owner;
        held.message = parsed->messages[i].body;
        held.id = parsed->messages[i].id;
        held.direct = true;
        held.shared = frame->shared;
        held.writer = parsed->writer;
        held.sequence = parsed->first + i;
        reorder_.Offer(held.writer, held.sequence, /*through_agents=*/false, std::move(held),
                       [this](Held h) { Release(std::move(h)); });
      }
    }
    if (received == libtern::StreamInbox::Received::kBroken) return false;
    if (received == libtern::StreamInbox::Received::kDrained) return true;
  }
  return true;
}

bool PortReader::State::ServeRings() {
  const std::size_t before = ready_.size();
  bool any = false;
  for (auto& connection : connections_) {
    if (connection->dead || !connection->socket.shared()) continue;
    if (!ServeConnection(*connection)) connection->dead = true;
    any = true;
  }
  return any && ready_.size() != before;
}

void PortReader::State::SendAcks(bool all) {
  for (auto& connection : connections_) {
    if (!connection->dead && !connection->socket.broken() && !SendAck(*connection, all)) {
      connection->dead = true;
    }
  }
}

bool PortReader::State::SendAck(Connection& connection, bool all) {
  if (connection.writer == 0 || connection.dead) return true;
  auto progress = reorder_.progress(connection.writer);
  if (!progress) return true;
  libtern::StreamAck& last = connection.acked;
  if (progress->received == last.received && progress->handed == last.handed) return true;
  // Often enough that a broken connection leaves little to resend, rarely enough to cost
  // little: an ack is one small write.
  const std::uint64_t step = std::clamp<std::uint64_t>(credits_ / 4, 1, kAckMessages);
  if (!all && progress->received - last.received < step && progress->handed - last.handed < step &&
      connection.bytes_since_ack < kAckBytes) {
    return true;
  }
  last = {connection.writer, progress->received, progress->handed, credits_};
  connection.bytes_since_ack = 0;
  std::string ack;
  libtern::AppendStreamAck(ack, last);
  return connection.socket.Write(ack, last.handed);
}

PortReader::PortReader(Channel channel, std::uint32_t port, std::uint32_t batch)
    : PortReader(std::move(channel), port, Options{.batch = batch}) {}

PortReader::PortReader(Channel channel, std::uint32_t port, Options options)
    : state_(std::make_unique<State>(std::move(channel), port, options)) {}

PortReader::~PortReader() = default;

IpcResult<void> PortReader::next(MessageView& out, Timeout timeout) {
  if (state_->HandOutFromRun(out)) return {};
  return state_->Next(out, timeout);
}

std::size_t PortReader::buffered() const { return state_->buffered(); }
std::uint64_t PortReader::handed_direct() const { return state_->handed_direct(); }
std::uint64_t PortReader::handed_shared() const { return state_->handed_shared(); }
std::uint64_t PortReader::dropped_duplicates() const { return state_->dropped(); }

}  // namespace tern
