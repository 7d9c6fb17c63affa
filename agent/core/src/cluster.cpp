#include "tern/agent/cluster.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <tern/ipc/frame_type.hpp>
#include <tern/ipc/peer_transport.hpp>

#include "tern/agent/load_json.hpp"
#include "tern/agent/remote_caller.hpp"

namespace tern::agent {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
constexpr std::size_t kMaxQueuedBytes = 64u << 20;  // per node, waiting for a link
constexpr int kWarnsPerMinute = 10;
const std::string kKeepalive = R"({"entries":[]})";

std::size_t PayloadBytes(const std::vector<ipc::Frame>& frames) {
  std::size_t bytes = 0;
  for (const auto& frame : frames) bytes += frame.payload.size();
  return bytes;
}

// Push gossip to one random peer a round brings a node's news to another in a few rounds, now
// and then more (measured on 6 nodes: news over 3 s old a few times a minute). Four rounds of
// grace keep suspect for real silence; dead_after is not moved.
std::chrono::milliseconds GossipGrace(const AgentConfig& config) {
  return std::min(config.heartbeat * 4, (config.dead_after - config.suspect_after) / 2);
}

}  // namespace

Cluster::Cluster(boost::asio::io_context& io, const AgentConfig& config, NodeIdentity self)
    : io_(io),
      config_(config),
      self_(std::move(self)),
      membership_(balancer::MembershipOptions{.self = {.node_id = self_.id,
                                                       .name = self_.name,
                                                       .address = config.cluster_advertise,
                                                       .api_address = config.api_listen},
                                              .suspect_after = config.suspect_after,
                                              .dead_after = config.dead_after,
                                              .gossip_grace = GossipGrace(config)}),
      gossip_(balancer::GossipOptions{
          .self_id = self_.id,
          .window = config.gossip_window,
          .fanout = config.gossip_fanout,
          // Entries outlive dead_after so that a death is seen before its entry expires.
          .max_age = std::max(milliseconds(30000), config.dead_after * 3),
          .dead_news_for = config.dead_after,
          .view_max = config.gossip_view_max}),
      budget_(config.max_links, config.link_idle),
      rng_(std::random_device{}() ^ self_.id),
      heartbeat_timer_(io) {}

Cluster::~Cluster() { Stop(); }

std::chrono::milliseconds Cluster::Now() const {
  return std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - epoch_);
}

Expected<void> Cluster::Start() {
  ipc::PeerTransport::Options options;
  options.node_name = self_.name;
  options.node_id = self_.id;
  options.secret = config_.secret;
  options.listen = config_.cluster_listen;
  options.advertise = config_.cluster_advertise;
  options.api_address = config_.api_listen;
  options.tls = ipc::TlsFiles{config_.tls_ca, config_.tls_cert, config_.tls_key};
  transport_ = std::make_unique<ipc::PeerTransport>(io_, options);
  transport_->on_peer_up = [this](const ipc::PeerIdentity& peer) { OnPeerUp(peer); };
  transport_->on_peer_down = [this](std::uint64_t node_id, const std::string& reason) {
    OnPeerDown(node_id, reason);
  };
  transport_->on_frame = [this](std::uint64_t node_id, ipc::Frame& frame) {
    OnFrame(node_id, static_cast<std::uint16_t>(frame.type), std::move(frame.payload));
  };
  if (auto started = transport_->Start(); !started) {
    // Without its certificate a node cannot join, and a node that runs alone while its
    // operator believes it is in the cluster is worse than one that does not start.
    if (started.error().message.find("TLS") != std::string::npos) {
      return Fail(started.error().message + ": this node cannot join the cluster; make its " +
                  "certificate with `tern tls issue " + self_.name +
                  "` where the cluster CA is and install it ([tls] in " + config_.source +
                  ", docs/operations.md)");
    }
    return started;
  }
  // Seeds are dialled once: gossip then names every other node, and links open on demand.
  for (const auto& seed : config_.seeds) {
    if (seed != config_.cluster_advertise) transport_->Dial(seed);
  }
  spdlog::info(
      "cluster: node {} ({}) listening on {}, advertising {}, {} seed(s); at most {} links, "
      "gossip to {} peer(s) per {} ms, {} entries, a view of at most {}",
      self_.name, NodeIdHex(self_.id), config_.cluster_listen, config_.cluster_advertise,
      config_.seeds.size(), config_.max_links, config_.gossip_fanout, config_.heartbeat.count(),
      config_.gossip_window, gossip_.options().view_max);
  OnHeartbeatTimer();
  return {};
}

