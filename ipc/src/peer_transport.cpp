#include "tern/ipc/peer_transport.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <map>
#include <mutex>
#include <set>
#include <tern/ipc/peer_link.hpp>
#include <utility>

namespace tern::ipc {

namespace asio = boost::asio;
using Tcp = asio::ip::tcp;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds kFirstBackoff{1000};
constexpr milliseconds kMaxBackoff{5000};
constexpr milliseconds kConnectTimeout{5000};
constexpr milliseconds kAcceptErrorPause{100};

struct HostPort {
  std::string host;
  std::string port;
};

Expected<HostPort> SplitHostPort(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) {
    return Fail("address must be host:port, got \"" + text + "\"");
  }
  std::string host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return HostPort{host, text.substr(colon + 1)};
}

std::string NameOr(const PeerIdentity& peer) { return peer.name.empty() ? "?" : peer.name; }

}  // namespace

// All state lives here, owned by shared_ptr so that pending handlers keep it alive after the
// PeerTransport is gone. Everything runs on strand_ (one io_context thread, per the contract);
// links_ is also read by Send()/Peers() from other threads, under links_mutex_.
class PeerTransport::Core : public std::enable_shared_from_this<PeerTransport::Core> {
 public:
  Core(asio::io_context& io, Options options, PeerTransport* owner)
      : strand_(asio::make_strand(io)),
        options_(std::move(options)),
        owner_(owner),
        acceptor_(strand_),
        accept_pause_(strand_) {}

  Expected<void> Start();
  void Stop();
  void ConnectTo(const std::string& address, bool once);
  void Forget(const std::string& address);
  bool Send(std::uint64_t node_id, FrameType type, std::string payload);
  bool Send(std::uint64_t node_id, std::vector<Frame> frames);
  std::shared_ptr<PeerLink> ActiveLink(std::uint64_t node_id) const;
  void Disconnect(std::uint64_t node_id, const std::string& reason) {
    std::shared_ptr<PeerLink> link;
    {
      std::lock_guard lock(links_mutex_);
      auto found = nodes_.find(node_id);
      if (found == nodes_.end()) return;
      link = found->second.active;
    }
    if (link) link->Close(reason);
  }
  std::vector<PeerIdentity> Peers() const;
  Stats stats() const {
    Stats stats;
    stats.links_authenticating = pending_.size();
    for (const auto& [address, dialer] : dialers_) {
      if (dialer->attempt_running || dialer->scheduled) ++stats.dials_pending;
    }
    std::lock_guard lock(links_mutex_);
    stats.links_established = nodes_.size();
    return stats;
  }
  std::uint16_t listen_port() const { return listen_port_; }
  std::size_t AcceptedPending() const {
    std::size_t count = 0;
    for (const auto& [link, dialled] : pending_) count += link->initiated_by_us() ? 0 : 1;
    return count;
  }
  const asio::strand<asio::io_context::executor_type>& strand() const { return strand_; }

 private:
  // One address we want a link to.
  struct Dialer {
    explicit Dialer(const asio::strand<asio::io_context::executor_type>& strand) : timer(strand) {}
    asio::steady_timer timer;  // the next attempt
    milliseconds backoff = kFirstBackoff;
    bool attempt_running = false;  // resolving, connecting or authenticating
    bool scheduled = false;        // the timer will start the next attempt
    std::uint64_t node_id = 0;     // the node there, once a link through it was established
    bool once = false;             // Dial(): forgotten once a link is established
  };
  // A link that is established (`active` is the one kept for its node).
  struct Node {
    std::shared_ptr<PeerLink> active;
    PeerIdentity identity;
  };

  void DoAccept();
  void OnAccept(const boost::system::error_code& error, Tcp::socket socket);
  void Dial(const std::string& address);
  void OnDialFailed(const std::string& address, const std::string& why);
  void ScheduleDial(const std::string& address);
  void Adopt(Tcp::socket socket, const std::string& dialled_address);
  void OnEstablished(const std::shared_ptr<PeerLink>& link, const PeerIdentity& peer);
  void OnLinkFrame(PeerLink& link, Frame frame);
  void OnClosed(const std::shared_ptr<PeerLink>& link, const std::string& reason,
                PeerLink::CloseKind kind);
  void RedialNode(std::uint64_t node_id);
  bool AnotherLinkAuthenticating(std::uint64_t node_id) const;
  // Both sides rank the links between them the same way; the smaller key is kept.
  static std::pair<std::uint64_t, std::string> LinkKey(const PeerLink& link, std::uint64_t self);

