// tern::PortWriter: data messages to one port as trains (JobOp::kSendBatch), several on their
// way at once, or over a direct connection to the port's PortReader (docs/ipc.md "Direct
// streams").
//
// The path: plain trains until a connection is welcomed; then a sync through the agents and
// numbered DirectStream frames on the connection, held by the credits; when the connection
// breaks, every frame the reader has not acknowledged goes again through the agents, numbered,
// and the writer asks for a new connection at its next train. On one node the frames go
// through the shared-memory rings the reader offered with its welcome (stream_rings.hpp), the
// socket carrying only bells and the break. StreamSender keeps the protocol state; this file
// does the I/O.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <boost/container/small_vector.hpp>
#include <chrono>
#include <tern/ipc.hpp>
#include <tern/ipc/job_wire.hpp>

#include "channel_impl.hpp"
#include "direct_connection.hpp"
#include "direct_send.hpp"
#include "random_id.hpp"
#include "send_all.hpp"
#include "stream_path.hpp"
#include "stream_rings.hpp"
#include "stream_sender.hpp"
#include "stream_wire.hpp"

namespace tern {

namespace {

using Clock = std::chrono::steady_clock;

// After a refused direct_open (or a connection that broke before its welcome) the stream asks
// again after this long, as a call does.
constexpr auto kRefusedFor = std::chrono::seconds(1);
// The bytes of frames kept for the reader at most, whatever the credits (a socket buffer's
// worth of large messages, not the queue limit's).
constexpr std::size_t kMaxUnreceivedBytes = 32u << 20;

}  // namespace

class PortWriter::Direct : public libtern::StreamPath {
 public:
  std::optional<std::uint32_t> opening;  // a posted direct_open
  Clock::time_point open_after{};
  libtern::StreamFrame frame;  // the frame being gathered
  // The messages `frame` holds at most, set when it starts: a quarter of the window, so that
  // several are on their way (the credits change only as acks are taken, when a frame goes).
  // Through shared memory it depends on where the reader runs (RingFrameMessages): the whole
  // window while the two jobs take turns on one CPU (a turn moves at most one frame each way, so
  // a frame of half the window cost twice the context switches: bench/README.md, tenth
  // session), half of it while they run at once on two (the writer fills a frame while the
  // reader hands out the last: 1.5x the messages a second on an idle machine, twelfth session).
  std::size_t frame_most = 1;
  // ... and its bytes: train_bytes, or through shared memory at least kRingFrameBytes (a
  // window of 1000 small messages, 77 KB at 64 B, is one frame; two fit the reader's buffer).
  std::size_t frame_bytes = 0;
  static constexpr std::size_t kRingFrameBytes = 128u << 10;
  bool switching = false;  // a switch of paths is under way: no other

  // Starts `frame` with the message numbered last (out of line: once a frame).
  [[gnu::noinline]] void StartFrame(const Options& options) {
    frame.Start(Buffer(), sender.writer(), sender.last());
    const std::size_t most =
        rings ? libtern::RingFrameMessages(credits, rings->acks().producer_cpu(), ::sched_getcpu())
              : credits / 4;
    frame_most = std::clamp<std::size_t>(most, 1, std::max<std::size_t>(1, options.train_messages));
    frame_bytes = rings ? std::max(options.train_bytes, kRingFrameBytes) : options.train_bytes;
  }

