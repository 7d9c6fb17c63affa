// PeerTransport: this agent's links to every other agent — one persistent connection per node
// pair, mutual TLS 1.3 with the cluster's certificates (docs/design.md "Wire formats",
// docs/security.md), built from PeerLinks.
//
// Contract:
//  - Start() listens on Options::listen. ConnectTo("host:port") dials that address (host may be
//    a name or an IP; "[v6]:port" works) and keeps redialling with backoff (1 s, doubling, at
//    most 5 s) until a link to the node there is established, and again whenever that link is
//    lost, until Forget(host_port). Forget stops redialling; it does not close a live link.
//    Dial("host:port") is the on-demand form: it retries the same way until one link to the
//    node there is established, then forgets the address (a lost link is not redialled).
//  - Exactly one link per node pair. When two links to one node get established (both agents
//    dialled at once), both sides keep the same one: the link dialled by the smaller node id
//    (ties: the smaller dialler's nonce). The other is closed without on_peer_down. If the kept
//    link of a node closes while another link to the same node is still authenticating, the
//    node stays up until that handshake ends: a dropped duplicate never shows as down then up.
//  - on_peer_up(peer) once when a node gets its first link; on_peer_down(node_id, reason) once
//    when its last link is gone; on_frame(node_id, frame) for each frame from it, in order.
//  - Start() makes the TLS contexts from Options::tls (MakeTlsContext) and fails with the
//    file and what is wrong when it cannot. A peer is refused unless its certificate is signed
//    by the CA and names the node its Hello claims.
//  - At most Options::max_pending accepted connections may be authenticating at once; more are
//    closed at once (logged, at most once a second). Each has handshake_timeout to finish.
//  - Every refused handshake is logged (spdlog::warn "refused peer NAME from ADDR: REASON" on
//    the side that refuses, "peer NAME at ADDR refused us: REASON" on the other) and reported
//    to on_refused(remote "ip:port", reason). Redialling continues (the secret may be fixed).
//  - Send() queues one frame, or several in order for one write, on the node's link; it
//    returns false when there is no link to that node, or when a payload exceeds the frame
//    limit (16 MiB; logged). A frame handed to a link that then breaks is lost with it: callers
//    that need delivery acknowledge it. Backlog() says how much is still to be written: a link
//    whose queue passes 64 MiB closes, so heavy senders hold back well before that.
//
// Threading: the agent runs one io_context thread for all networking. Send(), Backlog() and
// Peers() may be called from any thread; ConnectTo() and Forget() too (they post to the transport's
// strand). Start(), Stop() and the destructor must run on the io_context thread or while it is
// not running. Every callback is invoked on the io_context thread, inside the transport's
// strand, which all its links share. Callbacks may call any method, including Stop(). After
// Stop() (and so after destruction) no callback is invoked. Assign the callbacks before Start.
#pragma once

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <tern/expected.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/peer_handshake.hpp>
#include <tern/ipc/tls_files.hpp>
#include <vector>

namespace tern::ipc {

class PeerTransport {
 public:
  struct Options {
    std::string node_name;
    std::uint64_t node_id = 0;
    std::string secret;
    std::string listen;            // "0.0.0.0:7071"; port 0 picks an ephemeral port (ListenPort())
    std::string advertise;         // "10.0.0.1:7071": how other agents reach our listener
    std::string api_address;       // "10.0.0.1:7070": our TCP API, told to peers in Hello
    TlsFiles tls;                  // this node's certificate and key, and the cluster CA
    std::size_t max_pending = 64;  // accepted, not yet authenticated
    std::chrono::milliseconds handshake_timeout{5000};  // TLS and Hello/proofs together
  };

  std::function<void(const PeerIdentity& peer)> on_peer_up;
  std::function<void(std::uint64_t node_id, const std::string& reason)> on_peer_down;
  // The handler may take the frame's payload (it is not used after).
  std::function<void(std::uint64_t node_id, Frame& frame)> on_frame;
  std::function<void(const std::string& remote, const std::string& reason)> on_refused;

  PeerTransport(boost::asio::io_context& io, Options options);
  ~PeerTransport();  // Stop()
  PeerTransport(const PeerTransport&) = delete;
  PeerTransport& operator=(const PeerTransport&) = delete;

  // Binds and listens; fails with a readable message (bad address, port in use).
  Expected<void> Start();
  void ConnectTo(std::string host_port);
  void Dial(std::string host_port);
  void Forget(std::string host_port);
  bool Send(std::uint64_t node_id, FrameType type, std::string payload);
  // Several frames, in order, in one write of the node's link.
  bool Send(std::uint64_t node_id, std::vector<Frame> frames);
  // Bytes sent to the node and not yet written to its link (PeerLink::backlog); 0 without one.
  std::size_t Backlog(std::uint64_t node_id) const;
  // Closes the node's link with a logged reason (a peer that broke the protocol); redialling
  // then brings up a fresh one.
  void Disconnect(std::uint64_t node_id, std::string reason);
  // The nodes with a link now.
  std::vector<PeerIdentity> Peers() const;
  // The port actually listened on (after Start), e.g. when Options::listen asked for port 0.
  std::uint16_t ListenPort() const;
  struct Stats {
    std::size_t links_established = 0;     // kept links: one per node
    std::size_t links_authenticating = 0;  // accepted or dialled, handshake not finished
    std::size_t dials_pending = 0;         // wanted addresses connecting or waiting to redial
  };
  // A snapshot, for tests and metrics. Call on the io_context thread.
  Stats GetStats() const;
  // Closes the listener and every link, stops redialling. Idempotent.
  void Stop();

 private:
  class Core;
  std::shared_ptr<Core> core_;
};

}  // namespace tern::ipc
