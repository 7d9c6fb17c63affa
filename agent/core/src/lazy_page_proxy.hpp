// LazyPageProxy: carries one post-copy migration's lazy-page stream between two nodes inside
// mutual TLS 1.3, so that no job memory crosses the network in the clear.
//
// CRIU's two ends (`criu dump --lazy-pages` on the source, `criu lazy-pages` on the destination)
// never open a network socket: each is handed one end of a TCP connection on 127.0.0.1 that its
// agent made (LoopbackTcpPair, `--ps-socket`), and a `ternd page-relay` process
// (page_relay_main.hpp) holds the other end with one of these. The two relays join their ends
// through a TLS connection of their own, made with the node's certificate, key and CA
// (ipc::MakeTlsContext): the destination dials (Dial), the source listens (Serve) on its
// cluster address, for this migration only. (It runs in a process of its own so that the
// stream outlives a killed agent, as CRIU's processes do.)
//
// Contract:
//  - Only the migration's peer gets in: the TLS context demands a certificate the cluster CA
//    signed, and the name it carries (ipc::PeerCertificateName) must be `peer_node`. Serve
//    closes a connection that fails either check (logged, with why) and keeps listening for the
//    peer, one handshake at a time, each within `handshake_patience`; it closes its listener as
//    soon as the peer is in, or after `accept_patience` without it (the relay then ends with an
//    error). Dial gives up on a source whose certificate names another node.
//  - Bytes are relayed exactly, in order, both ways (lazy_page_relay.hpp frames them). Each
//    direction holds at most one chunk (64 KiB) in memory. CRIU closing or shutting down its
//    socket ends that direction: the other agent shuts down writing to its CRIU socket and the
//    other direction goes on; when both have ended the TLS session is closed.
//  - Any error (the peer vanishing, junk framing) or Close() ends everything at once: listener,
//    TLS connection and the CRIU-side socket are closed, so CRIU on this node reads end of file.
//  - WhenConnected's callback runs (on the io_context) once the peer is in, or with the error
//    that ended the relay first; WhenEnded's once the relay has ended.
//
// Thread-safety: not thread-safe; create and use it on the io_context's thread (MigrationDriver
// gives the relays a thread of their own). The object keeps itself alive while its operations
// run; the last reference may be dropped on any thread.
#pragma once

#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tern/expected.hpp>
#include <tern/unique_fd.hpp>
#include <utility>
#include <vector>

namespace tern::agent {

// A connected pair of TCP sockets on 127.0.0.1, both close-on-exec: {CRIU's end, the agent's}.
// Its listener lives only until its own connection is accepted (one that someone else slipped
// in first is closed), so no port stays open for anyone else to reach.
Expected<std::pair<UniqueFd, UniqueFd>> LoopbackTcpPair();

class LazyPageProxy : public std::enable_shared_from_this<LazyPageProxy> {
 public:
  struct Options {
    std::string migration;  // for the log
    std::string peer_node;  // the only node let in: the name its certificate must carry
    // ipc::MakeTlsContext(files, kServer) for Serve, (files, kClient) for Dial.
    std::shared_ptr<boost::asio::ssl::context> tls;
    std::chrono::milliseconds accept_patience{std::chrono::minutes(5)};
    std::chrono::milliseconds handshake_patience{std::chrono::seconds(5)};
  };

  // Source: listens for the peer's TLS connection on host:port (port 0: the kernel picks;
  // port() says which) and relays it to `criu_side`.
  static Expected<std::shared_ptr<LazyPageProxy>> Serve(boost::asio::io_context& io,
                                                        Options options, UniqueFd criu_side,
                                                        const std::string& host,
                                                        std::uint16_t port);
  // The same on a listening socket made elsewhere (`ternd page-relay` gets its listener from
  // the agent, which chose the port).
  static Expected<std::shared_ptr<LazyPageProxy>> Serve(boost::asio::io_context& io,
                                                        Options options, UniqueFd criu_side,
                                                        UniqueFd listener);
  // Destination: dials the source's Serve at host:port and relays `criu_side` through it.
  static Expected<std::shared_ptr<LazyPageProxy>> Dial(boost::asio::io_context& io, Options options,
                                                       UniqueFd criu_side, const std::string& host,
                                                       std::uint16_t port);

  LazyPageProxy(boost::asio::io_context& io, Options options);
  LazyPageProxy(const LazyPageProxy&) = delete;
  LazyPageProxy& operator=(const LazyPageProxy&) = delete;

  std::uint16_t port() const { return port_; }
  void WhenConnected(std::function<void(Expected<void>)> then);
  void WhenEnded(std::function<void(Expected<void>)> then);
  // Ends the relay now (the migration was aborted, or is over).
  void Close();
  bool ended() const { return ended_.has_value(); }
  std::uint64_t bytes_to_peer() const { return bytes_to_peer_; }
  std::uint64_t bytes_from_peer() const { return bytes_from_peer_; }

 private:
  using Tcp = boost::asio::ip::tcp;
  using TlsStream = boost::asio::ssl::stream<Tcp::socket>;

  void Accept();
  void Handshake(std::shared_ptr<TlsStream> stream, bool as_server, std::string from);
  void Connected(std::shared_ptr<TlsStream> stream);
  void PumpToPeer();
  void PumpFromPeer();
  void DirectionEnded();
  void End(Expected<void> result);

  boost::asio::io_context& io_;
  Options options_;
  Tcp::socket criu_;
  std::optional<Tcp::acceptor> acceptor_;
  std::shared_ptr<TlsStream> tls_;
  boost::asio::steady_timer patience_;
  std::uint16_t port_ = 0;
  std::vector<std::uint8_t> to_peer_;    // [header][chunk] read from CRIU
  std::vector<std::uint8_t> from_peer_;  // a chunk for CRIU
  std::array<std::uint8_t, 4> header_{};
  bool to_peer_done_ = false;
  bool from_peer_done_ = false;
  std::uint64_t bytes_to_peer_ = 0;
  std::uint64_t bytes_from_peer_ = 0;
  std::optional<Expected<void>> connected_;
  std::optional<Expected<void>> ended_;
  std::vector<std::function<void(Expected<void>)>> on_connected_;
  std::vector<std::function<void(Expected<void>)>> on_ended_;
};

}  // namespace tern::agent