void Cluster::Stop() {
  if (stopped_) return;
  stopped_ = true;
  heartbeat_timer_.cancel();
  for (auto& [id, pending] : pending_) {
    if (pending.timer) pending.timer->cancel();
  }
  pending_.clear();
  if (transport_) transport_->Stop();
}

void Cluster::OnHeartbeatTimer() {
  if (stopped_) return;
  SendGossip();
  Apply(membership_.Tick(Now()));
  ManageLinks();
  heartbeat_timer_.expires_after(config_.heartbeat);
  heartbeat_timer_.async_wait([this](const boost::system::error_code& error) {
    if (!error) OnHeartbeatTimer();
  });
}

void Cluster::SendGossip() {
  const auto now = Now();
  if (load_provider_) {
    balancer::LoadVector own = load_provider_();
    own.node_id = self_.id;
    own.node_name = self_.name;
    own.address = config_.cluster_advertise;
    own.api_address = config_.api_listen;
    // Seq starts at the wall clock's milliseconds, so a restarted agent's entries win over
    // those of its previous life that may still circulate.
    if (load_seq_ == 0) {
      load_seq_ =
          static_cast<std::uint64_t>(std::chrono::duration_cast<milliseconds>(
                                         std::chrono::system_clock::now().time_since_epoch())
                                         .count());
    }
    own.seq = ++load_seq_;
    gossip_.SetLocal(std::move(own), now);
  }
  std::vector<std::uint64_t> candidates;
  for (const auto& member : membership_.Members()) {
    if (member.node_id != self_.id && member.state != balancer::MemberState::kDead) {
      candidates.push_back(member.node_id);
    }
  }
  // Alone (a fresh start, or every peer gone): the seeds are how we find the cluster again.
  if (candidates.empty()) {
    for (const auto& seed : config_.seeds) {
      if (seed != config_.cluster_advertise) transport_->Dial(seed);
    }
  }
  RedialTheDead(now);
  std::vector<std::uint64_t> sent_to;
  for (auto& send : gossip_.Tick(now, candidates, rng_)) {
    std::vector<ipc::Frame> frames;
    frames.push_back({ipc::FrameType::kGossip, GossipToJson(send.entries)});
    const std::size_t bytes = frames.front().payload.size();
    if (Deliver(send.to, std::move(frames), true, /*droppable=*/true)) {
      traffic_.gossip_bytes_sent += bytes;
      ++traffic_.gossip_frames_sent;
      sent_to.push_back(send.to);
    }
  }
  // Linked peers hear from us every interval, as they did when every peer got a heartbeat:
  // a node we hold a link to (a migration, calls) is watched closely. Not a use of the link.
  for (const auto& [node_id, link] : links_) {
    if (link.state != Link::State::kUp) continue;
    if (std::find(sent_to.begin(), sent_to.end(), node_id) != sent_to.end()) continue;
    std::vector<ipc::Frame> frames;
    frames.push_back({ipc::FrameType::kGossip, kKeepalive});
    if (transport_->Send(node_id, std::move(frames))) {
      traffic_.gossip_bytes_sent += kKeepalive.size();
      traffic_.bytes_sent += kKeepalive.size();
      ++traffic_.gossip_frames_sent;
    }
  }
  SyncMembershipFromGossip();
}

// Every kDeadRedial one dead member, in turn, is dialled at the address it advertised (one
// connection attempt; nothing if it is still down): MembershipView::NextDeadToDial says why.
void Cluster::RedialTheDead(std::chrono::milliseconds now) {
  if (now - last_dead_redial_ < kDeadRedial) return;
  last_dead_redial_ = now;
  const auto next = membership_.NextDeadToDial(last_dead_dialled_);
  if (!next) return;
  last_dead_dialled_ = next->node_id;
  spdlog::debug("dialling {} again (dead) at {}", next->name, next->address);
  transport_->Dial(next->address);
}