  asio::strand<asio::io_context::executor_type> strand_;
  const Options options_;
  PeerTransport* owner_;  // null after Stop(): no more callbacks
  Tcp::acceptor acceptor_;
  asio::steady_timer accept_pause_;
  std::shared_ptr<asio::ssl::context> client_tls_;  // for links we dial
  std::shared_ptr<asio::ssl::context> server_tls_;  // for links we accept
  std::size_t turned_away_ = 0;
  std::chrono::steady_clock::time_point last_turned_away_log_{};
  std::atomic<std::uint16_t> listen_port_{0};
  bool started_ = false;
  bool stopped_ = false;
  std::map<std::string, std::unique_ptr<Dialer>> dialers_;
  // Links still authenticating, with the address they were dialled at ("" if accepted).
  std::map<std::shared_ptr<PeerLink>, std::string> pending_;
  // Kept links whose node stays up because another link to it is authenticating.
  std::map<std::uint64_t, std::string> down_deferred_;
  std::map<std::shared_ptr<PeerLink>, std::string> dialled_at_;  // established, from a dialer
  mutable std::mutex links_mutex_;  // guards nodes_ (Send and Peers come from any thread)
  std::map<std::uint64_t, Node> nodes_;
};

Expected<void> PeerTransport::Core::Start() {
  if (started_) return Fail("the peer transport is already started");
  auto split = SplitHostPort(options_.listen);
  if (!split) return Unexpected<Error>{split.error()};
  boost::system::error_code error;
  const auto address = asio::ip::make_address(split->host, error);
  if (error) return Fail("cannot listen for peers on " + options_.listen + ": not an IP address");
  unsigned long port = 0;
  try {
    port = std::stoul(split->port);
  } catch (const std::exception&) {
    port = 65536;
  }
  if (port > 65535) return Fail("cannot listen for peers on " + options_.listen + ": bad port");
  auto client = MakeTlsContext(options_.tls, TlsRole::kClient);
  if (!client) return Unexpected<Error>{client.error()};
  auto server = MakeTlsContext(options_.tls, TlsRole::kServer);
  if (!server) return Unexpected<Error>{server.error()};
  client_tls_ = std::move(*client);
  server_tls_ = std::move(*server);
  const Tcp::endpoint endpoint(address, static_cast<std::uint16_t>(port));
  acceptor_.open(endpoint.protocol(), error);
  if (!error) acceptor_.set_option(asio::socket_base::reuse_address(true), error);
  if (!error) acceptor_.bind(endpoint, error);
  if (!error) acceptor_.listen(asio::socket_base::max_listen_connections, error);
  if (error) {
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    return Fail("cannot listen for peers on " + options_.listen + ": " + error.message());
  }
  listen_port_ = acceptor_.local_endpoint(error).port();
  started_ = true;
  asio::post(strand_, [self = shared_from_this()] { self->DoAccept(); });
  return {};
}

void PeerTransport::Core::Stop() {
  if (stopped_) return;
  stopped_ = true;
  owner_ = nullptr;
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  accept_pause_.cancel();
  for (auto& [address, dialer] : dialers_) dialer->timer.cancel();
  dialers_.clear();
  std::vector<std::shared_ptr<PeerLink>> links;
  for (auto& [link, address] : pending_) links.push_back(link);
  pending_.clear();
  dialled_at_.clear();
  down_deferred_.clear();
  {
    std::lock_guard lock(links_mutex_);
    for (auto& [id, node] : nodes_) links.push_back(node.active);
    nodes_.clear();
  }
  for (auto& link : links) link->Close("agent stopping");
}

