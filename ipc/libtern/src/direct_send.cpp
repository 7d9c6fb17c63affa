// Plain sends direct (direct_send.hpp, docs/ipc.md "Plain sends direct"): the streams, one per
// (channel, send name), and the keeper thread that resends a broken stream's frames for a
// sender that may never send again.
#include "direct_send.hpp"

#include <poll.h>
#include <pthread.h>

#include <boost/container/small_vector.hpp>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tern/ipc/job_wire.hpp>
#include <thread>
#include <utility>
#include <vector>

#include "direct_connection.hpp"
#include "random_id.hpp"
#include "send_all.hpp"
#include "stream_path.hpp"
#include "stream_rings.hpp"
#include "stream_sender.hpp"
#include "stream_wire.hpp"

namespace tern::libtern {

std::atomic<bool> direct_sends_made{false};

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// After a refused direct_open (the receiver reads with receive, not a PortReader) the stream
// asks again after this long, as a call and a PortWriter do.
constexpr auto kRefusedFor = 1s;
// The bytes of frames kept for the reader at most, whatever the credits.
constexpr std::size_t kMaxUnreceivedBytes = 32u << 20;
// A sender reads its acks (one receive that usually finds none) at every this-many sends, or
// sooner when the window looks full; the keeper reads them in between.
constexpr int kAcksEvery = 16;
// With this many frames (or bytes) not yet received, a send looks whether the socket takes more
// before it writes (below it, the smallest socket buffer holds them).
constexpr std::size_t kLookForRoomAbove = 32;
constexpr std::size_t kLookForRoomBytes = 64u << 10;
constexpr auto kKeepEvery = 10ms;
// The keeper also looks at streams whose frames were all received this often (their sockets
// fill with acks of messages handed out, and a break is seen).
constexpr int kIdleLookEvery = 100;
constexpr auto kExitWait = 5s;
// A resend's train through the agents: at most this many messages (as send_many's).
constexpr std::uint32_t kResendTrainMessages = 8192;

// Message ids of the agents' notifications and libtern's protocols (RPC 0x7e01...., streams
// 0x7e02....): never numbered or sent direct here.
constexpr std::uint32_t kProtocolIdMask = 0xff000000;
constexpr std::uint32_t kProtocolIds = 0x7e000000;

std::atomic<std::uint64_t> received_total{0};

bool Eligible(const Message& message, FullPolicy policy) {
  if (policy == FullPolicy::kNotify || message.reply != 0 ||
      message.destination_disposition != Disposition::kCopySend) {
    return false;
  }
  std::size_t bytes = 0;
  for (const Item& item : message.items) {
    if (item.kind != ItemKind::kBytes && item.kind != ItemKind::kOutOfLine) return false;
    bytes += item.bytes().size();
  }
  return bytes <= ipc::kMaxMessageBytes;
}

bool TurnedOffByEnvironment() {
  const char* value = std::getenv("TERN_IPC_DIRECT_SEND");
  return value != nullptr && std::string_view(value) == "0";
}

// One (channel, send name)'s stream. Every member is used under `mu`.
class Stream {
 public:
  Stream(const std::shared_ptr<Channel::Impl>& impl, std::uint32_t name)
      : impl_(impl), name_(name) {}
  ~Stream() {
    if (auto impl = impl_.lock(); impl && opening_) impl->Abandon(*opening_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  std::mutex mu;

  std::optional<IpcResult<void>> Send(Channel::Impl& impl, const Message& message,
                                      FullPolicy policy, Timeout timeout) {
    if (path_.connection && path_.reattached != impl.reattached()) FallBack(impl);
    if (!path_.sender.direct()) {
      TryConnect(impl);
      if (!path_.sender.direct()) {
        if (!path_.sender.numbered()) return std::nullopt;
        return SendNumberedThroughAgents(impl, message, policy, timeout, 0);
      }
    }
    // A broken connection: what the reader lacks goes again through the agents, and so does
    // this message, numbered after it.
    const auto broken = [&] {
      FallBack(impl);
      return SendNumberedThroughAgents(impl, message, policy, timeout, 0);
    };
    const std::uint64_t next = path_.sender.last() + 1;
    if (++sends_since_acks_ >= kAcksEvery || !Fits(next)) {
      sends_since_acks_ = 0;
      if (!TakeAcks()) return broken();
    }
    const auto deadline =
        policy != FullPolicy::kWait ? Clock::now()
        : timeout >= std::chrono::duration_cast<Timeout>(Clock::time_point::max() - Clock::now())
            ? Clock::time_point::max()
            : Clock::now() + timeout;
    // A full window, as a full queue: kFail refuses, kWait waits for the reader.
    while (!Fits(next)) {
      if (policy != FullPolicy::kWait) {
        return IpcError{JobStatus::kQueueFull,
                        "the receiver has the port's queue limit of messages it has not taken"};
      }
      const Waited waited = AwaitAckUntil(deadline, path_.sender.HandedFor(next));
      if (waited == Waited::kBroken) return broken();
      if (waited == Waited::kTimedOut) {
        return IpcError{JobStatus::kTimedOut,
                        "the receiver did not take messages to make room in time"};
      }
    }
    // The socket's buffer must take the frame without blocking a send that may not wait: with
    // many frames unreceived, look first (a reader that takes nothing fills it before the window
    // when the port's limit is large). Through shared memory the ring says it.
    if (!path_.rings && (path_.sender.unreceived_frames() >= kLookForRoomAbove ||
                         path_.sender.unreceived_bytes() >= kLookForRoomBytes)) {
      if (!Writable(deadline)) return Full(policy);
    }
    StreamFrame frame;
    frame.Start(path_.Buffer(), path_.sender.writer(), next);
    frame.Add(message.id, message.items);
    StreamFrameBytes bytes = frame.Finish();
    if (path_.rings && policy != FullPolicy::kWait) {
      // A frame the ring cannot take now (the reader is behind) would wait for it; one larger
      // than half the ring goes in pieces, waiting, as it would into a socket.
      const ipc::ShmRing& ring = path_.rings->frames();
      if (bytes.size() <= ring.capacity() / 2 && ring.Space() < bytes.size()) {
        if (path_.spare.size() < StreamPath::kSpareFrames)
          path_.spare.push_back(std::move(bytes.out));
        return Full(policy);
      }
    }
    const std::uint64_t sequence = path_.sender.Number();
    boost::container::small_vector<std::string_view, 4> pieces;
    ipc::ForEachPiece(
        bytes.out, bytes.shared, [&](std::string_view piece) { pieces.push_back(piece); },
        [&](const ipc::SharedSpan& span) { pieces.push_back(span.bytes); });
    const bool written = path_.rings
                             ? path_.WriteToRing({pieces.data(), pieces.size()})
                             : SendAll(path_.connection->fd(), {pieces.data(), pieces.size()}) == 0;
    path_.sender.Sent({sequence, 1, std::move(bytes)});
    // A write that failed: the message is among the frames resent through the agents.
    if (!written) FallBack(impl);
    return IpcResult<void>{};
  }

  static IpcError Full(FullPolicy policy) {
    return policy != FullPolicy::kWait
               ? IpcError{JobStatus::kQueueFull,
                          "the connection to the receiver is full (it takes nothing)"}
               : IpcError{JobStatus::kTimedOut,
                          "the receiver did not take messages to make room in time"};
  }

  enum class Waited { kAck, kTimedOut, kBroken };
  // Waits until `deadline` for an ack. `handed`: through shared memory, what the reader must
  // have handed out for the ack to wake the wait (AwaitAck).
  Waited AwaitAckUntil(Clock::time_point deadline, std::uint64_t handed) {
    const std::uint64_t before = path_.sender.received_count();
    const Waited waited = [&] {
      if (!path_.rings) {
        auto frame = path_.connection->Read(deadline);
        if (!frame) return Waited::kBroken;
        if (!*frame) return Waited::kTimedOut;
        return path_.TakeAck(**frame) ? Waited::kAck : Waited::kBroken;
      }
      if (deadline == Clock::time_point::max()) {
        return path_.AwaitAck(handed) ? Waited::kAck : Waited::kBroken;
      }
      for (;;) {
        const std::uint64_t acks = path_.acks_taken;
        if (!path_.TakeAcks()) return Waited::kBroken;
        if (path_.acks_taken != acks) return Waited::kAck;
        const auto now = Clock::now();
        if (now >= deadline) return Waited::kTimedOut;
        (void)path_.rings->acks().WaitForData(
            std::min<std::chrono::milliseconds>(
                StreamPath::kLookEvery,
                std::chrono::ceil<std::chrono::milliseconds>(deadline - now)),
            handed);
      }
    }();
    received_total.fetch_add(path_.sender.received_count() - before, std::memory_order_relaxed);
    return waited;
  }

  // Whether the socket takes more (or is broken: the write then says so), waiting until
  // `deadline` at most.
  bool Writable(Clock::time_point deadline) {
    for (;;) {
      pollfd socket{path_.connection->fd(), POLLOUT, 0};
      const auto left =
          deadline == Clock::time_point::max()
              ? -1
              : std::max<std::int64_t>(
                    0,
                    std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count());
      const int ready = ::poll(&socket, 1, static_cast<int>(std::min<std::int64_t>(left, 1000)));
      if (ready > 0) return true;
      if (ready < 0 && errno != EINTR) return true;
      if (left >= 0 && Clock::now() >= deadline) return false;
    }
  }

  // A message that cannot go on the connection (it carries rights or a reply right, kNotify):
  // once the stream is numbered it goes through the agents numbered, so that the reader orders
  // it among the direct ones; before that, plain (nullopt: the caller's send).
  std::optional<IpcResult<void>> SendIneligible(Channel::Impl& impl, const Message& message,
                                                FullPolicy policy, Timeout timeout,
                                                std::uint32_t notify_port) {
    if (!path_.sender.numbered()) return std::nullopt;
    return SendNumberedThroughAgents(impl, message, policy, timeout, notify_port);
  }

  // Before a message to this name goes through the agents by another way (send_many,
  // send_receive, a PortWriter's trains: they carry no number): what the reader may not have goes
  // again through the agents ahead of it (the reader drops what it already had), and the stream
  // starts again as a new writer, plain until its first welcome, whose sync then follows that
  // message: nothing sent direct later overtakes it. No wait for the reader: it may be this
  // very thread.
  void Quiesce(Channel::Impl& impl) {
    if (!path_.sender.numbered()) return;
    FallBack(impl);
    path_.sender = StreamSender(NewRandomId());
    sync_due_ = false;
  }

  // The keeper's turn: the acks that came; a broken connection's resend.
  void Keep(Channel::Impl& impl) {
    // A connection still waiting for its welcome is the sender's (the keeper would take the
    // welcome for an ack).
    if (!path_.connection || !path_.sender.direct()) return;
    if (path_.reattached != impl.reattached() || !TakeAcks()) FallBack(impl);
  }

  // At exit: waits until `deadline` for the reader to have every frame, then sends what it
  // still lacks through the agents (waiting for room until `deadline` at most).
  void Flush(Channel::Impl& impl, Clock::time_point deadline) {
    while (path_.connection && !path_.sender.all_received()) {
      if (AwaitAckUntil(deadline, 0) != Waited::kAck) break;
    }
    if (!path_.sender.all_received()) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      FallBack(impl, static_cast<std::uint32_t>(std::max<std::int64_t>(left.count(), 1)));
    }
  }

  bool unreceived() const { return !path_.sender.all_received(); }
  bool connected() const { return path_.connection.has_value(); }

 private:
  bool Fits(std::uint64_t last) const {
    return path_.sender.MaySend(last) && path_.sender.unreceived_bytes() <= kMaxUnreceivedBytes;
  }

  // Asks for a connection, takes the answer and the reader's welcome, each when it has come:
  // never waits for them.
  void TryConnect(Channel::Impl& impl) {
    if (!path_.connection) {
      if (!opening_) {
        if (Clock::now() < open_after_) return;
        ipc::WireWriter body;
        body.U32(name_);
        auto posted = impl.Post(ipc::JobOp::kDirectOpen, body.out());
        if (posted) {
          opening_ = *posted;
        } else {
          open_after_ = Clock::now() + kRefusedFor;
        }
        return;
      }
      impl.ReadIfIdle();
      auto answer = impl.TryCollect(*opening_);
      if (!answer) return;
      opening_.reset();
      if (!*answer || !(*answer)->fd.valid()) {
        open_after_ = Clock::now() + kRefusedFor;  // a plain receiver, a moving one
        return;
      }
      path_.connection.emplace(std::move((*answer)->fd));
      path_.reattached = impl.reattached();
    }
    const bool open = static_cast<bool>(path_.connection->ReadAvailable());
    auto frame = path_.connection->Next();
    if (!frame) {
      if (!open) {
        path_.Drop();
        open_after_ = Clock::now();
      }
      return;
    }
    auto welcome = frame->type == kDirectStreamAck ? ParseStreamAck(frame->payload) : std::nullopt;
    if (!welcome || welcome->writer != 0) {
      path_.Drop();
      open_after_ = Clock::now() + kRefusedFor;
      return;
    }
    // On one node the reader offers shared memory with its welcome: the frames go through it.
    path_.credits = welcome->credits;
    path_.TakeRings(path_.connection->TakePassedFd());
    // Sequences start at 1 and a sync carries one: the first sync takes 1 for itself.
    if (path_.sender.last() == 0) (void)path_.sender.Number();
    const std::uint64_t sync = path_.sender.Welcomed(welcome->credits);
    // Everything before went through the agents: the sync, behind it, tells the reader where
    // this writer's numbering stands; until it comes the reader holds the direct messages.
    if (SendSync(impl, sync)) {
      sync_due_ = false;
    } else {
      // The port died or the agent went away: through the agents, asking again later.
      (void)path_.sender.Broke();
      path_.Drop();
      open_after_ = Clock::now() + kRefusedFor;
    }
  }

  // `message` through the agents with the stream header (the reader strips it) and the caller's
  // policy. A refusal gives its sequence back: the agent did not queue it. A lost answer (the
  // agent went away) may or may not have queued it: the number stays used, and a sync before
  // the next numbered message says the reader need not wait for it.
  IpcResult<void> SendNumberedThroughAgents(Channel::Impl& impl, const Message& message,
                                            FullPolicy policy, Timeout timeout,
                                            std::uint32_t notify_port) {
    if (sync_due_) {
      if (auto synced = SendSync(impl, path_.sender.last()); !synced) return synced;
      sync_due_ = false;
    }
    const std::uint64_t sequence = path_.sender.Number();
    ipc::WireWriter writer(/*share_data=*/true);
    writer.WriteMessageHeader({.destination = message.destination,
                               .destination_disposition = message.destination_disposition,
                               .reply = message.reply,
                               .reply_disposition = message.reply_disposition,
                               .id = message.id,
                               .item_count = static_cast<std::uint32_t>(message.items.size() + 1)});
    writer.U8(static_cast<std::uint8_t>(ItemKind::kBytes));
    writer.Bytes(EncodeStreamHeader({path_.sender.writer(), sequence}));
    writer.WriteItems(message.items);
    writer.U8(static_cast<std::uint8_t>(policy));
    writer.U32(TimeoutMs(timeout));
    writer.U32(notify_port);
    auto sent = impl.Request(ipc::JobOp::kSend, Pieces(writer));
    if (sent) return {};
    if (sent.status() == JobStatus::kUnavailable) {
      sync_due_ = true;
    } else {
      path_.sender.Unnumber();
    }
    return sent.error();
  }

  // "Everything of this writer through `sequence` went before me", through the agents (kWait:
  // the reader must see it).
  IpcResult<void> SendSync(Channel::Impl& impl, std::uint64_t sequence) {
    Message message;
    message.destination = name_;
    message.id = kStreamSyncId;
    message.items.push_back(Item::Bytes(EncodeStreamHeader({path_.sender.writer(), sequence})));
    ipc::SendRequest request;
    request.message = std::move(message);
    request.policy = FullPolicy::kWait;
    request.timeout_ms = ipc::kWaitForever;
    auto sent = impl.Request(ipc::JobOp::kSend, ipc::EncodeSendRequest(request));
    if (!sent) return sent.error();
    return {};
  }

  // Takes the acks that came, without waiting; false when the connection is broken.
  bool TakeAcks() {
    const std::uint64_t before = path_.sender.received_count();
    const bool open = path_.TakeAcks();
    received_total.fetch_add(path_.sender.received_count() - before, std::memory_order_relaxed);
    return open;
  }

  // The connection is gone (or given up): what the reader may not have goes through the agents,
  // numbered, before anything newer; a later send asks for a new connection.
  void FallBack(Channel::Impl& impl, std::uint32_t wait_ms = ipc::kWaitForever) {
    if (path_.connection && path_.sender.direct()) (void)TakeAcks();  // spares frames the resend
    path_.Drop();
    open_after_ = Clock::now();
    std::deque<StreamSender::Frame> frames = path_.sender.Broke();
    ipc::WireWriter train;
    std::uint32_t count = 0;
    const auto ship = [&]() -> bool {
      if (count == 0) return true;
      const std::string header = TrainHeader(FullPolicy::kWait, wait_ms, count);
      const std::string_view pieces[] = {header, train.out()};
      auto answer = ReadTrainAnswer(impl.Request(ipc::JobOp::kSendBatch, pieces));
      train.out().clear();
      count = 0;
      // Refused (the port died) or the agent gone: the rest would be refused as well.
      return answer && !answer->refusal;
    };
    for (const StreamSender::Frame& frame : frames) {
      const bool all = WriteResend(frame, path_.sender.writer(), name_, train,
                                   [&] { return ++count < kResendTrainMessages || ship(); });
      if (!all) return;
    }
    (void)ship();
  }

  const std::weak_ptr<Channel::Impl> impl_;
  const std::uint32_t name_;
  StreamPath path_;                       // the sender, its connection and on one node its rings
  std::optional<std::uint32_t> opening_;  // a posted direct_open
  Clock::time_point open_after_{};
  int sends_since_acks_ = 0;
  bool sync_due_ = false;  // a numbered message through the agents may or may not have gone
};

// Every stream of the process, and the keeper thread.
class Streams {
 public:
  static Streams& Get();

