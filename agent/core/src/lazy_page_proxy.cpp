#include "lazy_page_proxy.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstring>
#include <tern/errno_text.hpp>
#include <tern/ipc/tls_files.hpp>

#include "lazy_page_relay.hpp"

namespace tern::agent {

namespace asio = boost::asio;

namespace {

std::uint16_t LocalPort(int fd) {
  sockaddr_in address{};
  socklen_t length = sizeof address;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return 0;
  return ntohs(address.sin_port);
}

// How long the two agents wait for each other's close_notify once both directions ended.
constexpr std::chrono::seconds kShutdownPatience{2};

}  // namespace

Expected<std::pair<UniqueFd, UniqueFd>> LoopbackTcpPair() {
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener.valid()) return Fail(Errno("cannot make a socket"));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::listen(listener.get(), 8) != 0) {
    return Fail(Errno("cannot listen on 127.0.0.1"));
  }
  address.sin_port = htons(LocalPort(listener.get()));
  UniqueFd ours(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!ours.valid()) return Fail(Errno("cannot make a socket"));
  if (::connect(ours.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    return Fail(Errno("cannot connect on 127.0.0.1"));
  }
  const std::uint16_t our_port = LocalPort(ours.get());
  // Our connection is queued by now; anyone else's that came first is not ours to keep.
  for (int intruders = 0; intruders < 16; ++intruders) {
    sockaddr_in peer{};
    socklen_t length = sizeof peer;
    UniqueFd accepted(
        ::accept4(listener.get(), reinterpret_cast<sockaddr*>(&peer), &length, SOCK_CLOEXEC));
    if (!accepted.valid()) {
      if (errno == EINTR) continue;
      return Fail(Errno("cannot accept on 127.0.0.1"));
    }
    if (peer.sin_addr.s_addr == htonl(INADDR_LOOPBACK) && ntohs(peer.sin_port) == our_port) {
      // Both ends: a page request or a page header must not wait for the other side's
      // delayed ACK (Nagle) on a job's page-fault path.
      const int on = 1;
      ::setsockopt(ours.get(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
      ::setsockopt(accepted.get(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
      return std::make_pair(std::move(accepted), std::move(ours));
    }
  }
  return Fail("cannot pair sockets on 127.0.0.1: other connections kept arriving first");
}

LazyPageProxy::LazyPageProxy(asio::io_context& io, Options options)
    : io_(io),
      options_(std::move(options)),
      criu_(io),
      patience_(io),
      to_peer_(4 + kMaxRelayChunk),
      from_peer_(kMaxRelayChunk) {}

Expected<std::shared_ptr<LazyPageProxy>> LazyPageProxy::Serve(asio::io_context& io, Options options,
                                                              UniqueFd criu_side,
                                                              const std::string& host,
                                                              std::uint16_t port) {
  boost::system::error_code error;
  const auto address = asio::ip::make_address(host, error);
  if (error) return Fail("cannot listen for the lazy-page relay on '" + host + "': not an address");
  Tcp::acceptor acceptor(io);
  const Tcp::endpoint endpoint(address, port);
  acceptor.open(endpoint.protocol(), error);
  if (!error) acceptor.set_option(Tcp::acceptor::reuse_address(true), error);
  if (!error) acceptor.bind(endpoint, error);
  if (!error) acceptor.listen(4, error);
  if (error) {
    return Fail("cannot listen for the lazy-page relay on " + host + ":" + std::to_string(port) +
                ": " + error.message());
  }
  return Serve(io, std::move(options), std::move(criu_side), UniqueFd(acceptor.release()));
}

Expected<std::shared_ptr<LazyPageProxy>> LazyPageProxy::Serve(asio::io_context& io, Options options,
                                                              UniqueFd criu_side,
                                                              UniqueFd listener) {
  boost::system::error_code error;
  auto proxy = std::make_shared<LazyPageProxy>(io, std::move(options));
  proxy->criu_.assign(Tcp::v4(), criu_side.Release(), error);
  if (error) return Fail("cannot take CRIU's socket: " + error.message());
  sockaddr_storage bound{};
  socklen_t length = sizeof bound;
  if (::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&bound), &length) != 0) {
    return Fail(Errno("not a listening socket"));
  }
  const Tcp protocol = bound.ss_family == AF_INET6 ? Tcp::v6() : Tcp::v4();
  Tcp::acceptor& acceptor = proxy->acceptor_.emplace(io);
  acceptor.assign(protocol, listener.Release(), error);
  if (error) return Fail("cannot take the relay's listener: " + error.message());
  proxy->port_ = acceptor.local_endpoint(error).port();
  proxy->patience_.expires_after(proxy->options_.accept_patience);
  proxy->patience_.async_wait([weak = std::weak_ptr(proxy)](const boost::system::error_code& e) {
    auto self = weak.lock();
    if (e || !self || self->connected_) return;
    self->End(Fail("node " + self->options_.peer_node + " did not connect within " +
                   std::to_string(self->options_.accept_patience.count()) + " ms"));
  });
  proxy->Accept();
  return proxy;
}

void LazyPageProxy::Accept() {
  if (ended_ || !acceptor_) return;
  acceptor_->async_accept(
      [self = shared_from_this()](const boost::system::error_code& error, Tcp::socket socket) {
        if (self->ended_) return;
        if (error) {
          self->End(Fail("accepting the lazy-page relay: " + error.message()));
          return;
        }
        boost::system::error_code ignored;
        const auto from = socket.remote_endpoint(ignored);
        socket.set_option(Tcp::no_delay(true), ignored);
        auto stream = std::make_shared<TlsStream>(std::move(socket), *self->options_.tls);
        self->Handshake(std::move(stream), true, from.address().to_string());
      });
}

Expected<std::shared_ptr<LazyPageProxy>> LazyPageProxy::Dial(asio::io_context& io, Options options,
                                                             UniqueFd criu_side,
                                                             const std::string& host,
                                                             std::uint16_t port) {
  boost::system::error_code error;
  const auto address = asio::ip::make_address(host, error);
  if (error || port == 0) {
    return Fail("the source named no address for its lazy-page relay ('" + host + ":" +
                std::to_string(port) + "')");
  }
  auto proxy = std::make_shared<LazyPageProxy>(io, std::move(options));
  proxy->criu_.assign(Tcp::v4(), criu_side.Release(), error);
  if (error) return Fail("cannot take CRIU's socket: " + error.message());
  auto stream = std::make_shared<TlsStream>(io, *proxy->options_.tls);
  proxy->patience_.expires_after(proxy->options_.handshake_patience);
  proxy->patience_.async_wait([weak = std::weak_ptr(proxy), stream](const auto& e) {
    auto self = weak.lock();
    if (e || !self || self->connected_) return;
    boost::system::error_code ignored;
    stream->lowest_layer().close(ignored);  // the pending connect or handshake fails
  });
  const std::string from = host + ":" + std::to_string(port);
  stream->lowest_layer().async_connect(
      Tcp::endpoint(address, port),
      [self = proxy, stream, from](const boost::system::error_code& e) {
        if (self->ended_) return;
        if (e) {
          self->End(Fail("cannot reach the lazy-page relay at " + from + ": " + e.message()));
          return;
        }
        boost::system::error_code ignored;
        stream->lowest_layer().set_option(Tcp::no_delay(true), ignored);
        self->Handshake(stream, false, from);
      });
  return proxy;
}

void LazyPageProxy::Handshake(std::shared_ptr<TlsStream> stream, bool as_server, std::string from) {
  auto timer = std::make_shared<asio::steady_timer>(io_, options_.handshake_patience);
  timer->async_wait([stream](const boost::system::error_code& e) {
    if (e) return;
    boost::system::error_code ignored;
    stream->lowest_layer().close(ignored);
  });
  stream->async_handshake(
      as_server ? TlsStream::server : TlsStream::client,
      [self = shared_from_this(), stream, as_server, from = std::move(from),
       timer](const boost::system::error_code& error) {
        timer->cancel();
        if (self->ended_) return;
        Expected<void> verdict;
        if (error) {
          verdict = Fail("TLS handshake failed: " + error.message());
        } else {
          verdict = CheckRelayPeer(ipc::PeerCertificateName(stream->native_handle()),
                                   self->options_.peer_node);
        }
        if (verdict) {
          self->Connected(stream);
          return;
        }
        boost::system::error_code ignored;
        stream->lowest_layer().close(ignored);
        if (as_server) {
          spdlog::warn("migration {}: refused a lazy-page connection from {}: {}",
                       self->options_.migration, from, verdict.error().message);
          self->Accept();  // the peer may still come
          return;
        }
        self->End(Fail("refused the lazy-page relay at " + from + ": " + verdict.error().message));
      });
}

void LazyPageProxy::Connected(std::shared_ptr<TlsStream> stream) {
  tls_ = std::move(stream);
  patience_.cancel();
  if (acceptor_) {
    boost::system::error_code ignored;
    acceptor_->close(ignored);  // this migration's one peer is in
  }
  connected_ = Expected<void>{};
  for (auto& then : std::exchange(on_connected_, {})) then({});
  PumpToPeer();
  PumpFromPeer();
}

void LazyPageProxy::PumpToPeer() {
  criu_.async_read_some(
      asio::buffer(to_peer_.data() + 4, kMaxRelayChunk),
      [self = shared_from_this()](const boost::system::error_code& error, std::size_t got) {
        if (self->ended_) return;
        if (error && error != asio::error::eof) {
          self->End(Fail("reading CRIU's socket: " + error.message()));
          return;
        }
        const std::size_t length = error ? 0 : got;
        const auto header = EncodeRelayHeader(static_cast<std::uint32_t>(length));
        std::copy(header.begin(), header.end(), self->to_peer_.begin());
        asio::async_write(
            *self->tls_, asio::buffer(self->to_peer_.data(), 4 + length),
            [self, length](const boost::system::error_code& e, std::size_t) {
              if (self->ended_) return;
              if (e) {
                self->End(Fail("writing to node " + self->options_.peer_node + ": " + e.message()));
                return;
              }
              if (length == 0) {
                self->to_peer_done_ = true;
                self->DirectionEnded();
                return;
              }
              self->bytes_to_peer_ += length;
              self->PumpToPeer();
            });
      });
}

void LazyPageProxy::PumpFromPeer() {
  asio::async_read(
      *tls_, asio::buffer(header_),
      [self = shared_from_this()](const boost::system::error_code& error, std::size_t) {
        if (self->ended_) return;
        if (error) {
          self->End(Fail("node " + self->options_.peer_node +
                         " ended the relay before its stream: " + error.message()));
          return;
        }
        auto length = DecodeRelayHeader(self->header_);
        if (!length) {
          self->End(Fail("node " + self->options_.peer_node + " sent " + length.error().message));
          return;
        }
        if (*length == 0) {
          boost::system::error_code ignored;
          self->criu_.shutdown(Tcp::socket::shutdown_send, ignored);
          self->from_peer_done_ = true;
          self->DirectionEnded();
          return;
        }
        asio::async_read(
            *self->tls_, asio::buffer(self->from_peer_.data(), *length),
            [self](const boost::system::error_code& e, std::size_t got) {
              if (self->ended_) return;
              if (e) {
                self->End(
                    Fail("reading from node " + self->options_.peer_node + ": " + e.message()));
                return;
              }
              asio::async_write(self->criu_, asio::buffer(self->from_peer_.data(), got),
                                [self, got](const boost::system::error_code& w, std::size_t) {
                                  if (self->ended_) return;
                                  if (w) {
                                    self->End(Fail("writing to CRIU's socket: " + w.message()));
                                    return;
                                  }
                                  self->bytes_from_peer_ += got;
                                  self->PumpFromPeer();
                                });
            });
      });
}

void LazyPageProxy::DirectionEnded() {
  if (!to_peer_done_ || !from_peer_done_) return;
  // Both streams are through: a close_notify each way, then done (or done anyway, later).
  patience_.expires_after(kShutdownPatience);
  patience_.async_wait([self = shared_from_this()](const boost::system::error_code& e) {
    if (!e) self->End({});
  });
  tls_->async_shutdown(
      [self = shared_from_this()](const boost::system::error_code&) { self->End({}); });
}

void LazyPageProxy::Close() {
  if (!ended_) End(Fail("closed: the migration is over"));
}

void LazyPageProxy::WhenConnected(std::function<void(Expected<void>)> then) {
  if (connected_) {
    asio::post(io_, [then = std::move(then), result = *connected_] { then(result); });
    return;
  }
  on_connected_.push_back(std::move(then));
}

void LazyPageProxy::WhenEnded(std::function<void(Expected<void>)> then) {
  if (ended_) {
    asio::post(io_, [then = std::move(then), result = *ended_] { then(result); });
    return;
  }
  on_ended_.push_back(std::move(then));
}

void LazyPageProxy::End(Expected<void> result) {
  if (ended_) return;
  ended_ = result;
  boost::system::error_code ignored;
  patience_.cancel();
  if (acceptor_) acceptor_->close(ignored);
  if (tls_) tls_->lowest_layer().close(ignored);
  criu_.close(ignored);
  if (result) {
    spdlog::info("migration {}: lazy-page relay with {} done ({} bytes sent, {} received)",
                 options_.migration, options_.peer_node, bytes_to_peer_, bytes_from_peer_);
  } else {
    spdlog::log(connected_ ? spdlog::level::warn : spdlog::level::info,
                "migration {}: lazy-page relay with {} ended: {} ({} bytes sent, {} received)",
                options_.migration, options_.peer_node, result.error().message, bytes_to_peer_,
                bytes_from_peer_);
  }
  if (!connected_) {
    connected_ =
        result ? Expected<void>(Fail("the relay ended before the peer connected")) : result;
    for (auto& then : std::exchange(on_connected_, {})) then(*connected_);
  }
  for (auto& then : std::exchange(on_ended_, {})) then(result);
}

}  // namespace tern::agent