void PeerTransport::Core::DoAccept() {
  if (stopped_) return;
  acceptor_.async_accept(strand_, [self = shared_from_this()](
                                      const boost::system::error_code& error, Tcp::socket socket) {
    self->OnAccept(error, std::move(socket));
  });
}

void PeerTransport::Core::OnAccept(const boost::system::error_code& error, Tcp::socket socket) {
  if (stopped_ || error == asio::error::operation_aborted) return;
  if (error) {
    // Out of descriptors, say: pause briefly rather than spin.
    spdlog::warn("accepting a peer connection failed: {}", error.message());
    accept_pause_.expires_after(kAcceptErrorPause);
    accept_pause_.async_wait([self = shared_from_this()](const boost::system::error_code& e) {
      if (!e) self->DoAccept();
    });
    return;
  }
  if (AcceptedPending() >= options_.max_pending) {
    // A flood of connections that never authenticate must not grow without bound: turn the
    // newest away (a genuine agent redials) and say so, at most once a second.
    ++turned_away_;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_turned_away_log_ >= std::chrono::seconds(1)) {
      boost::system::error_code ignored;
      const auto remote = socket.remote_endpoint(ignored);
      spdlog::warn(
          "refused peer ? from {}: {} connections are authenticating already (limit; {} "
          "turned away so far)",
          remote.address().to_string(), AcceptedPending(), turned_away_);
      last_turned_away_log_ = now;
    }
    boost::system::error_code ignored;
    socket.close(ignored);
    DoAccept();
    return;
  }
  Adopt(std::move(socket), "");
  DoAccept();
}

void PeerTransport::Core::ConnectTo(const std::string& address, bool once) {
  if (stopped_ || address.empty() || address == options_.advertise) return;
  if (auto found = dialers_.find(address); found != dialers_.end()) {
    if (!once) found->second->once = false;  // ConnectTo makes a Dial persistent
    return;                                  // already wanted: its dial loop runs
  }
  auto& dialer = dialers_[address] = std::make_unique<Dialer>(strand_);
  dialer->once = once;
  {
    // A node already linked (it dialled us) at that advertised address needs no dial now.
    std::lock_guard lock(links_mutex_);
    for (const auto& [id, node] : nodes_) {
      if (node.identity.address == address) dialer->node_id = id;
    }
  }
  if (once && dialer->node_id != 0) {
    dialers_.erase(address);  // linked already: nothing to do
    return;
  }
  Dial(address);
}

void PeerTransport::Core::Forget(const std::string& address) {
  auto found = dialers_.find(address);
  if (found == dialers_.end()) return;
  found->second->timer.cancel();
  dialers_.erase(found);
  for (auto& [link, dialled] : pending_) {
    if (dialled == address) dialled.clear();
  }
  for (auto& [link, dialled] : dialled_at_) {
    if (dialled == address) dialled.clear();
  }
}

void PeerTransport::Core::ScheduleDial(const std::string& address) {
  auto found = dialers_.find(address);
  if (found == dialers_.end() || stopped_) return;
  Dialer& dialer = *found->second;
  dialer.timer.expires_after(dialer.backoff);
  dialer.backoff = std::min(dialer.backoff * 2, kMaxBackoff);
  dialer.scheduled = true;
  dialer.timer.async_wait(
      [self = shared_from_this(), address](const boost::system::error_code& error) {
        if (error) return;
        if (auto found = self->dialers_.find(address); found != self->dialers_.end()) {
          found->second->scheduled = false;
        }
        self->Dial(address);
      });
}