  std::shared_ptr<Stream> Find(std::uint64_t channel, std::uint32_t name) {
    std::lock_guard lock(mu_);
    auto found = streams_.find({channel, name});
    return found == streams_.end() ? nullptr : found->second.stream;
  }

  std::shared_ptr<Stream> FindOrMake(const std::shared_ptr<Channel::Impl>& impl,
                                     std::uint32_t name) {
    std::lock_guard lock(mu_);
    Entry& entry = streams_[{impl->id(), name}];
    if (!entry.stream) {
      entry.stream = std::make_shared<Stream>(impl, name);
      entry.impl = impl;
      direct_sends_made.store(true, std::memory_order_relaxed);
      if (!keeper_started_) {
        keeper_started_ = true;
        std::thread([this] { Keeper(); }).detach();
        std::atexit([] { Streams::Get().FlushAll(); });
      }
    }
    return entry.stream;
  }

  void Forget(std::uint64_t channel, std::uint32_t name) {
    std::lock_guard lock(mu_);
    streams_.erase({channel, name});
  }

 private:
  struct Entry {
    std::shared_ptr<Stream> stream;
    std::weak_ptr<Channel::Impl> impl;
  };
  using Key = std::pair<std::uint64_t, std::uint32_t>;

  struct Turn {
    std::shared_ptr<Stream> stream;
    std::shared_ptr<Channel::Impl> impl;
  };

