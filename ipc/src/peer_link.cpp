#include "tern/ipc/peer_link.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>

namespace tern::ipc {

namespace asio = boost::asio;
using Tcp = asio::ip::tcp;

namespace {

constexpr auto kCloseLinger = std::chrono::seconds(1);

std::string RemoteOf(const Tcp::socket& socket) {
  boost::system::error_code error;
  const auto endpoint = socket.remote_endpoint(error);
  if (error) return "?";
  const auto address = endpoint.address();
  return (address.is_v6() ? "[" + address.to_string() + "]" : address.to_string()) + ":" +
         std::to_string(endpoint.port());
}

}  // namespace

std::string_view CloseKindName(PeerLink::CloseKind kind) {
  switch (kind) {
    case PeerLink::CloseKind::kClosed:
      return "closed";
    case PeerLink::CloseKind::kRefusedByUs:
      return "refused by us";
    case PeerLink::CloseKind::kRefusedByPeer:
      return "refused by peer";
  }
  return "unknown";
}

PeerLink::PeerLink(Tcp::socket socket, Options options, Callbacks callbacks)
    : executor_(socket.get_executor()),
      socket_(std::move(socket)),
      timer_(executor_),
      options_(std::move(options)),
      callbacks_(std::move(callbacks)),
      handshake_(options_.self, options_.secret),
      decoder_(options_.max_payload),
      remote_(RemoteOf(socket_)) {}

void PeerLink::Start() {
  boost::system::error_code ignored;
  socket_.set_option(Tcp::no_delay(true), ignored);
  timer_.expires_after(options_.handshake_timeout);
  timer_.async_wait([self = shared_from_this()](const boost::system::error_code& error) {
    if (error || self->state_ != State::kHandshaking) return;
    self->CloseNow("handshake timed out after " +
                       std::to_string(self->options_.handshake_timeout.count()) + " ms in state " +
                       std::string(HandshakeStateName(self->handshake_.state())),
                   CloseKind::kRefusedByUs, /*flush=*/false);
  });
  for (const Frame& frame : handshake_.Start().send) Enqueue(frame.type, frame.payload);
  DoRead();
}

void PeerLink::Send(FrameType type, std::string payload) {
  std::vector<Frame> one;
  one.push_back({type, std::move(payload)});
  Send(std::move(one));
}

void PeerLink::Send(std::vector<Frame> frames) {
  std::size_t bytes = 0;
  for (const Frame& frame : frames) bytes += kFrameHeaderSize + frame.payload.size();
  posted_ += bytes;
  // Mutable: the payloads move on into the queue (a large one is never copied).
  asio::post(executor_, [self = shared_from_this(), frames = std::move(frames), bytes]() mutable {
    self->posted_ -= bytes;
    for (Frame& frame : frames) {
      if (!self->Accept(frame.type, frame.payload)) return;
    }
    if (self->state_ == State::kEstablished) self->DoWrite();
  });
}

bool PeerLink::Accept(FrameType type, std::string& payload) {
  if (state_ == State::kClosed) return false;
  if (payload.size() > options_.max_payload) {
    const std::string reason = "cannot send a " + std::string(FrameTypeName(type)) + " frame of " +
                               std::to_string(payload.size()) + " bytes: over the frame limit of " +
                               std::to_string(options_.max_payload);
    spdlog::warn("closing link to {}: {}", remote_, reason);
    CloseNow(reason, CloseKind::kClosed, /*flush=*/false);
    return false;
  }
  if (state_ == State::kHandshaking) {
    if (held_.size() + queued_bytes_ + payload.size() > options_.max_queued_bytes) {
      CloseNow("send queue full while authenticating", CloseKind::kClosed, false);
      return false;
    }
    AppendFrame(held_, type, payload);
    return true;
  }
  Enqueue(type, std::move(payload), /*write_now=*/false);
  return state_ != State::kClosed;
}

void PeerLink::Close(std::string reason) {
  asio::post(executor_, [self = shared_from_this(), reason = std::move(reason)] {
    self->CloseNow(reason, CloseKind::kClosed, /*flush=*/true);
  });
}

void PeerLink::Enqueue(FrameType type, std::string payload, bool write_now) {
  if (state_ == State::kClosed) return;
  const std::size_t size = kFrameHeaderSize + payload.size();
  if (queued_bytes_ + writing_bytes_ + size > options_.max_queued_bytes) {
    const std::string reason = "send queue full (" + std::to_string(options_.max_queued_bytes) +
                               " bytes unsent): the peer reads too slowly";
    spdlog::warn("closing link to {} ({}): {}", peer().name, remote_, reason);
    CloseNow(reason, CloseKind::kClosed, /*flush=*/false);
    return;
  }
  if (queued_.empty() || queued_.back().size() >= kDirectPayload) queued_.emplace_back();
  AppendFrameHeader(queued_.back(), type, static_cast<std::uint32_t>(payload.size()));
  if (payload.size() >= kDirectPayload) {
    queued_.push_back(std::move(payload));
  } else {
    queued_.back().append(payload);
  }
  queued_bytes_ += size;
  PublishUnsent();
  if (write_now) DoWrite();
}

void PeerLink::DoWrite() {
  if (write_in_flight_ || queued_.empty()) return;
  // Everything queued so far goes out in this one write; what arrives meanwhile, in the next.
  writing_.swap(queued_);
  queued_.clear();
  writing_bytes_ = std::exchange(queued_bytes_, 0);
  std::vector<asio::const_buffer> buffers;
  buffers.reserve(writing_.size());
  for (const std::string& piece : writing_) buffers.push_back(asio::buffer(piece));
  write_in_flight_ = true;
  asio::async_write(socket_, buffers,
                    [self = shared_from_this()](const boost::system::error_code& error,
                                                std::size_t) { self->OnWrite(error); });
}

void PeerLink::OnWrite(const boost::system::error_code& error) {
  write_in_flight_ = false;
  writing_.clear();
  writing_bytes_ = 0;
  PublishUnsent();
  if (error) {
    if (lingering_) return FinishClose();
    CloseNow("write failed: " + error.message(), CloseKind::kClosed, /*flush=*/false);
    return;
  }
  DoWrite();
  if (lingering_ && !write_in_flight_) FinishClose();
}

// Reads straight into the decoder: a large frame lands in its own payload, never copied.
void PeerLink::DoRead() {
  const std::span<char> space = decoder_.Prepare();
  socket_.async_read_some(
      asio::buffer(space.data(), space.size()),
      [self = shared_from_this()](const boost::system::error_code& error, std::size_t size) {
        self->OnRead(error, size);
      });
}

void PeerLink::OnRead(const boost::system::error_code& error, std::size_t size) {
  if (state_ == State::kClosed) return;
  if (error) {
    std::string reason = error == asio::error::eof ? "connection closed by the peer"
                                                   : "read failed: " + error.message();
    if (state_ == State::kHandshaking) reason += " during the handshake";
    CloseNow(reason, CloseKind::kClosed, /*flush=*/false);
    return;
  }
  const auto fed = decoder_.Commit(size);
  // Frames completed before a malformed header are still handled, then the link closes.
  while (auto frame = decoder_.Next()) {
    if (state_ == State::kHandshaking) {
      OnHandshakeFrame(*frame);
    } else if (state_ == State::kEstablished && callbacks_.on_frame) {
      callbacks_.on_frame(*this, std::move(*frame));
    }
    if (state_ == State::kClosed) return;
  }
  if (!fed) {
    spdlog::warn("closing link to {} ({}): {}", peer().name.empty() ? "?" : peer().name, remote_,
                 fed.error().message);
    CloseNow(fed.error().message,
             state_ == State::kHandshaking ? CloseKind::kRefusedByUs : CloseKind::kClosed,
             /*flush=*/false);
    return;
  }
  DoRead();
}

void PeerLink::OnHandshakeFrame(const Frame& frame) {
  PeerHandshake::Actions actions = handshake_.OnFrame(frame);
  for (const Frame& reply : actions.send) Enqueue(reply.type, reply.payload);
  if (state_ == State::kClosed) return;
  switch (actions.outcome) {
    case PeerHandshake::Outcome::kPending:
      return;
    case PeerHandshake::Outcome::kRefused:
      CloseNow(actions.reason,
               actions.refused_by_peer ? CloseKind::kRefusedByPeer : CloseKind::kRefusedByUs,
               /*flush=*/!actions.refused_by_peer);
      return;
    case PeerHandshake::Outcome::kEstablished:
      state_ = State::kEstablished;
      timer_.cancel();
      if (!held_.empty()) {
        // Frames sent while authenticating: they follow our AuthAccepted, in order.
        std::string held;
        held.swap(held_);
        if (queued_bytes_ + writing_bytes_ + held.size() > options_.max_queued_bytes) {
          CloseNow("send queue full", CloseKind::kClosed, false);
          return;
        }
        queued_bytes_ += held.size();
        queued_.push_back(std::move(held));
        PublishUnsent();
      }
      if (callbacks_.on_established) callbacks_.on_established(*this, actions.peer);
      if (state_ == State::kEstablished) DoWrite();
      return;
  }
}

void PeerLink::CloseNow(const std::string& reason, CloseKind kind, bool flush) {
  if (state_ == State::kClosed) return;
  state_ = State::kClosed;
  timer_.cancel();
  held_.clear();
  boost::system::error_code ignored;
  if (flush && (write_in_flight_ || !queued_.empty())) {
    // Let the last frames (an AuthRefused, say) reach the peer, for at most kCloseLinger.
    lingering_ = true;
    socket_.shutdown(Tcp::socket::shutdown_receive, ignored);
    DoWrite();
    timer_.expires_after(kCloseLinger);
    timer_.async_wait([self = shared_from_this()](const boost::system::error_code& error) {
      if (!error) self->FinishClose();
    });
  } else {
    FinishClose();
  }
  // The last callback: move them out so that what they captured is released with them.
  Callbacks callbacks = std::move(callbacks_);
  callbacks_ = {};
  if (callbacks.on_closed) callbacks.on_closed(*this, reason, kind);
}

void PeerLink::FinishClose() {
  lingering_ = false;
  queued_.clear();
  queued_bytes_ = 0;
  PublishUnsent();
  timer_.cancel();
  boost::system::error_code ignored;
  socket_.shutdown(Tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
}

}  // namespace tern::ipc