void Cluster::SyncMembershipFromGossip() {
  const auto now = Now();
  for (const auto& entry : gossip_.View(now)) {
    if (entry.load.node_id == self_.id) continue;
    Apply(membership_.OnGossipEntry({.node_id = entry.load.node_id,
                                     .name = entry.load.node_name,
                                     .address = entry.load.address,
                                     .api_address = entry.load.api_address},
                                    now - entry.age, entry.dead, now));
  }
}

void Cluster::ManageLinks() {
  const auto now = Now();
  for (auto& [node_id, link] : links_) {
    if (link.state == Link::State::kUp && HasPendingCalls(node_id)) budget_.OnUse(node_id, now);
  }
  for (auto node_id : budget_.Tick(now)) {
    auto found = links_.find(node_id);
    if (found == links_.end() || found->second.state != Link::State::kUp) continue;
    if (HasPendingCalls(node_id)) {
      budget_.OnUse(node_id, now);  // Tick forgot it; it stays open
      continue;
    }
    spdlog::debug("link to {} idle: asking to close it", NameOf(node_id));
    SendLinkIdle(node_id, "ask");
    found->second.state = Link::State::kClosing;
    found->second.asked = true;
    found->second.since = now;
  }
  std::vector<std::uint64_t> give_up;
  for (auto& [node_id, link] : links_) {
    if (link.state == Link::State::kOpening && now - link.since >= kOpenTimeout) {
      give_up.push_back(node_id);
    } else if (link.state == Link::State::kClosing && now - link.since >= kCloseTimeout) {
      // The peer never answered (an older agent, or it is gone): close; still an idle close.
      transport_->Disconnect(node_id, "idle link (no answer to LinkIdle)");
    }
  }
  for (auto node_id : give_up) {
    Link& link = links_[node_id];
    transport_->Forget(link.dial_address);
    GiveUp(node_id, link,
           "no link to " + NameOf(node_id) + " within " + std::to_string(kOpenTimeout.count()) +
               " ms");
    Apply(membership_.OnPeerDown(node_id, now));
  }
  traffic_.links_open = budget_.open();
  traffic_.links_open_max = std::max(traffic_.links_open_max, traffic_.links_open);
}

bool Cluster::HasPendingCalls(std::uint64_t node_id) const {
  return std::any_of(pending_.begin(), pending_.end(),
                     [&](const auto& entry) { return entry.second.node_id == node_id; });
}

void Cluster::SendLinkIdle(std::uint64_t node_id, std::string_view step) {
  const std::string payload = json{{"step", step}}.dump();
  traffic_.bytes_sent += payload.size();
  transport_->Send(node_id, ipc::FrameType::kLinkIdle, payload);
}

bool Cluster::Deliver(std::uint64_t node_id, std::vector<ipc::Frame> frames, bool use,
                      bool droppable) {
  if (node_id == self_.id || !transport_ || stopped_) return false;
  Link& link = links_[node_id];
  const std::size_t bytes = PayloadBytes(frames);
  if (link.state == Link::State::kUp) {
    if (!transport_->Send(node_id, std::move(frames))) return false;
    traffic_.bytes_sent += bytes;
    if (use) budget_.OnUse(node_id, Now());
    return true;
  }
  // Gossip is lossy by design: it does not reopen a link that is closing.
  if (droppable && link.state == Link::State::kClosing) return false;
  if (link.state == Link::State::kNone && !Open(node_id, link)) return false;
  if (link.queued_bytes + bytes > kMaxQueuedBytes) {
    spdlog::warn("not queueing {} bytes for {}: {} bytes already wait for its link", bytes,
                 NameOf(node_id), link.queued_bytes);
    return false;
  }
  link.queued_bytes += bytes;
  link.queued.push_back(std::move(frames));
  return true;
}