void PeerTransport::Core::Dial(const std::string& address) {
  auto found = dialers_.find(address);
  if (found == dialers_.end() || stopped_) return;
  Dialer& dialer = *found->second;
  if (dialer.attempt_running) return;
  if (dialer.node_id != 0) {
    std::lock_guard lock(links_mutex_);
    if (nodes_.count(dialer.node_id) != 0) return;  // linked; redialled when that link drops
  }
  auto split = SplitHostPort(address);
  if (!split) {
    spdlog::error("cannot dial peer: {}", split.error().message);
    return;
  }
  dialer.attempt_running = true;
  // One attempt: resolve, connect (under a deadline), then hand the socket to a PeerLink.
  struct Attempt {
    explicit Attempt(const asio::strand<asio::io_context::executor_type>& strand)
        : resolver(strand), socket(strand), deadline(strand) {}
    Tcp::resolver resolver;
    Tcp::socket socket;
    asio::steady_timer deadline;
  };
  auto attempt = std::make_shared<Attempt>(strand_);
  attempt->deadline.expires_after(kConnectTimeout);
  attempt->deadline.async_wait([attempt](const boost::system::error_code& error) {
    if (error) return;
    boost::system::error_code ignored;
    attempt->resolver.cancel();
    attempt->socket.close(ignored);
  });
  attempt->resolver.async_resolve(
      split->host, split->port,
      [self = shared_from_this(), attempt, address](const boost::system::error_code& error,
                                                    const Tcp::resolver::results_type& results) {
        if (self->stopped_) return;
        if (error) {
          attempt->deadline.cancel();
          return self->OnDialFailed(address, "cannot resolve: " + error.message());
        }
        asio::async_connect(
            attempt->socket, results,
            [self, attempt, address](const boost::system::error_code& error, const Tcp::endpoint&) {
              attempt->deadline.cancel();
              if (self->stopped_) return;
              if (error) return self->OnDialFailed(address, error.message());
              self->Adopt(std::move(attempt->socket), address);
            });
      });
}

void PeerTransport::Core::OnDialFailed(const std::string& address, const std::string& why) {
  auto found = dialers_.find(address);
  if (found == dialers_.end()) return;
  found->second->attempt_running = false;
  spdlog::debug("dialling peer {} failed: {}; again in {} ms", address, why,
                found->second->backoff.count());
  ScheduleDial(address);
}

void PeerTransport::Core::Adopt(Tcp::socket socket, const std::string& dialled_address) {
  PeerLink::Options link_options;
  link_options.self = {options_.node_name, options_.node_id, options_.advertise,
                       options_.api_address};
  link_options.secret = options_.secret;
  link_options.initiated_by_us = !dialled_address.empty();
  link_options.tls = link_options.initiated_by_us ? client_tls_ : server_tls_;
  link_options.handshake_timeout = options_.handshake_timeout;
  std::weak_ptr<Core> weak = shared_from_this();
  PeerLink::Callbacks callbacks;
  callbacks.on_established = [weak](PeerLink& link, const PeerIdentity& peer) {
    if (auto self = weak.lock()) self->OnEstablished(link.shared_from_this(), peer);
  };
  callbacks.on_frame = [weak](PeerLink& link, Frame frame) {
    if (auto self = weak.lock()) self->OnLinkFrame(link, std::move(frame));
  };
  callbacks.on_closed = [weak](PeerLink& link, const std::string& reason,
                               PeerLink::CloseKind kind) {
    if (auto self = weak.lock()) self->OnClosed(link.shared_from_this(), reason, kind);
  };
  auto link =
      std::make_shared<PeerLink>(std::move(socket), std::move(link_options), std::move(callbacks));
  pending_[link] = dialled_address;
  link->Start();
}

std::pair<std::uint64_t, std::string> PeerTransport::Core::LinkKey(const PeerLink& link,
                                                                   std::uint64_t self) {
  if (link.initiated_by_us()) return {self, link.nonce()};
  return {link.peer().node_id, link.peer_nonce()};
}

