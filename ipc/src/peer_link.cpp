#include "tern/ipc/peer_link.hpp"

#include <openssl/err.h>
#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/write.hpp>
#include <stdexcept>
#include <tern/ipc/tls_files.hpp>

namespace tern::ipc {

namespace asio = boost::asio;
using Tcp = asio::ip::tcp;

namespace {

constexpr auto kCloseLinger = std::chrono::seconds(1);
// Handshake-phase reads: a Hello fits; nothing the peer sends before it is authenticated
// makes us hold more than about twice this.
constexpr std::size_t kHandshakeReadSize = 4096;
constexpr char kExporterLabel[] = "EXPORTER-tern-peer-auth";

std::shared_ptr<boost::asio::ssl::context> Required(
    const std::shared_ptr<boost::asio::ssl::context>& tls) {
  if (!tls) throw std::invalid_argument("PeerLink needs a TLS context");
  return tls;
}

// A TLS failure in words, and whether it was the peer that refused us (its alert) rather than
// our verification of its certificate.
std::pair<std::string, bool> DescribeTlsError(const boost::system::error_code& error) {
  std::string text = error.message();  // OpenSSL's reason, e.g. "certificate verify failed"
  ERR_clear_error();
  const bool alert_from_peer = text.find("alert") != std::string::npos;
  return {text, alert_from_peer};
}

std::string RemoteOf(const Tcp::socket& socket) {
  boost::system::error_code error;
  const auto endpoint = socket.remote_endpoint(error);
  if (error) return "?";
  const auto address = endpoint.address();
  return (address.is_v6() ? "[" + address.to_string() + "]" : address.to_string()) + ":" +
         std::to_string(endpoint.port());
}

}  // namespace

std::string PeerChannelBinding(SSL* ssl) {
  unsigned char out[32];
  if (ssl == nullptr || SSL_export_keying_material(ssl, out, sizeof out, kExporterLabel,
                                                   sizeof kExporterLabel - 1, nullptr, 0, 0) != 1) {
    ERR_clear_error();
    return "";
  }
  return std::string(reinterpret_cast<const char*>(out), sizeof out);
}

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
      tls_(Required(options.tls)),
      stream_(std::move(socket), *tls_),
      timer_(executor_),
      options_(std::move(options)),
      callbacks_(std::move(callbacks)),
      handshake_(options_.self, options_.secret),
      decoder_(options_.max_payload),
      remote_(RemoteOf(stream_.next_layer())) {}

void PeerLink::Start() {
  boost::system::error_code ignored;
  stream_.next_layer().set_option(Tcp::no_delay(true), ignored);
  timer_.expires_after(options_.handshake_timeout);
  timer_.async_wait([self = shared_from_this()](const boost::system::error_code& error) {
    if (error || self->state_ != State::kHandshaking) return;
    self->CloseNow("handshake timed out after " +
                       std::to_string(self->options_.handshake_timeout.count()) + " ms in state " +
                       std::string(HandshakeStateName(self->handshake_.state())),
                   CloseKind::kRefusedByUs, /*flush=*/false);
  });
  stream_.async_handshake(options_.initiated_by_us ? Stream::client : Stream::server,
                          [self = shared_from_this()](const boost::system::error_code& error) {
                            self->OnTlsHandshake(error);
                          });
}

void PeerLink::OnTlsHandshake(const boost::system::error_code& error) {
  if (state_ == State::kClosed) return;
  if (error) {
    if (error.category() != asio::error::get_ssl_category()) {
      // EOF, a reset, a truncated stream: the connection ended, nobody refused anybody.
      CloseNow("connection closed during the TLS handshake: " + error.message(), CloseKind::kClosed,
               /*flush=*/false);
      return;
    }
    auto [text, by_peer] = DescribeTlsError(error);
    CloseNow("TLS handshake failed: " + text,
             by_peer ? CloseKind::kRefusedByPeer : CloseKind::kRefusedByUs, /*flush=*/false);
    return;
  }
  // OpenSSL verified the chain to the cluster CA (verify_peer, fail without a certificate);
  // PeerCertificateName is empty if, for any reason, nothing verified was presented.
  const std::string name = PeerCertificateName(stream_.native_handle());
  if (name.empty()) {
    CloseNow("the peer presented no verified certificate", CloseKind::kRefusedByUs, false);
    return;
  }
  const std::string binding = PeerChannelBinding(stream_.native_handle());
  if (binding.empty()) {
    CloseNow("cannot derive the TLS channel binding", CloseKind::kRefusedByUs, false);
    return;
  }
  tls_ready_ = true;
  handshake_.BindToChannel(name, binding);
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
  if (write_in_flight_ || queued_.empty() || !tls_ready_) return;
  // Everything queued so far goes out in this one write; what arrives meanwhile, in the next.
  writing_.swap(queued_);
  queued_.clear();
  writing_bytes_ = std::exchange(queued_bytes_, 0);
  std::vector<asio::const_buffer> buffers;
  buffers.reserve(writing_.size());
  for (const std::string& piece : writing_) buffers.push_back(asio::buffer(piece));
  write_in_flight_ = true;
  asio::async_write(stream_, buffers,
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

// Once authenticated, reads straight into the decoder: a large frame lands in its own payload,
// never copied. Before, into a small buffer of the link's own.
void PeerLink::DoRead() {
  std::span<char> space;
  if (state_ == State::kHandshaking) {
    if (!handshake_space_) handshake_space_ = std::make_unique<char[]>(kHandshakeReadSize);
    space = {handshake_space_.get(), kHandshakeReadSize};
  } else {
    space = decoder_.Prepare();
  }
  stream_.async_read_some(
      asio::buffer(space.data(), space.size()),
      [self = shared_from_this()](const boost::system::error_code& error, std::size_t size) {
        self->OnRead(error, size);
      });
}

void PeerLink::OnRead(const boost::system::error_code& error, std::size_t size) {
  if (state_ == State::kClosed) return;
  if (error) {
    if (state_ == State::kHandshaking && error.category() == asio::error::get_ssl_category()) {
      // In TLS 1.3 the server checks our certificate after our side of the handshake is done:
      // its refusal arrives as an alert on the first read.
      auto [text, by_peer] = DescribeTlsError(error);
      CloseNow("TLS failed: " + text, by_peer ? CloseKind::kRefusedByPeer : CloseKind::kRefusedByUs,
               /*flush=*/false);
      return;
    }
    std::string reason = error == asio::error::eof || error == asio::ssl::error::stream_truncated
                             ? "connection closed by the peer"
                             : "read failed: " + error.message();
    if (state_ == State::kHandshaking) reason += " during the handshake";
    CloseNow(reason, CloseKind::kClosed, /*flush=*/false);
    return;
  }
  if (state_ == State::kHandshaking) {
    OnHandshakeBytes(size);
    return;
  }
  DeliverDecoded(decoder_.Commit(size));
}

void PeerLink::OnHandshakeBytes(std::size_t size) {
  handshake_in_.append(handshake_space_.get(), size);
  std::size_t offset = 0;
  while (state_ == State::kHandshaking && handshake_in_.size() - offset >= kFrameHeaderSize) {
    const auto [length, type] = ReadFrameHeader(handshake_in_.data() + offset);
    if (length > kMaxHandshakePayload) {
      const std::string reason = "malformed handshake frame: " + std::string(FrameTypeName(type)) +
                                 " declares " + std::to_string(length) +
                                 " bytes before authentication (at most " +
                                 std::to_string(kMaxHandshakePayload) + ")";
      CloseNow(reason, CloseKind::kRefusedByUs, /*flush=*/false);
      return;
    }
    if (handshake_in_.size() - offset - kFrameHeaderSize < length) break;
    const Frame frame{type, handshake_in_.substr(offset + kFrameHeaderSize, length)};
    offset += kFrameHeaderSize + length;
    OnHandshakeFrame(frame);
    if (state_ == State::kClosed) return;
  }
  handshake_in_.erase(0, offset);
  if (state_ == State::kEstablished) {
    // What followed AuthAccepted is the peer's first application frames: to the decoder, under
    // the full frame limit.
    std::string rest = std::exchange(handshake_in_, {});
    handshake_space_.reset();
    DeliverDecoded(decoder_.Feed(rest));
    return;
  }
  DoRead();
}

void PeerLink::DeliverDecoded(const Expected<void>& fed) {
  // Frames completed before a malformed header are still handled, then the link closes.
  while (auto frame = decoder_.Next()) {
    if (state_ == State::kEstablished && callbacks_.on_frame) {
      callbacks_.on_frame(*this, std::move(*frame));
    }
    if (state_ == State::kClosed) return;
  }
  if (!fed) {
    spdlog::warn("closing link to {} ({}): {}", peer().name.empty() ? "?" : peer().name, remote_,
                 fed.error().message);
    CloseNow(fed.error().message, CloseKind::kClosed, /*flush=*/false);
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
    stream_.next_layer().shutdown(Tcp::socket::shutdown_receive, ignored);
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
  // No TLS close_notify: the peer learns of the end from the TCP FIN (its read reports a
  // truncated stream, taken as a closed connection), and a dead peer cannot stall us.
  stream_.next_layer().shutdown(Tcp::socket::shutdown_both, ignored);
  stream_.next_layer().close(ignored);
}

}  // namespace tern::ipc