bool Cluster::Open(std::uint64_t node_id, Link& link) {
  for (const auto& member : membership_.Members()) {
    if (member.node_id != node_id) continue;
    if (member.state == balancer::MemberState::kDead || member.address.empty()) return false;
    link.state = Link::State::kOpening;
    link.since = Now();
    link.dial_address = member.address;
    spdlog::debug("opening a link to {} at {}", member.name, member.address);
    transport_->Dial(member.address);
    return true;
  }
  return false;
}

void Cluster::Flush(std::uint64_t node_id, Link& link) {
  auto queued = std::move(link.queued);
  link.queued.clear();
  link.queued_bytes = 0;
  for (auto& frames : queued) {
    const std::size_t bytes = PayloadBytes(frames);
    if (transport_->Send(node_id, std::move(frames))) traffic_.bytes_sent += bytes;
  }
}

void Cluster::GiveUp(std::uint64_t node_id, Link& link, const std::string& reason) {
  const bool had_frames = !link.queued.empty();
  link.state = Link::State::kNone;
  link.queued.clear();
  link.queued_bytes = 0;
  spdlog::warn("giving up on {}: {}", NameOf(node_id), reason);
  FailPendingCalls(node_id, reason);
  // The IPC layer fails what waits on that node; frames it handed us are not silently lost.
  if (link.ipc_up || had_frames) {
    link.ipc_up = false;
    if (link_listener_) link_listener_(node_id, false);
  }
}

void Cluster::OnPeerUp(const ipc::PeerIdentity& peer) {
  const auto now = Now();
  Link& link = links_[peer.node_id];
  spdlog::info("peer {} ({}) linked, {}", peer.name, NodeIdHex(peer.node_id), peer.address);
  link.state = Link::State::kUp;
  if (!link.dial_address.empty()) transport_->Forget(std::exchange(link.dial_address, ""));
  budget_.OnOpened(peer.node_id, now);
  ++traffic_.links_opened;
  traffic_.links_open = budget_.open();
  traffic_.links_open_max = std::max(traffic_.links_open_max, traffic_.links_open);
  Apply(membership_.OnPeerUp({.node_id = peer.node_id,
                              .name = peer.name,
                              .address = peer.address,
                              .api_address = peer.api_address},
                             now));
  if (!link.ipc_up) {
    link.ipc_up = true;
    if (link_listener_) link_listener_(peer.node_id, true);
  }
  Flush(peer.node_id, links_[peer.node_id]);
}

void Cluster::OnPeerDown(std::uint64_t node_id, const std::string& reason) {
  budget_.OnClosed(node_id);
  traffic_.links_open = budget_.open();
  Link& link = links_[node_id];
  if (link.state == Link::State::kClosing) {
    // An idle close both sides agreed to: nothing was in flight, the node lives on.
    spdlog::info("closed the idle link to {}", NameOf(node_id));
    ++traffic_.links_closed_idle;
    link.state = Link::State::kNone;
    membership_.OnLinkIdleClosed(node_id);
    if (!link.queued.empty() && !Open(node_id, link)) {
      GiveUp(node_id, link, "node " + NameOf(node_id) + " is gone");
    }
    return;
  }
  spdlog::warn("peer {} disconnected: {}", NameOf(node_id), reason);
  link.state = Link::State::kNone;
  FailPendingCalls(node_id, "the link to " + NameOf(node_id) + " went down: " + reason);
  if (link.ipc_up) {
    link.ipc_up = false;
    if (link_listener_) link_listener_(node_id, false);
  }
  Apply(membership_.OnPeerDown(node_id, Now()));
}

