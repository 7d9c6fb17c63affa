#include "tern/ipc/peer_transport.hpp"

#include <spdlog/spdlog.h>

namespace tern::ipc {

namespace asio = boost::asio;
using Tcp = asio::ip::tcp;
constexpr auto kMaxBackoff = std::chrono::milliseconds(5000);

namespace {

Expected<Tcp::endpoint> ParseEndpoint(const std::string& host_port) {
  const auto colon = host_port.rfind(':');
  if (colon == std::string::npos) return Fail("address must be host:port: " + host_port);
  boost::system::error_code error;
  const auto address = asio::ip::make_address(host_port.substr(0, colon), error);
  if (error) return Fail("bad address " + host_port + ": " + error.message());
  try {
    return Tcp::endpoint(address, static_cast<std::uint16_t>(std::stoul(host_port.substr(colon + 1))));
  } catch (const std::exception&) {
    return Fail("bad port in " + host_port);
  }
}

}  // namespace

PeerTransport::PeerTransport(asio::io_context& io, Options options)
    : io_(io), options_(std::move(options)), acceptor_(io) {}

PeerTransport::~PeerTransport() { Stop(); }

Expected<void> PeerTransport::Start() {
  auto endpoint = ParseEndpoint(options_.listen);
  if (!endpoint) return Unexpected<Error>{endpoint.error()};
  boost::system::error_code error;
  acceptor_.open(endpoint->protocol(), error);
  if (!error) acceptor_.set_option(asio::socket_base::reuse_address(true), error);
  if (!error) acceptor_.bind(*endpoint, error);
  if (!error) acceptor_.listen(asio::socket_base::max_listen_connections, error);
  if (error) return Fail("cannot listen for peers on " + options_.listen + ": " + error.message());
  Accept();
  return {};
}

std::uint16_t PeerTransport::ListenPort() const {
  boost::system::error_code error;
  return acceptor_.local_endpoint(error).port();
}

void PeerTransport::Stop() {
  if (stopped_) return;
  stopped_ = true;
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  for (auto& [address, dialer] : dialers_) {
    if (dialer.timer) dialer.timer->cancel();
  }
  std::vector<std::shared_ptr<PeerLink>> all(pending_.begin(), pending_.end());
  {
    std::lock_guard lock(links_mutex_);
    for (auto& [id, link] : links_) all.push_back(link);
    links_.clear();
  }
  pending_.clear();
  for (auto& link : all) link->Close("agent stopping");
}

void PeerTransport::Accept() {
  acceptor_.async_accept([this](const boost::system::error_code& error, Tcp::socket socket) {
    if (stopped_ || error == asio::error::operation_aborted) return;
    if (!error) Adopt(std::move(socket), false, "");
    Accept();
  });
}

void PeerTransport::ConnectTo(const std::string& address) {
  if (stopped_ || address.empty() || address == options_.advertise) return;
  auto [it, inserted] = dialers_.try_emplace(address);
  if (!inserted) return;  // already wanted: its dial loop runs
  it->second.timer = std::make_unique<asio::steady_timer>(io_);
  Dial(address);
}

void PeerTransport::Forget(const std::string& address) {
  auto found = dialers_.find(address);
  if (found == dialers_.end()) return;
  found->second.timer->cancel();
  dialers_.erase(found);
}

void PeerTransport::ScheduleDial(const std::string& address, std::chrono::milliseconds delay) {
  auto found = dialers_.find(address);
  if (found == dialers_.end() || stopped_) return;
  found->second.timer->expires_after(delay);
  found->second.timer->async_wait([this, address](const boost::system::error_code& error) {
    if (!error) Dial(address);
  });
}

void PeerTransport::Dial(const std::string& address) {
  auto found = dialers_.find(address);
  if (found == dialers_.end() || stopped_) return;
  Dialer& dialer = found->second;
  if (dialer.in_progress || (dialer.node_id != 0 && HasLinkTo(dialer.node_id))) return;
  auto endpoint = ParseEndpoint(address);
  if (!endpoint) {
    spdlog::error("cannot dial peer {}: {}", address, endpoint.error().message);
    return;
  }
  dialer.in_progress = true;
  auto socket = std::make_shared<Tcp::socket>(io_);
  socket->async_connect(*endpoint, [this, socket, address](const boost::system::error_code& error) {
    auto found = dialers_.find(address);
    if (stopped_ || found == dialers_.end()) return;
    Dialer& dialer = found->second;
    if (error) {
      dialer.in_progress = false;
      spdlog::debug("dial {} failed: {}; again in {} ms", address, error.message(),
                    dialer.backoff.count());
      ScheduleDial(address, dialer.backoff);
      dialer.backoff = std::min(dialer.backoff * 2, kMaxBackoff);
      return;
    }
    Adopt(std::move(*socket), true, address);
  });
}

void PeerTransport::Adopt(Tcp::socket socket, bool initiated, const std::string& address) {
  PeerIdentity self{options_.node_name, options_.node_id, options_.advertise, options_.api_address};
  PeerLink::Callbacks callbacks;
  callbacks.on_established = [this](const std::shared_ptr<PeerLink>& link) { OnEstablished(link); };
  callbacks.on_frame = [this](const std::shared_ptr<PeerLink>& link, Frame frame) {
    if (!link->established()) return;
    {
      std::lock_guard lock(links_mutex_);
      auto found = links_.find(link->peer().node_id);
      if (found == links_.end() || found->second != link) return;  // superseded link
    }
    if (on_frame) on_frame(link->peer().node_id, frame);
  };
  callbacks.on_closed = [this](const std::shared_ptr<PeerLink>& link, const std::string& reason,
                               bool refused) { OnClosed(link, reason, refused); };
  auto link = std::make_shared<PeerLink>(std::move(socket), self, options_.secret, initiated,
                                         std::move(callbacks));
  link->dialled_address = address;
  pending_.insert(link);
  link->Start();
}

void PeerTransport::OnEstablished(const std::shared_ptr<PeerLink>& link) {
  pending_.erase(link);
  const PeerIdentity& peer = link->peer();
  if (!link->dialled_address.empty()) {
    auto dialer = dialers_.find(link->dialled_address);
    if (dialer != dialers_.end()) {
      dialer->second.in_progress = false;
      dialer->second.backoff = std::chrono::milliseconds(1000);
      dialer->second.node_id = peer.node_id;
    }
  }
  std::shared_ptr<PeerLink> loser;
  bool replaced_existing = false;
  {
    std::lock_guard lock(links_mutex_);
    auto existing = links_.find(peer.node_id);
    if (existing == links_.end()) {
      links_[peer.node_id] = link;
    } else {
      // Two links to one node: keep the one dialled by the smaller node id; both sides agree.
      const std::uint64_t keeper = std::min(options_.node_id, peer.node_id);
      const bool new_wins = (link->initiated_by_us() ? options_.node_id : peer.node_id) == keeper;
      const bool old_wins =
          (existing->second->initiated_by_us() ? options_.node_id : peer.node_id) == keeper;
      if (new_wins && !old_wins) {
        loser = existing->second;
        existing->second = link;
        replaced_existing = true;
      } else {
        loser = link;
      }
    }
  }
  if (loser) {
    loser->Close("duplicate link to " + peer.name);
    if (replaced_existing) return;  // already reported up through the old link
    return;
  }
  if (on_peer_up) on_peer_up(peer);
}

void PeerTransport::OnClosed(const std::shared_ptr<PeerLink>& link, const std::string& reason,
                             bool refused) {
  pending_.erase(link);
  if (stopped_) return;
  const PeerIdentity& peer = link->peer();
  if (refused) {
    spdlog::warn("refused peer {} from {}: {}", peer.name.empty() ? "?" : peer.name,
                 link->remote(), reason);
    if (on_refused) on_refused(link->remote(), reason);
  }
  bool was_active = false;
  if (link->established()) {
    std::lock_guard lock(links_mutex_);
    auto found = links_.find(peer.node_id);
    if (found != links_.end() && found->second == link) {
      links_.erase(found);
      was_active = true;
    }
  }
  if (!link->dialled_address.empty()) {
    auto dialer = dialers_.find(link->dialled_address);
    if (dialer != dialers_.end()) {
      dialer->second.in_progress = false;
      if (!link->established()) {
        ScheduleDial(link->dialled_address, dialer->second.backoff);
        dialer->second.backoff = std::min(dialer->second.backoff * 2, kMaxBackoff);
      }
    }
  }
  if (was_active) {
    if (on_peer_down) on_peer_down(peer.node_id, reason);
    // Redial every address that led to this node.
    for (auto& [address, dialer] : dialers_) {
      if (dialer.node_id == peer.node_id) ScheduleDial(address, std::chrono::milliseconds(1000));
    }
  }
}

bool PeerTransport::HasLinkTo(std::uint64_t node_id) const {
  std::lock_guard lock(links_mutex_);
  return links_.count(node_id) != 0;
}

bool PeerTransport::Send(std::uint64_t node_id, FrameType type, std::string payload) {
  std::shared_ptr<PeerLink> link;
  {
    std::lock_guard lock(links_mutex_);
    auto found = links_.find(node_id);
    if (found == links_.end()) return false;
    link = found->second;
  }
  link->Send(type, std::move(payload));
  return true;
}

std::vector<PeerIdentity> PeerTransport::Peers() const {
  std::lock_guard lock(links_mutex_);
  std::vector<PeerIdentity> peers;
  for (const auto& [id, link] : links_) peers.push_back(link->peer());
  return peers;
}

}  // namespace tern::ipc