void PeerTransport::Core::OnEstablished(const std::shared_ptr<PeerLink>& link,
                                        const PeerIdentity& peer) {
  if (stopped_) return;
  auto pending = pending_.find(link);
  const std::string dialled = pending == pending_.end() ? "" : pending->second;
  if (pending != pending_.end()) pending_.erase(pending);
  if (!dialled.empty()) {
    if (auto dialer = dialers_.find(dialled); dialer != dialers_.end()) {
      if (dialer->second->once) {
        dialer->second->timer.cancel();
        dialers_.erase(dialer);
      } else {
        dialled_at_[link] = dialled;
        dialer->second->attempt_running = false;
        dialer->second->backoff = kFirstBackoff;
        dialer->second->node_id = peer.node_id;
      }
    }
  }
  std::shared_ptr<PeerLink> loser;
  bool is_new_node = false;
  {
    std::lock_guard lock(links_mutex_);
    auto [node, inserted] = nodes_.try_emplace(peer.node_id);
    if (inserted) {
      node->second.active = link;
      node->second.identity = peer;
      is_new_node = down_deferred_.erase(peer.node_id) == 0;
    } else if (LinkKey(*link, options_.node_id) < LinkKey(*node->second.active, options_.node_id)) {
      loser = std::exchange(node->second.active, link);
      node->second.identity = peer;
    } else {
      loser = link;
    }
  }
  if (loser) {
    spdlog::debug("two links to peer {}: closing the one from {}", peer.name, loser->remote());
    dialled_at_.erase(loser);
    loser->Close("duplicate link to " + peer.name);
    return;
  }
  if (is_new_node && owner_ && owner_->on_peer_up) owner_->on_peer_up(peer);
}

void PeerTransport::Core::OnLinkFrame(PeerLink& link, Frame frame) {
  if (stopped_ || !owner_ || !owner_->on_frame) return;
  // Frames from a duplicate that is being dropped still count: the node is up and the peer may
  // have sent them before it learnt which link is kept.
  owner_->on_frame(link.peer().node_id, frame);
}

bool PeerTransport::Core::AnotherLinkAuthenticating(std::uint64_t node_id) const {
  for (const auto& [link, dialled] : pending_) {
    if (link->peer().node_id == node_id) return true;  // its Hello named that node
  }
  return false;
}

void PeerTransport::Core::OnClosed(const std::shared_ptr<PeerLink>& link, const std::string& reason,
                                   PeerLink::CloseKind kind) {
  if (stopped_) return;
  const PeerIdentity peer = link->peer();
  std::string dialled;
  bool was_established = false;
  if (auto pending = pending_.find(link); pending != pending_.end()) {
    dialled = pending->second;
    pending_.erase(pending);
  } else if (auto found = dialled_at_.find(link); found != dialled_at_.end()) {
    dialled = found->second;
    dialled_at_.erase(found);
    was_established = true;
  } else {
    was_established = true;
  }

  if (kind == PeerLink::CloseKind::kRefusedByUs) {
    spdlog::warn("refused peer {} from {}: {}", NameOr(peer), link->remote(), reason);
  } else if (kind == PeerLink::CloseKind::kRefusedByPeer) {
    spdlog::warn("peer {} at {} refused us: {}", NameOr(peer), link->remote(), reason);
  }
  if (kind != PeerLink::CloseKind::kClosed && owner_ && owner_->on_refused) {
    owner_->on_refused(link->remote(), reason);
  }

  if (!was_established) {
    if (auto dialer = dialers_.find(dialled); !dialled.empty() && dialer != dialers_.end()) {
      dialer->second->attempt_running = false;
      bool linked = false;
      if (peer.node_id != 0) {
        // Its Hello named a node we are linked to (the peer dropped this duplicate while we
        // were still authenticating it): nothing to redial until that link drops.
        std::lock_guard lock(links_mutex_);
        linked = nodes_.count(peer.node_id) != 0;
      }
      if (linked && dialer->second->once) {
        dialer->second->timer.cancel();
        dialers_.erase(dialer);
      } else if (linked) {
        dialer->second->node_id = peer.node_id;
      } else {
        ScheduleDial(dialled);
      }
    }
    // A kept link closed earlier while this one was authenticating: now the node is down.
    if (peer.node_id != 0 && !AnotherLinkAuthenticating(peer.node_id)) {
      if (auto deferred = down_deferred_.find(peer.node_id); deferred != down_deferred_.end()) {
        const std::string down_reason = deferred->second;
        down_deferred_.erase(deferred);
        RedialNode(peer.node_id);
        if (owner_ && owner_->on_peer_down) owner_->on_peer_down(peer.node_id, down_reason);
      }
    }
    return;
  }

  bool was_active = false;
  {
    std::lock_guard lock(links_mutex_);
    auto node = nodes_.find(peer.node_id);
    if (node != nodes_.end() && node->second.active == link) {
      nodes_.erase(node);
      was_active = true;
    }
  }
  if (!was_active) return;  // a duplicate we or the peer dropped: the node is still up
  if (AnotherLinkAuthenticating(peer.node_id)) {
    spdlog::debug("link to peer {} closed ({}); another is authenticating", peer.name, reason);
    down_deferred_[peer.node_id] = reason;
    return;
  }
  RedialNode(peer.node_id);
  if (owner_ && owner_->on_peer_down) owner_->on_peer_down(peer.node_id, reason);
}