void Cluster::Apply(const std::vector<balancer::MembershipAction>& actions) {
  for (const auto& action : actions) {
    const auto& change = std::get<balancer::StateChangedAction>(action);
    spdlog::info("node {} is now {} (was {})", change.name, balancer::ToString(change.to),
                 balancer::ToString(change.from));
    if (change.to == balancer::MemberState::kDead) {
      gossip_.OnNodeDead(change.node_id, Now());
      if (auto link = links_.find(change.node_id); link != links_.end()) {
        if (link->second.state == Link::State::kOpening) {
          transport_->Forget(link->second.dial_address);
        }
        if (link->second.state != Link::State::kUp) {
          GiveUp(change.node_id, link->second, "node " + change.name + " is dead");
        }
      }
      FailPendingCalls(change.node_id, "node " + change.name + " is dead (no sign of life)");
    } else if (change.to == balancer::MemberState::kAlive) {
      gossip_.OnNodeAlive(change.node_id, Now());
    }
    if (node_listener_) node_listener_(change.node_id, change.to);
  }
}

bool Cluster::SendIpc(std::uint64_t node_id, std::vector<ipc::Frame> frames) {
  traffic_.ipc_frames_sent += frames.size();
  for (const auto& frame : frames) traffic_.ipc_bytes_sent += frame.payload.size();
  return Deliver(node_id, std::move(frames), true);
}

std::size_t Cluster::IpcBacklog(std::uint64_t node_id) const {
  const auto found = links_.find(node_id);
  const std::size_t queued = found == links_.end() ? 0 : found->second.queued_bytes;
  return queued + transport_->Backlog(node_id);
}

void Cluster::RateLimitedWarn(const std::string& message) {
  const auto now = Now();
  if (now - warn_window_start_ >= milliseconds(60000)) {
    if (warns_suppressed_ > 0) {
      spdlog::warn("({} more gossip warnings in the last minute not logged)", warns_suppressed_);
    }
    warn_window_start_ = now;
    warns_in_window_ = 0;
    warns_suppressed_ = 0;
  }
  if (++warns_in_window_ > kWarnsPerMinute) {
    ++warns_suppressed_;
    return;
  }
  spdlog::warn("{}", message);
}

void Cluster::OnGossipFrame(std::uint64_t node_id, const std::string& payload) {
  traffic_.gossip_bytes_received += payload.size();
  auto parsed = GossipFromJson(payload);
  if (!parsed) {
    RateLimitedWarn("dropping gossip from " + NameOf(node_id) + ": " + parsed.error().message);
    return;
  }
  for (const auto& line : parsed->rejected) {
    RateLimitedWarn("gossip from " + NameOf(node_id) + ": dropped an entry: " + line);
  }
  if (parsed->entries.empty()) return;  // a keepalive: a sign of life, not a use of the link
  budget_.OnUse(node_id, Now());
  for (const auto& line : gossip_.OnReceive(node_id, parsed->entries, Now())) {
    RateLimitedWarn("gossip from " + NameOf(node_id) + ": rejected an entry: " + line);
  }
  SyncMembershipFromGossip();
}

void Cluster::OnLinkIdle(std::uint64_t node_id, const std::string& payload) {
  const json body = json::parse(payload, nullptr, false);
  const std::string step =
      body.is_object() && body.contains("step") && body["step"].is_string() ? body["step"] : "";
  Link& link = links_[node_id];
  if (step == "ask") {
    if (link.state == Link::State::kUp && HasPendingCalls(node_id)) {
      SendLinkIdle(node_id, "no");
      return;
    }
    if (link.state == Link::State::kUp || link.state == Link::State::kClosing) {
      SendLinkIdle(node_id, "yes");  // from now on our frames for it wait for the next link
      if (link.state == Link::State::kUp) {
        link.state = Link::State::kClosing;
        link.asked = false;
        link.since = Now();
      }
    }
  } else if (step == "yes") {
    if (link.state == Link::State::kClosing) transport_->Disconnect(node_id, "idle link");
  } else if (step == "no") {
    if (link.state == Link::State::kClosing && link.asked) {
      link.state = Link::State::kUp;
      budget_.OnUse(node_id, Now());
      Flush(node_id, link);
    }
  } else {
    RateLimitedWarn("ignoring a malformed LinkIdle from " + NameOf(node_id));
  }
}