  // A message of one small data item (under WireWriter::kShareMin), numbered last, into the
  // frame: the common case and the writer's cost per message against a raw socket's, so it goes
  // straight in without the general path's loops over items (the same bytes on the wire). True
  // when the frame is full and must go.
  bool AddSmall(std::uint32_t id, ItemKind kind, std::string_view bytes, const Options& options) {
    if (frame.empty()) StartFrame(options);
    frame.AddOne(id, kind, bytes);
    return frame.count() >= frame_most || frame.size() >= frame_bytes;
  }
};

PortWriter::PortWriter(Channel channel, std::uint32_t port)
    : PortWriter(std::move(channel), port, Options{}) {}

PortWriter::PortWriter(Channel channel, std::uint32_t port, Options options)
    : channel_(std::move(channel)),
      port_(port),
      options_(options),
      train_(std::make_unique<ipc::WireWriter>(/*share_data=*/true)),
      direct_(std::make_unique<Direct>()) {
  if (options_.window == 0) options_.window = 1;
  if (options_.train_messages == 0) options_.train_messages = 1;
}

PortWriter::~PortWriter() {
  (void)flush();
  // A connection asked for and never collected: its fd is closed when the answer comes.
  if (direct_->opening) channel_.impl_->Abandon(*direct_->opening);
}

std::uint64_t PortWriter::accepted() const { return accepted_ + direct_->sender.received_count(); }
std::uint64_t PortWriter::accepted_direct() const { return direct_->sender.received_count(); }

IpcResult<void> PortWriter::write(std::string_view bytes, std::uint32_t id) {
  if (error_) return *error_;
  ++written_;
  const std::uint64_t sequence = direct_->sender.Number();
  if (direct_->sender.direct() && bytes.size() < ipc::WireWriter::kShareMin) {
    if (direct_->AddSmall(id, ItemKind::kBytes, bytes, options_)) return SendFrame();
    return {};
  }
  if (direct_->sender.direct()) return WriteDirect(id, bytes, nullptr);
  AddToTrain(sequence, id, bytes, nullptr);
  return Added();
}

// The common case, a message of one small data item on a direct stream, in as few
// instructions as it takes (bench/README.md, eleventh session): everything else, and the frame's
// start, out of line, so that this path saves and restores no registers it does not use.
IpcResult<void> PortWriter::write(const Message& message) {
  Direct& d = *direct_;
  if (message.items.size() == 1 && d.sender.direct() && !d.frame.empty() && !error_) {
    const Item& item = message.items.front();
    const std::string_view bytes = item.bytes();
    if ((item.kind == ItemKind::kBytes || item.kind == ItemKind::kOutOfLine) &&
        bytes.size() < ipc::WireWriter::kShareMin) {
      ++written_;
      (void)d.sender.Number();
      d.frame.AddOne(message.id, item.kind, bytes);
      if (d.frame.count() >= d.frame_most || d.frame.size() >= d.frame_bytes) return SendFrame();
      return {};
    }
  }
  return WriteGeneral(message);
}

IpcResult<void> PortWriter::WriteGeneral(const Message& message) {
  if (error_) return *error_;
  if (direct_->sender.direct() && message.items.size() == 1) {
    const Item& item = message.items.front();
    const std::string_view bytes = item.bytes();
    if ((item.kind == ItemKind::kBytes || item.kind == ItemKind::kOutOfLine) &&
        bytes.size() < ipc::WireWriter::kShareMin) {
      ++written_;
      (void)direct_->sender.Number();
      if (direct_->AddSmall(message.id, item.kind, bytes, options_)) return SendFrame();
      return {};
    }
  }
  for (const Item& item : message.items) {
    if (item.kind != ItemKind::kBytes && item.kind != ItemKind::kOutOfLine) {
      return IpcError{JobStatus::kBadRequest,
                      "PortWriter carries data only (bytes, out-of-line); send rights with send"};
    }
  }
  ++written_;
  const std::uint64_t sequence = direct_->sender.Number();
  if (direct_->sender.direct()) return WriteDirect(message.id, {}, &message);
  AddToTrain(sequence, message.id, {}, &message);
  return Added();
}

void PortWriter::AddToTrain(std::uint64_t sequence, std::uint32_t id, std::string_view bytes,
                            const Message* message) {
  // Numbered once the writer has gone direct: the reader then orders both paths by sequence.
  const bool numbered = direct_->sender.numbered();
  const auto items = static_cast<std::uint32_t>(message ? message->items.size() : 1);
  train_->WriteMessageHeader(
      {.destination = port_, .id = id, .item_count = items + (numbered ? 1 : 0)});
  if (numbered) {
    train_->U8(static_cast<std::uint8_t>(ItemKind::kBytes));
    train_->Bytes(libtern::EncodeStreamHeader({direct_->sender.writer(), sequence}));
  }
  if (message) {
    train_->WriteItems(message->items);
  } else {
    train_->U8(static_cast<std::uint8_t>(ItemKind::kBytes));
    train_->Borrowed(bytes);  // a large one is written from the caller's buffer, in Added()
  }
}

// One more message is in the train: it leaves when full, or at once when it holds data it
// did not copy (the caller's, valid only until write() returns).
IpcResult<void> PortWriter::Added() {
  ++train_count_;
  if (train_count_ >= options_.train_messages || train_->out().size() >= options_.train_bytes ||
      !train_->shared().empty()) {
    return Ship();
  }
  return {};
}

IpcResult<void> PortWriter::Ship() {
  if (train_count_ != 0) {
    while (in_flight_.size() >= options_.window && !error_) CollectOldest();
    if (error_) {
      *train_ = ipc::WireWriter(/*share_data=*/true);  // holds no view of the caller's data
      train_count_ = 0;
      train_syncs_ = 0;
      return *error_;
    }
    // A stream never drops: a full queue holds the train at the port's home until there is
    // room.
    const std::string header = libtern::TrainHeader(FullPolicy::kWait, ipc::kWaitForever,
                                                    static_cast<std::uint32_t>(train_count_));
    std::vector<std::string_view> pieces{header};
    for (std::string_view piece : libtern::Pieces(*train_)) pieces.push_back(piece);
    libtern::NoteAgentSend(*channel_.impl_, port_);
    libtern::BeforeAgentSend(*channel_.impl_, port_);
    auto request = channel_.impl_->Post(ipc::JobOp::kSendBatch, pieces);
    train_->out().clear();
    train_->shared().clear();
    train_count_ = 0;
    const std::size_t syncs = std::exchange(train_syncs_, 0);
    if (!request) {
      error_ = request.error();
      return *error_;
    }
    in_flight_.push_back({*request, syncs});
  }
  if (options_.direct && !direct_->switching) TryDirect();
  return {};
}

// Waits for the oldest train's answer.
void PortWriter::CollectOldest() {
  const InFlight oldest = in_flight_.front();
  in_flight_.pop_front();
  auto answer = libtern::ReadTrainAnswer(channel_.impl_->Collect(oldest.request));
  if (!answer) {
    if (!error_) error_ = answer.error();
    return;
  }
  accepted_ += answer->accepted - std::min<std::uint64_t>(oldest.syncs, answer->accepted);
  if (answer->refusal && !error_) error_ = std::move(answer->refusal);
}

IpcResult<void> PortWriter::flush() {
  for (;;) {
    if (!error_) {
      if (!direct_->frame.empty()) (void)SendFrame();
      (void)Ship();
    }
    // Every answer is taken, after an error too, so that accepted() is final.
    while (!in_flight_.empty()) CollectOldest();
    if (error_) return *error_;
    // What went on the connection is flushed once the reader has it.
    if (!direct_->sender.direct() || direct_->sender.all_received()) return {};
    if (!direct_->AwaitAck()) (void)FallBack();
  }
}

// The direct path ---------------------------------------------------------------------------

void PortWriter::TryDirect() {
  Direct& d = *direct_;
  if (d.sender.direct()) return;
  if (!d.connection) {
    if (!d.opening) {
      if (Clock::now() < d.open_after) return;
      ipc::WireWriter body;
      body.U32(port_);
      auto posted = channel_.impl_->Post(ipc::JobOp::kDirectOpen, body.out());
      if (posted) {
        d.opening = *posted;
      } else {
        d.open_after = Clock::now() + kRefusedFor;
      }
      return;
    }
    // Nobody may be reading the channel (every train answered): read its answer here.
    channel_.impl_->ReadIfIdle();
    auto answer = channel_.impl_->TryCollect(*d.opening);
    if (!answer) return;
    d.opening.reset();
    auto& result = *answer;
    if (!result || !result->fd.valid()) {
      // The receiver takes no direct traffic (never opted in, moving, an old agent).
      d.open_after = Clock::now() + kRefusedFor;
      return;
    }
    d.connection.emplace(std::move(result->fd));
    d.reattached = channel_.impl_->reattached();
  }
  // The connection waits for its welcome: only a PortReader sends one.
  const bool open = static_cast<bool>(d.connection->ReadAvailable());
  auto frame = d.connection->Next();
  if (!frame) {
    if (!open) {
      // Broken before its welcome (revoked, the reader moving): the reader did accept, so ask
      // again at the next train; a refusal then waits.
      d.connection.reset();
      d.open_after = Clock::now();
    }
    return;
  }
  auto welcome = frame->type == libtern::kDirectStreamAck ? libtern::ParseStreamAck(frame->payload)
                                                          : std::nullopt;
  if (!welcome || welcome->writer != 0) {
    d.connection.reset();
    d.open_after = Clock::now() + kRefusedFor;
    return;
  }
  // Everything so far went through the agents (Ship just sent the last of it): the sync tells
  // the reader where this writer's numbering stands, then the connection carries the rest.
  // On one node the welcome brings shared memory: taken, and said with the first bell.
  d.TakeRings(d.connection->TakePassedFd());
  d.switching = true;
  d.credits = welcome->credits;
  const std::uint64_t sync = d.sender.Welcomed(welcome->credits);
  train_->WriteMessageHeader({.destination = port_, .id = libtern::kStreamSyncId, .item_count = 1});
  train_->U8(static_cast<std::uint8_t>(ItemKind::kBytes));
  train_->Bytes(libtern::EncodeStreamHeader({d.sender.writer(), sync}));
  ++train_count_;
  ++train_syncs_;
  (void)Ship();
  d.switching = false;
}

IpcResult<void> PortWriter::WriteDirect(std::uint32_t id, std::string_view bytes,
                                        const Message* message) {
  Direct& d = *direct_;
  if (d.frame.empty()) d.StartFrame(options_);
  std::size_t size = bytes.size();
  if (message) {
    d.frame.Add(id, message->items);
    size = 0;
    for (const Item& item : message->items) size += item.bytes().size();
  } else {
    d.frame.Add(id, bytes);
  }
  if (d.frame.count() >= d.frame_most || d.frame.size() >= d.frame_bytes ||
      size >= ipc::WireWriter::kShareMin) {
    return SendFrame();
  }
  return {};
}

IpcResult<void> PortWriter::SendFrame() {
  Direct& d = *direct_;
  if (d.frame.empty()) return {};
  const std::uint64_t last = d.frame.first() + d.frame.count() - 1;
  bool ok = d.reattached == channel_.impl_->reattached() && d.TakeAcks(/*socket=*/false);
  // A full window holds the writer, as a full queue does, until the reader has handed out
  // enough for the whole frame (too many bytes unreceived: until the next ack).
  while (ok && (!d.sender.MaySend(last) || d.sender.unreceived_bytes() > kMaxUnreceivedBytes)) {
    ok = d.AwaitAck(d.sender.MaySend(last) ? 0 : d.sender.HandedFor(last));
  }
  const std::uint64_t first = d.frame.first();
  const std::uint32_t count = d.frame.count();
  libtern::StreamFrameBytes bytes = d.frame.Finish();
  if (ok) {
    // Large items go from their owners' buffers, gathered, as a direct call's do.
    boost::container::small_vector<std::string_view, 8> pieces;
    ipc::ForEachPiece(
        bytes.out, bytes.shared, [&](std::string_view piece) { pieces.push_back(piece); },
        [&](const ipc::SharedSpan& span) { pieces.push_back(span.bytes); });
    ok = d.rings ? d.WriteToRing({pieces.data(), pieces.size()})
                 : libtern::SendAll(d.connection->fd(), {pieces.data(), pieces.size()}) == 0;
  }
  d.sender.Sent({first, count, std::move(bytes)});
  if (!ok) return FallBack();
  return {};
}

IpcResult<void> PortWriter::FallBack() {
  Direct& d = *direct_;
  // The acks that came before the break spare their frames the resend.
  if (d.connection) (void)d.TakeAcks();
  d.Drop();
  std::deque<libtern::StreamSender::Frame> frames = d.sender.Broke();
  if (!d.frame.empty()) {
    const std::uint64_t first = d.frame.first();
    const std::uint32_t count = d.frame.count();
    frames.push_back({first, count, d.frame.Finish()});
  }
  // Ask again at the next train (a refusal waits a second).
  d.open_after = Clock::now();
  // What the reader may not have goes through the agents, numbered, before anything newer
  // (and before any sync: TryDirect waits until the resend is out).
  d.switching = true;
  // Small items are copied; a large one leaves at once (Added), while the frame's copy lives.
  IpcResult<void> added;
  for (const auto& frame : frames) {
    const bool all = libtern::WriteResend(frame, d.sender.writer(), port_, *train_, [&] {
      added = Added();
      return static_cast<bool>(added);
    });
    if (!all) {
      d.switching = false;
      return added;
    }
  }
  auto shipped = Ship();
  d.switching = false;
  for (auto& frame : frames) {
    if (d.spare.size() < libtern::StreamPath::kSpareFrames)
      d.spare.push_back(std::move(frame.bytes.out));
  }
  return shipped;
}

}  // namespace tern