  // The streams with a live channel (dropping those whose channel is gone).
  std::vector<Turn> Live() {
    std::lock_guard lock(mu_);
    std::vector<Turn> turns;
    for (auto entry = streams_.begin(); entry != streams_.end();) {
      auto impl = entry->second.impl.lock();
      if (!impl) {
        entry = streams_.erase(entry);
        continue;
      }
      turns.push_back({entry->second.stream, std::move(impl)});
      ++entry;
    }
    return turns;
  }

  [[noreturn]] void Keeper() {
    for (std::uint64_t tick = 0;; ++tick) {
      std::this_thread::sleep_for(kKeepEvery);
      const bool all = tick % kIdleLookEvery == 0;
      for (Turn& turn : Live()) {
        // A stream in use is looked at by its sender: the keeper does not wait for it.
        std::unique_lock lock(turn.stream->mu, std::try_to_lock);
        if (!lock.owns_lock()) continue;
        if (all ? turn.stream->connected() : turn.stream->unreceived())
          turn.stream->Keep(*turn.impl);
      }
    }
  }

  void FlushAll() {
    const auto deadline = Clock::now() + kExitWait;
    for (Turn& turn : Live()) {
      // Polled, not a timed lock: ThreadSanitizer (clang 14) does not see pthread_mutex_clocklock
      // take the lock and reported its unlock as a wrong thread's.
      std::unique_lock lock(turn.stream->mu, std::try_to_lock);
      while (!lock.owns_lock() && Clock::now() < deadline) {
        std::this_thread::sleep_for(1ms);
        (void)lock.try_lock();
      }
      if (!lock.owns_lock()) continue;
      turn.stream->Flush(*turn.impl, deadline);
    }
  }