void Cluster::OnFrame(std::uint64_t node_id, std::uint16_t type, std::string payload) {
  Apply(membership_.OnHeartbeat(node_id, Now()));  // any frame is a sign of life
  switch (static_cast<ipc::FrameType>(type)) {
    case ipc::FrameType::kGossip:
      OnGossipFrame(node_id, payload);
      return;
    case ipc::FrameType::kLinkIdle:
      OnLinkIdle(node_id, payload);
      return;
    case ipc::FrameType::kHeartbeat:
      return;  // an agent from before gossip: its link alone tells us it lives
    case ipc::FrameType::kApiRequest:
      budget_.OnUse(node_id, Now());
      OnApiRequest(node_id, payload);
      return;
    case ipc::FrameType::kApiResponse:
      budget_.OnUse(node_id, Now());
      OnApiResponse(payload);
      return;
    case ipc::FrameType::kIpcRemote:
    case ipc::FrameType::kIpcBlast:
    case ipc::FrameType::kIpcBlastAck:
    case ipc::FrameType::kIpcDirect:
    case ipc::FrameType::kIpcSequenced:
    case ipc::FrameType::kIpcSequenceAck:
      budget_.OnUse(node_id, Now());
      if (ipc_frames_) {
        if (auto handled =
                ipc_frames_(node_id, static_cast<ipc::FrameType>(type), std::move(payload));
            !handled) {
          spdlog::warn("closing the link to {}: {}", NameOf(node_id), handled.error().message);
          transport_->Disconnect(node_id, handled.error().message);
        }
      }
      return;
    default:
      spdlog::warn("ignoring frame type {} from {}", type, NameOf(node_id));
  }
}

void Cluster::OnApiRequest(std::uint64_t node_id, const std::string& payload) {
  auto decoded = DecodeApiRequest(payload);
  if (!decoded) {
    spdlog::warn("malformed api request from {}: {}", NameOf(node_id), decoded.error().message);
    return;
  }
  auto [request_id, call] = std::move(*decoded);
  const std::string origin_via = call.caller.via;
  call.caller.via = "peer " + NameOf(node_id);
  auto answer = [this, node_id, request_id = request_id](ApiResult result) {
    if (stopped_) return;
    std::vector<ipc::Frame> frames;
    frames.push_back({ipc::FrameType::kApiResponse, EncodeApiResponse(request_id, result)});
    if (!Deliver(node_id, std::move(frames), true)) {
      spdlog::warn("cannot answer {}'s call {}: no way to it", NameOf(node_id), request_id);
    }
  };
  // The frame came over a peer link, so from a node the CA vouches for (PeerTransport): its
  // uid is believed, but root elsewhere is root here only if this node allows it.
  if (auto allowed = CheckForwardedCaller(call, origin_via, config_.allow_remote_root, self_.name);
      !allowed) {
    spdlog::warn("refused {} {} from {} as uid 0: {}", call.method, call.target, NameOf(node_id),
                 allowed.error().message);
    answer(ErrorResult(403, allowed.error().message));
    return;
  }
  if (!request_handler_) return;
  request_handler_(std::move(call), std::move(answer));
}

void Cluster::OnApiResponse(const std::string& payload) {
  auto decoded = DecodeApiResponse(payload);
  if (!decoded) {
    spdlog::warn("malformed api response: {}", decoded.error().message);
    return;
  }
  Complete(decoded->first, std::move(decoded->second));
}

void Cluster::Complete(std::uint64_t request_id, ApiResult result) {
  auto found = pending_.find(request_id);
  if (found == pending_.end()) return;  // timed out already
  ApiDone done = std::move(found->second.done);
  if (found->second.timer) found->second.timer->cancel();
  pending_.erase(found);
  done(std::move(result));
}

void Cluster::FailPendingCalls(std::uint64_t node_id, const std::string& reason) {
  std::vector<std::uint64_t> failed;
  for (const auto& [id, pending] : pending_) {
    if (pending.node_id == node_id) failed.push_back(id);
  }
  for (auto id : failed) Complete(id, ErrorResult(503, reason));
}

