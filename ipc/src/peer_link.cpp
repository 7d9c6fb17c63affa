#include "tern/ipc/peer_link.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

namespace tern::ipc {

namespace asio = boost::asio;
constexpr auto kHandshakeDeadline = std::chrono::seconds(5);

PeerLink::PeerLink(asio::ip::tcp::socket socket, PeerIdentity self, std::string secret,
                   bool initiated_by_us, Callbacks callbacks)
    : socket_(std::move(socket)),
      handshake_timer_(socket_.get_executor()),
      handshake_(std::move(self), std::move(secret)),
      initiated_by_us_(initiated_by_us),
      callbacks_(std::move(callbacks)) {
  boost::system::error_code error;
  const auto endpoint = socket_.remote_endpoint(error);
  remote_ = error ? "?" : endpoint.address().to_string() + ":" + std::to_string(endpoint.port());
}

void PeerLink::Start() {
  boost::system::error_code ignored;
  socket_.set_option(asio::ip::tcp::no_delay(true), ignored);
  handshake_timer_.expires_after(kHandshakeDeadline);
  handshake_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& error) {
    if (!error && !self->established_) self->CloseNow("handshake timed out", true);
  });
  for (const auto& frame : handshake_.Start().send) Enqueue(frame);
  ReadMore();
}

void PeerLink::Send(FrameType type, std::string payload) {
  asio::post(socket_.get_executor(),
             [self = shared_from_this(), type, payload = std::move(payload)]() {
               if (self->closed_) return;
               self->Enqueue(Frame{type, payload});
             });
}

void PeerLink::Close(const std::string& reason) {
  asio::post(socket_.get_executor(),
             [self = shared_from_this(), reason] { self->CloseNow(reason, false); });
}

void PeerLink::Enqueue(const Frame& frame) {
  if (queued_.size() + writing_.size() + frame.payload.size() > kMaxQueuedBytes) {
    CloseNow("send queue full (" + std::to_string(kMaxQueuedBytes) + " bytes): peer too slow",
             false);
    return;
  }
  AppendFrame(queued_, frame.type, frame.payload);
  WriteMore();
}

void PeerLink::WriteMore() {
  if (closed_ || !writing_.empty() || queued_.empty()) return;
  writing_.swap(queued_);
  asio::async_write(socket_, asio::buffer(writing_),
                    [self = shared_from_this()](const boost::system::error_code& error,
                                                std::size_t) {
                      self->writing_.clear();
                      if (error) {
                        self->CloseNow("write failed: " + error.message(), false);
                        return;
                      }
                      self->WriteMore();
                    });
}

void PeerLink::ReadMore() {
  socket_.async_read_some(asio::buffer(read_buffer_),
                          [self = shared_from_this()](const boost::system::error_code& error,
                                                      std::size_t size) {
                            if (self->closed_) return;
                            if (error) {
                              self->CloseNow(error == asio::error::eof ? "connection closed by peer"
                                                                      : error.message(),
                                             !self->established_);
                              return;
                            }
                            self->OnBytes(size);
                          });
}

void PeerLink::OnBytes(std::size_t size) {
  if (auto fed = decoder_.Feed(std::string_view(read_buffer_.data(), size)); !fed) {
    spdlog::warn("closing link to {}: {}", remote_, fed.error().message);
    CloseNow(fed.error().message, !established_);
    return;
  }
  while (auto frame = decoder_.Next()) {
    if (closed_) return;
    if (established_) {
      if (callbacks_.on_frame) callbacks_.on_frame(shared_from_this(), std::move(*frame));
      continue;
    }
    HandshakeStep step = handshake_.OnFrame(*frame);
    for (const auto& reply : step.send) Enqueue(reply);
    if (step.refused) {
      CloseNow(step.reason, true);
      return;
    }
    if (step.established) {
      established_ = true;
      handshake_timer_.cancel();
      if (callbacks_.on_established) callbacks_.on_established(shared_from_this());
    }
  }
  ReadMore();
}

void PeerLink::CloseNow(const std::string& reason, bool refused) {
  if (closed_) return;
  closed_ = true;
  handshake_timer_.cancel();
  // Flush what is queued (an AuthRefused, say) best effort before closing.
  if (writing_.empty() && !queued_.empty() && queued_.size() < 4096) {
    boost::system::error_code ignored;
    asio::write(socket_, asio::buffer(queued_), ignored);
  }
  boost::system::error_code ignored;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
  if (callbacks_.on_closed) callbacks_.on_closed(shared_from_this(), reason, refused);
}

}  // namespace tern::ipc