  std::mutex mu_;
  std::map<Key, Entry> streams_;
  bool keeper_started_ = false;
};

// Never destroyed: the keeper and the exit handler use it until the process is gone.
union StreamsStorage {
  StreamsStorage() : value() {}
  ~StreamsStorage() {}  // NOLINT(modernize-use-equals-default): must not destroy `value`
  Streams value;
};
StreamsStorage streams_storage;

Streams& Streams::Get() {
  static const bool registered = [] {
    // A child forked while a thread of its parent held a lock here would hang on it, and it has
    // no keeper: it starts afresh (the parent's streams are the parent's; their storage is
    // reused, not destroyed, as a mutex in it may be held).
    (void)pthread_atfork(nullptr, nullptr, [] { std::construct_at(&streams_storage.value); });
    return true;
  }();
  (void)registered;
  return streams_storage.value;
}

}  // namespace

std::optional<IpcResult<void>> SendDirect(const std::shared_ptr<Channel::Impl>& impl,
                                          const Message& message, FullPolicy policy,
                                          Timeout timeout, std::uint32_t notify_port) {
  static const bool turned_off = TurnedOffByEnvironment();
  // libtern's own protocol messages (an RPC request, reply or ack; a sync) keep their form.
  if (turned_off || (message.id & kProtocolIdMask) == kProtocolIds) return std::nullopt;
  if (Eligible(message, policy)) {
    std::shared_ptr<Stream> stream = Streams::Get().FindOrMake(impl, message.destination);
    std::lock_guard lock(stream->mu);
    return stream->Send(*impl, message, policy, timeout);
  }
  if (!direct_sends_made.load(std::memory_order_relaxed)) return std::nullopt;
  for (const Item& item : message.items) {
    if (item.kind == ItemKind::kPort && item.disposition == Disposition::kMoveSend) {
      RightLeavesSlow(*impl, item.name);
    }
  }
  std::shared_ptr<Stream> stream = Streams::Get().Find(impl->id(), message.destination);
  if (!stream) return std::nullopt;
  std::optional<IpcResult<void>> sent;
  {
    std::lock_guard lock(stream->mu);
    sent = stream->SendIneligible(*impl, message, policy, timeout, notify_port);
  }
  if (message.destination_disposition == Disposition::kMoveSend) {
    // The right left with the message: what went before it was in its place already.
    Streams::Get().Forget(impl->id(), message.destination);
  }
  return sent;
}

void BeforeAgentSendSlow(Channel::Impl& impl, std::uint32_t name) {
  std::shared_ptr<Stream> stream = Streams::Get().Find(impl.id(), name);
  if (!stream) return;
  std::lock_guard lock(stream->mu);
  stream->Quiesce(impl);
}

void RightLeavesSlow(Channel::Impl& impl, std::uint32_t name) {
  std::shared_ptr<Stream> stream = Streams::Get().Find(impl.id(), name);
  if (!stream) return;
  {
    std::lock_guard lock(stream->mu);
    stream->Quiesce(impl);
  }
  Streams::Get().Forget(impl.id(), name);
}

std::uint64_t DirectSendsReceived() { return received_total.load(std::memory_order_relaxed); }

}  // namespace tern::libtern