void Cluster::Call(std::uint64_t node_id, ApiCall call, ApiDone done,
                   std::chrono::milliseconds timeout) {
  // A dead node gets no new calls: they would only wait out their timeout. A suspect one is
  // tried: without a link to every node, suspect may only mean its news is late.
  for (const auto& member : membership_.Members()) {
    if (member.node_id == node_id && member.state == balancer::MemberState::kDead) {
      done(ErrorResult(503, "node " + member.name + " is dead (no recent sign of life)"));
      return;
    }
  }
  const std::uint64_t request_id = next_request_id_++;
  std::vector<ipc::Frame> frames;
  frames.push_back({ipc::FrameType::kApiRequest, EncodeApiRequest(request_id, call)});
  if (stopped_ || !Deliver(node_id, std::move(frames), true)) {
    done(ErrorResult(503, "node " + NameOf(node_id) + " is unreachable (no link to its agent)"));
    return;
  }
  PendingCall pending;
  pending.done = std::move(done);
  pending.node_id = node_id;
  pending.timer = std::make_unique<boost::asio::steady_timer>(io_, timeout);
  pending.timer->async_wait([this, request_id, node_id](const boost::system::error_code& error) {
    if (error) return;
    Complete(request_id, ErrorResult(503, "node " + NameOf(node_id) + " did not answer in time"));
  });
  pending_.emplace(request_id, std::move(pending));
}

void Cluster::CallAllPeers(
    const ApiCall& call, std::function<void(std::vector<std::pair<std::string, ApiResult>>)> done) {
  std::vector<std::uint64_t> targets;
  for (const auto& member : membership_.Members()) {
    if (member.node_id == self_.id || member.state == balancer::MemberState::kDead) continue;
    targets.push_back(member.node_id);
  }
  struct Gather {
    std::vector<std::pair<std::string, ApiResult>> answers;
    size_t outstanding = 0;
    std::function<void(std::vector<std::pair<std::string, ApiResult>>)> done;
  };
  auto gather = std::make_shared<Gather>();
  gather->outstanding = targets.size();
  gather->done = std::move(done);
  if (targets.empty()) {
    gather->done({});
    return;
  }
  for (auto node_id : targets) {
    Call(
        node_id, call,
        [gather, name = NameOf(node_id)](ApiResult result) {
          gather->answers.emplace_back(name, std::move(result));
          if (--gather->outstanding == 0) gather->done(std::move(gather->answers));
        },
        std::chrono::seconds(3));
  }
}

std::optional<std::uint64_t> Cluster::AliveNodeByName(const std::string& name) const {
  for (const auto& member : membership_.Members()) {
    if (member.name == name && member.state != balancer::MemberState::kDead) {
      return member.node_id;
    }
  }
  return std::nullopt;
}

std::string Cluster::NameOf(std::uint64_t node_id) const {
  for (const auto& member : membership_.Members()) {
    if (member.node_id == node_id) return member.name;
  }
  return NodeIdHex(node_id);
}

std::vector<NodeView> Cluster::Nodes() const {
  std::vector<NodeView> nodes;
  const auto now = Now();
  for (const auto& member : membership_.Members()) {
    NodeView view;
    view.name = member.name;
    view.id = member.node_id;
    view.address = member.address;
    view.api_address = member.api_address;
    view.state = balancer::ToString(member.state);
    view.self = member.node_id == self_.id;
    view.last_seen_ms = view.self ? 0 : (now - member.last_heard).count();
    if (auto entry = gossip_.Get(member.node_id, now)) {
      view.load = std::move(entry->load);
      view.age_ms = entry->age.count();
    }
    if (auto link = links_.find(member.node_id); link != links_.end()) {
      view.linked =
          link->second.state == Link::State::kUp || link->second.state == Link::State::kClosing;
    }
    nodes.push_back(std::move(view));
  }
  std::sort(nodes.begin(), nodes.end(),
            [](const NodeView& a, const NodeView& b) { return a.name < b.name; });
  return nodes;
}

ClusterTraffic Cluster::Traffic() const {
  ClusterTraffic traffic = traffic_;
  traffic.links_open = budget_.open();
  traffic.uptime_ms = Now().count();
  return traffic;
}

}  // namespace tern::agent
