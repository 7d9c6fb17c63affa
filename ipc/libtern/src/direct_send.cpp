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

  std::timed_mutex mu;

  std::optional<IpcResult<void>> Send(Channel::Impl& impl, const Message& message,
                                      FullPolicy policy, Timeout timeout) {
    if (connection_ && reattached_ != impl.reattached()) FallBack(impl);
    if (!sender_.direct()) {
      TryConnect(impl);
      if (!sender_.direct()) {
        if (!sender_.numbered()) return std::nullopt;
        return SendNumberedThroughAgents(impl, message, policy, timeout, 0);
      }
    }
    // A broken connection: what the reader lacks goes again through the agents, and so does
    // this message, numbered after it.
    const auto broken = [&] {
      FallBack(impl);
      return SendNumberedThroughAgents(impl, message, policy, timeout, 0);
    };
    const std::uint64_t next = sender_.last() + 1;
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
      auto frame = connection_->Read(deadline);
      if (!frame) return broken();
      if (!*frame) {
        return IpcError{JobStatus::kTimedOut,
                        "the receiver did not take messages to make room in time"};
      }
      if (!TakeAck(**frame)) return broken();
    }
    // The socket's buffer must take the frame without blocking a send that may not wait: with
    // many frames unreceived, look first (a reader that takes nothing fills it before the window
    // when the port's limit is large).
    if (sender_.unreceived_frames() >= kLookForRoomAbove ||
        sender_.unreceived_bytes() >= kLookForRoomBytes) {
      if (!Writable(deadline)) {
        return policy != FullPolicy::kWait
                   ? IpcError{JobStatus::kQueueFull,
                              "the connection to the receiver is full (it takes nothing)"}
                   : IpcError{JobStatus::kTimedOut,
                              "the receiver did not take messages to make room in time"};
      }
    }
    const std::uint64_t sequence = sender_.Number();
    StreamFrame frame;
    frame.Start(SpareBuffer(), sender_.writer(), sequence);
    frame.Add(message.id, message.items);
    StreamFrameBytes bytes = frame.Finish();
    boost::container::small_vector<std::string_view, 4> pieces;
    ipc::ForEachPiece(
        bytes.out, bytes.shared, [&](std::string_view piece) { pieces.push_back(piece); },
        [&](const ipc::SharedSpan& span) { pieces.push_back(span.bytes); });
    const bool written = SendAll(connection_->fd(), {pieces.data(), pieces.size()}) == 0;
    sender_.Sent({sequence, 1, std::move(bytes)});
    // A write that failed: the message is among the frames resent through the agents.
    if (!written) FallBack(impl);
    return IpcResult<void>{};
  }

  // Whether the socket takes more (or is broken: the write then says so), waiting until
  // `deadline` at most.
  bool Writable(Clock::time_point deadline) {
    for (;;) {
      pollfd socket{connection_->fd(), POLLOUT, 0};
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
    if (!sender_.numbered()) return std::nullopt;
    return SendNumberedThroughAgents(impl, message, policy, timeout, notify_port);
  }

  // Before a message to this name goes through the agents by another way (send_many,
  // send_receive, a PortWriter's trains: they carry no number): what the reader may not have goes
  // again through the agents ahead of it (the reader drops what it already had), and the stream
  // starts again as a new writer, plain until its first welcome, whose sync then follows that
  // message: nothing sent direct later overtakes it. No wait for the reader: it may be this
  // very thread.
  void Quiesce(Channel::Impl& impl) {
    if (!sender_.numbered()) return;
    FallBack(impl);
    sender_ = StreamSender(NewRandomId());
    sync_due_ = false;
  }

  // The keeper's turn: the acks that came; a broken connection's resend.
  void Keep(Channel::Impl& impl) {
    // A connection still waiting for its welcome is the sender's (the keeper would take the
    // welcome for an ack).
    if (!connection_ || !sender_.direct()) return;
    if (reattached_ != impl.reattached() || !TakeAcks()) FallBack(impl);
  }

  // At exit: waits until `deadline` for the reader to have every frame, then sends what it
  // still lacks through the agents (waiting for room until `deadline` at most).
  void Flush(Channel::Impl& impl, Clock::time_point deadline) {
    while (connection_ && !sender_.all_received()) {
      auto frame = connection_->Read(deadline);
      if (!frame || !*frame || !TakeAck(**frame)) break;
    }
    if (!sender_.all_received()) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      FallBack(impl, static_cast<std::uint32_t>(std::max<std::int64_t>(left.count(), 1)));
    }
  }

  bool unreceived() const { return !sender_.all_received(); }
  bool connected() const { return connection_.has_value(); }

 private:
  bool Fits(std::uint64_t last) const {
    return sender_.MaySend(last) && sender_.unreceived_bytes() <= kMaxUnreceivedBytes;
  }

  // Asks for a connection, takes the answer and the reader's welcome, each when it has come:
  // never waits for them.
  void TryConnect(Channel::Impl& impl) {
    if (!connection_) {
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
      connection_.emplace(std::move((*answer)->fd));
      reattached_ = impl.reattached();
    }
    const bool open = static_cast<bool>(connection_->ReadAvailable());
    auto frame = connection_->Next();
    if (!frame) {
      if (!open) {
        connection_.reset();
        open_after_ = Clock::now();
      }
      return;
    }
    auto welcome = frame->type == kDirectStreamAck ? ParseStreamAck(frame->payload) : std::nullopt;
    if (!welcome || welcome->writer != 0) {
      connection_.reset();
      open_after_ = Clock::now() + kRefusedFor;
      return;
    }
    // The reader offers shared memory with its welcome; a message a frame goes on the socket
    // (the reader reads the socket until the writer rings from the rings).
    (void)connection_->TakePassedFd();
    // Sequences start at 1 and a sync carries one: the first sync takes 1 for itself.
    if (sender_.last() == 0) (void)sender_.Number();
    const std::uint64_t sync = sender_.Welcomed(welcome->credits);
    // Everything before went through the agents: the sync, behind it, tells the reader where
    // this writer's numbering stands; until it comes the reader holds the direct messages.
    if (SendSync(impl, sync)) {
      sync_due_ = false;
    } else {
      // The port died or the agent went away: through the agents, asking again later.
      (void)sender_.Broke();
      connection_.reset();
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
      if (auto synced = SendSync(impl, sender_.last()); !synced) return synced;
      sync_due_ = false;
    }
    const std::uint64_t sequence = sender_.Number();
    ipc::WireWriter writer(/*share_data=*/true);
    writer.WriteMessageHeader({.destination = message.destination,
                               .destination_disposition = message.destination_disposition,
                               .reply = message.reply,
                               .reply_disposition = message.reply_disposition,
                               .id = message.id,
                               .item_count = static_cast<std::uint32_t>(message.items.size() + 1)});
    writer.U8(static_cast<std::uint8_t>(ItemKind::kBytes));
    writer.Bytes(EncodeStreamHeader({sender_.writer(), sequence}));
    writer.WriteItems(message.items);
    writer.U8(static_cast<std::uint8_t>(policy));
    writer.U32(TimeoutMs(timeout));
    writer.U32(notify_port);
    auto sent = impl.Request(ipc::JobOp::kSend, Pieces(writer));
    if (sent) return {};
    if (sent.status() == JobStatus::kUnavailable) {
      sync_due_ = true;
    } else {
      sender_.Unnumber();
    }
    return sent.error();
  }

  // "Everything of this writer through `sequence` went before me", through the agents (kWait:
  // the reader must see it).
  IpcResult<void> SendSync(Channel::Impl& impl, std::uint64_t sequence) {
    Message message;
    message.destination = name_;
    message.id = kStreamSyncId;
    message.items.push_back(Item::Bytes(EncodeStreamHeader({sender_.writer(), sequence})));
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
    if (!connection_) return false;
    const bool open = static_cast<bool>(connection_->ReadAvailable());
    while (auto frame = connection_->Next()) {
      if (!TakeAck(*frame)) return false;
    }
    return open;
  }

  bool TakeAck(const ipc::Frame& frame) {
    if (frame.type == kDirectStreamBell) return true;
    if (frame.type != kDirectStreamAck) return false;
    auto ack = ParseStreamAck(frame.payload);
    if (!ack) return false;
    if (ack->writer == 0) return true;  // a welcome again
    const std::uint64_t before = sender_.received_count();
    std::vector<std::string> freed;
    if (!sender_.Acked(*ack, freed)) return false;
    received_total.fetch_add(sender_.received_count() - before, std::memory_order_relaxed);
    for (std::string& buffer : freed) {
      if (spare_.size() < 4) spare_.push_back(std::move(buffer));
    }
    return true;
  }

  // The connection is gone (or given up): what the reader may not have goes through the agents,
  // numbered, before anything newer; a later send asks for a new connection.
  void FallBack(Channel::Impl& impl, std::uint32_t wait_ms = ipc::kWaitForever) {
    if (connection_) (void)TakeAcks();  // spares frames the resend
    connection_.reset();
    open_after_ = Clock::now();
    std::deque<StreamSender::Frame> frames = sender_.Broke();
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
    std::vector<ItemView> items;
    for (const StreamSender::Frame& frame : frames) {
      const std::string whole = frame.bytes.Joined();  // rare: the connection broke
      auto view = ParseStreamFrame(std::string_view(whole).substr(ipc::kFrameHeaderSize));
      if (!view) continue;  // written here: cannot happen
      for (std::size_t i = 0; i < view->messages.size(); ++i) {
        items.clear();
        if (!ReadStreamItems(view->messages[i].body, items)) continue;
        train.WriteMessageHeader({.destination = name_,
                                  .id = view->messages[i].id,
                                  .item_count = static_cast<std::uint32_t>(items.size() + 1)});
        train.U8(static_cast<std::uint8_t>(ItemKind::kBytes));
        train.Bytes(EncodeStreamHeader({sender_.writer(), view->first + i}));
        for (const ItemView& item : items) {
          train.U8(static_cast<std::uint8_t>(item.kind));
          train.Bytes(item.bytes);
        }
        if (++count >= kResendTrainMessages && !ship()) return;
      }
    }
    (void)ship();
  }

  std::string SpareBuffer() {
    if (spare_.empty()) return {};
    std::string buffer = std::move(spare_.back());
    spare_.pop_back();
    return buffer;
  }

  const std::weak_ptr<Channel::Impl> impl_;
  const std::uint32_t name_;
  StreamSender sender_{NewRandomId()};
  std::optional<std::uint32_t> opening_;  // a posted direct_open
  Clock::time_point open_after_{};
  std::optional<DirectConnection> connection_;
  std::uint64_t reattached_ = 0;
  int sends_since_acks_ = 0;
  bool sync_due_ = false;  // a numbered message through the agents may or may not have gone
  std::vector<std::string> spare_;
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
      std::unique_lock lock(turn.stream->mu, std::defer_lock);
      if (!lock.try_lock_until(deadline)) continue;
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
