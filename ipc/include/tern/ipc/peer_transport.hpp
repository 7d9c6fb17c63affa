// PeerTransport: this agent's links to every other agent — one persistent, authenticated TCP
// connection per pair (DESIGN.md "Wire formats").
//
// Contract:
//  - Start() listens; ConnectTo(address) dials it and keeps redialling (1 s, doubling to 5 s)
//    until a link to that node exists, and again whenever that link is lost, until Forget().
//  - When both agents dial each other at once, the link dialled by the smaller node id is
//    kept; the other closes quietly (no on_peer_down).
//  - on_peer_up / on_peer_down / on_frame concern the one kept link of each node. A refused
//    handshake is logged as "refused peer NAME from ADDR: REASON" and reported to on_refused.
//  - Send() returns false when there is no link to that node.
//
// Thread-safety: Send() from any thread; everything else, and every callback, on the
// io_context's thread (run by one thread).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <tern/expected.hpp>
#include "tern/ipc/peer_link.hpp"

namespace tern::ipc {

class PeerTransport {
 public:
  struct Options {
    std::string node_name;
    std::uint64_t node_id = 0;
    std::string secret;
    std::string listen;     // "0.0.0.0:7071"
    std::string advertise;  // "10.0.0.1:7071"
    std::string api_address;
  };

  std::function<void(const PeerIdentity&)> on_peer_up;
  std::function<void(std::uint64_t node_id, const std::string& reason)> on_peer_down;
  std::function<void(std::uint64_t node_id, const Frame&)> on_frame;
  std::function<void(const std::string& remote, const std::string& reason)> on_refused;

  PeerTransport(boost::asio::io_context& io, Options options);
  ~PeerTransport();

  Expected<void> Start();
  void ConnectTo(const std::string& address);
  void Forget(const std::string& address);
  bool Send(std::uint64_t node_id, FrameType type, std::string payload);
  std::vector<PeerIdentity> Peers() const;
  std::uint16_t ListenPort() const;
  void Stop();

 private:
  struct Dialer {
    std::unique_ptr<boost::asio::steady_timer> timer;
    std::chrono::milliseconds backoff{1000};
    bool in_progress = false;
    std::uint64_t node_id = 0;  // learned once a link through it was established
  };

  void Accept();
  void Dial(const std::string& address);
  void ScheduleDial(const std::string& address, std::chrono::milliseconds delay);
  void Adopt(boost::asio::ip::tcp::socket socket, bool initiated, const std::string& address);
  void OnEstablished(const std::shared_ptr<PeerLink>& link);
  void OnClosed(const std::shared_ptr<PeerLink>& link, const std::string& reason, bool refused);
  bool HasLinkTo(std::uint64_t node_id) const;

  boost::asio::io_context& io_;
  Options options_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::map<std::string, Dialer> dialers_;
  std::set<std::shared_ptr<PeerLink>> pending_;  // handshaking
  mutable std::mutex links_mutex_;               // guards links_ for Send() from other threads
  std::map<std::uint64_t, std::shared_ptr<PeerLink>> links_;
  bool stopped_ = false;
};

}  // namespace tern::ipc