void PeerTransport::Core::RedialNode(std::uint64_t node_id) {
  for (auto& [address, dialer] : dialers_) {
    if (dialer->node_id == node_id && !dialer->attempt_running) ScheduleDial(address);
  }
}

void PeerTransport::Disconnect(std::uint64_t node_id, std::string reason) {
  core_->Disconnect(node_id, reason);
}

namespace {

bool FitsAFrame(std::uint64_t node_id, FrameType type, const std::string& payload) {
  if (payload.size() <= kDefaultMaxPayload) return true;
  spdlog::error("not sending a {} frame of {} bytes to {}: over the frame limit of {}",
                FrameTypeName(type), payload.size(), NodeIdToHex(node_id), kDefaultMaxPayload);
  return false;
}

}  // namespace

std::shared_ptr<PeerLink> PeerTransport::Core::ActiveLink(std::uint64_t node_id) const {
  std::lock_guard lock(links_mutex_);
  auto found = nodes_.find(node_id);
  if (found == nodes_.end()) return nullptr;
  return found->second.active;
}

bool PeerTransport::Core::Send(std::uint64_t node_id, FrameType type, std::string payload) {
  std::vector<Frame> one;
  one.push_back({type, std::move(payload)});
  return Send(node_id, std::move(one));
}

bool PeerTransport::Core::Send(std::uint64_t node_id, std::vector<Frame> frames) {
  for (const Frame& frame : frames) {
    if (!FitsAFrame(node_id, frame.type, frame.payload)) return false;
  }
  auto link = ActiveLink(node_id);
  if (!link) return false;
  link->Send(std::move(frames));
  return true;
}

std::vector<PeerIdentity> PeerTransport::Core::Peers() const {
  std::lock_guard lock(links_mutex_);
  std::vector<PeerIdentity> peers;
  peers.reserve(nodes_.size());
  for (const auto& [id, node] : nodes_) peers.push_back(node.identity);
  return peers;
}

PeerTransport::PeerTransport(asio::io_context& io, Options options)
    : core_(std::make_shared<Core>(io, std::move(options), this)) {}

PeerTransport::~PeerTransport() { Stop(); }

Expected<void> PeerTransport::Start() { return core_->Start(); }

void PeerTransport::ConnectTo(std::string host_port) {
  asio::post(core_->strand(), [core = core_, host_port = std::move(host_port)] {
    core->ConnectTo(host_port, false);
  });
}

void PeerTransport::Dial(std::string host_port) {
  asio::post(core_->strand(), [core = core_, host_port = std::move(host_port)] {
    core->ConnectTo(host_port, true);
  });
}

void PeerTransport::Forget(std::string host_port) {
  asio::post(core_->strand(),
             [core = core_, host_port = std::move(host_port)] { core->Forget(host_port); });
}

bool PeerTransport::Send(std::uint64_t node_id, FrameType type, std::string payload) {
  return core_->Send(node_id, type, std::move(payload));
}

bool PeerTransport::Send(std::uint64_t node_id, std::vector<Frame> frames) {
  return core_->Send(node_id, std::move(frames));
}

std::size_t PeerTransport::Backlog(std::uint64_t node_id) const {
  auto link = core_->ActiveLink(node_id);
  return link ? link->backlog() : 0;
}

std::vector<PeerIdentity> PeerTransport::Peers() const { return core_->Peers(); }

std::uint16_t PeerTransport::ListenPort() const { return core_->listen_port(); }

PeerTransport::Stats PeerTransport::GetStats() const { return core_->stats(); }

void PeerTransport::Stop() { core_->Stop(); }

}  // namespace tern::ipc
