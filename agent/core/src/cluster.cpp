#include "tern/agent/cluster.hpp"

#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>
#include <tern/ipc/frame_type.hpp>
#include <tern/ipc/peer_transport.hpp>

#include "tern/agent/load_json.hpp"

namespace tern::agent {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
constexpr size_t kGossipWindow = 8;

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
                                              .dead_after = config.dead_after}),
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
  transport_ = std::make_unique<ipc::PeerTransport>(io_, options);
  transport_->on_peer_up = [this](const ipc::PeerIdentity& peer) {
    spdlog::info("peer {} ({}) connected from {}", peer.name, NodeIdHex(peer.node_id),
                 peer.address);
    Apply(membership_.OnPeerUp({.node_id = peer.node_id,
                                .name = peer.name,
                                .address = peer.address,
                                .api_address = peer.api_address},
                               Now()));
    if (link_listener_) link_listener_(peer.node_id, true);
  };
  transport_->on_peer_down = [this](std::uint64_t node_id, const std::string& reason) {
    spdlog::warn("peer {} disconnected: {}", NameOf(node_id), reason);
    FailPendingCalls(node_id, "the link to " + NameOf(node_id) + " went down: " + reason);
    if (link_listener_) link_listener_(node_id, false);
    Apply(membership_.OnPeerDown(node_id, Now()));
  };
  transport_->on_frame = [this](std::uint64_t node_id, ipc::Frame& frame) {
    OnFrame(node_id, static_cast<std::uint16_t>(frame.type), std::move(frame.payload));
  };
  if (auto started = transport_->Start(); !started) return started;
  for (const auto& seed : config_.seeds) {
    if (seed != config_.cluster_advertise) transport_->ConnectTo(seed);
  }
  spdlog::info("cluster: node {} ({}) listening on {}, advertising {}, {} seed(s)", self_.name,
               NodeIdHex(self_.id), config_.cluster_listen, config_.cluster_advertise,
               config_.seeds.size());
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
  SendHeartbeats();
  Apply(membership_.Tick(Now()));
  heartbeat_timer_.expires_after(config_.heartbeat);
  heartbeat_timer_.async_wait([this](const boost::system::error_code& error) {
    if (!error) OnHeartbeatTimer();
  });
}

void Cluster::SendHeartbeats() {
  if (load_provider_) {
    balancer::LoadVector own = load_provider_();
    own.node_id = self_.id;
    own.node_name = self_.name;
    own.address = config_.cluster_advertise;
    own.api_address = config_.api_listen;
    own.seq = ++load_seq_;
    load_table_.Merge(own, Now());
  }
  json window = json::array();
  for (const auto& entry : load_table_.GossipWindow(kGossipWindow, Now())) {
    window.push_back(LoadToJson(entry));
  }
  json members = json::array();
  for (const auto& member : membership_.Members()) {
    if (member.state == balancer::MemberState::kDead) continue;
    members.push_back({{"node_id", NodeIdHex(member.node_id)},
                       {"name", member.name},
                       {"address", member.address},
                       {"api_address", member.api_address}});
  }
  const std::string payload = json{{"load", window}, {"members", members}}.dump();
  for (const auto& peer : transport_->Peers()) {
    transport_->Send(peer.node_id, ipc::FrameType::kHeartbeat, payload);
  }
}

void Cluster::Apply(const std::vector<balancer::MembershipAction>& actions) {
  for (const auto& action : actions) {
    if (const auto* connect = std::get_if<balancer::ConnectAction>(&action)) {
      if (connect->address != config_.cluster_advertise) transport_->ConnectTo(connect->address);
    } else if (const auto* change = std::get_if<balancer::StateChangedAction>(&action)) {
      spdlog::info("node {} is now {} (was {})", change->name, balancer::ToString(change->to),
                   balancer::ToString(change->from));
      if (change->to == balancer::MemberState::kDead) {
        FailPendingCalls(change->node_id, "node " + change->name + " is dead (no heartbeat)");
      }
      if (node_listener_) node_listener_(change->node_id, change->to);
    }
  }
}

bool Cluster::SendIpc(std::uint64_t node_id, std::vector<ipc::Frame> frames) {
  return transport_->Send(node_id, std::move(frames));
}

std::size_t Cluster::IpcBacklog(std::uint64_t node_id) const {
  return transport_->Backlog(node_id);
}

void Cluster::OnFrame(std::uint64_t node_id, std::uint16_t type, std::string payload) {
  switch (static_cast<ipc::FrameType>(type)) {
    case ipc::FrameType::kHeartbeat: {
      json body = json::parse(payload, nullptr, false);
      if (!body.is_object()) {
        spdlog::warn("malformed heartbeat from {}: not a JSON object", NameOf(node_id));
        return;
      }
      Apply(membership_.OnHeartbeat(node_id, Now()));
      std::vector<balancer::MemberInfo> gossip;
      for (const auto& member : body.value("members", json::array())) {
        auto parsed = MemberFromJson(member);
        if (parsed) gossip.push_back(*parsed);
      }
      Apply(membership_.OnGossip(gossip, Now()));
      for (const auto& entry : body.value("load", json::array())) {
        auto parsed = LoadFromJson(entry);
        if (parsed && parsed->node_id != self_.id) load_table_.Merge(*parsed, Now());
      }
      return;
    }
    case ipc::FrameType::kApiRequest:
      OnApiRequest(node_id, payload);
      return;
    case ipc::FrameType::kApiResponse:
      OnApiResponse(payload);
      return;
    case ipc::FrameType::kIpcRemote:
    case ipc::FrameType::kIpcBlast:
    case ipc::FrameType::kIpcBlastAck:
    case ipc::FrameType::kIpcDirect:
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
  call.caller.via = "peer " + NameOf(node_id);
  if (!request_handler_) return;
  request_handler_(std::move(call), [this, node_id, request_id = request_id](ApiResult result) {
    if (transport_) {
      transport_->Send(node_id, ipc::FrameType::kApiResponse,
                       EncodeApiResponse(request_id, result));
    }
  });
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
  // A node that stopped answering heartbeats gets no new calls: they would only wait out
  // their timeout on a link that may be cut without either side noticing.
  for (const auto& member : membership_.Members()) {
    if (member.node_id == node_id && member.state != balancer::MemberState::kAlive) {
      done(ErrorResult(503, "node " + member.name + " is " +
                                std::string(balancer::ToString(member.state)) +
                                " (no recent heartbeat)"));
      return;
    }
  }
  const std::uint64_t request_id = next_request_id_++;
  if (!transport_ ||
      !transport_->Send(node_id, ipc::FrameType::kApiRequest, EncodeApiRequest(request_id, call))) {
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
    if (auto load = load_table_.Get(member.node_id)) view.load = *load;
    nodes.push_back(std::move(view));
  }
  std::sort(nodes.begin(), nodes.end(),
            [](const NodeView& a, const NodeView& b) { return a.name < b.name; });
  return nodes;
}

}  // namespace tern::agent
