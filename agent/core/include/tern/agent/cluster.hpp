// Cluster: this agent's membership in the cluster, its load gossip and its peer links. It drives
// the pure-logic MembershipView, Gossip and LinkBudget (balancer/) with events from the peer
// transport (ipc/) and a heartbeat timer.
//
// Gossip: every heartbeat it samples the local load and sends a bounded window of the freshest
// entries it knows to `gossip_fanout` random live peers (docs/balancer.md), so the cost per
// node does not grow with the cluster. Liveness comes from the ages of those entries and from
// frames on open links; linked peers not picked get an empty keepalive window.
//
// Links: at most `max_links` are kept; others are opened on demand (gossip, Call, SendIpc) and
// closed once idle for `link_idle_ms` through a LinkIdle ask/yes exchange, so that no frame is
// lost and neither side takes the close for a failure. Frames for a node whose link is being
// opened or closed wait here and go out once it is up; if no link comes up within kOpenTimeout
// its calls fail with 503 and the IPC layer is told the node is down (the link listener).
//
// It also carries API calls between agents: Call() sends a user's request to another node's
// agent over the authenticated link and hands back that agent's answer, or 503 when the node is
// unreachable or does not answer in time. Calls arriving from peers go to the request handler.
//
// Thread-safety: not thread-safe; all methods and callbacks run on the io_context thread.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <tern/balancer/gossip.hpp>
#include <tern/balancer/link_budget.hpp>
#include <tern/balancer/membership.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/frame_type.hpp>
#include <tern/ipc/peer_handshake.hpp>
#include <vector>

#include "tern/agent/api_call.hpp"
#include "tern/agent/config.hpp"
#include "tern/agent/host_load.hpp"
#include "tern/agent/node_identity.hpp"

namespace tern::ipc {
class PeerTransport;
}

namespace tern::agent {

// One row of `tern nodes`.
struct NodeView {
  std::string name;
  std::uint64_t id = 0;
  std::string address;
  std::string api_address;
  std::string state;
  bool self = false;
  std::optional<balancer::LoadVector> load;
  std::int64_t last_seen_ms = 0;  // the freshest sign of life: a frame or a sampled entry
  std::int64_t age_ms = 0;        // of `load`
  bool linked = false;            // this agent has a link to it now
};

// What this agent's gossip and links cost (since it started), for GET /v1/nodes.
struct ClusterTraffic {
  std::uint64_t gossip_bytes_sent = 0;  // Gossip frame payloads, keepalives included
  std::uint64_t gossip_frames_sent = 0;
  std::uint64_t gossip_bytes_received = 0;
  std::uint64_t bytes_sent = 0;       // every frame payload to peers
  std::uint64_t ipc_frames_sent = 0;  // IPC frames (SendIpc) to peers
  std::uint64_t ipc_bytes_sent = 0;
  std::uint64_t links_opened = 0;
  std::uint64_t links_closed_idle = 0;
  std::size_t links_open = 0;
  std::size_t links_open_max = 0;
  std::int64_t uptime_ms = 0;
};

class Cluster {
 public:
  using RequestHandler = std::function<void(ApiCall, ApiDone)>;
  // Supplies this node's load vector (host load + jobs) at each heartbeat; seq is set here.
  using LoadProvider = std::function<balancer::LoadVector()>;

  Cluster(boost::asio::io_context& io, const AgentConfig& config, NodeIdentity self);
  ~Cluster();

  void SetRequestHandler(RequestHandler handler) { request_handler_ = std::move(handler); }
  void SetLoadProvider(LoadProvider provider) { load_provider_ = std::move(provider); }
  // Told of every membership change (a node turning suspect or dead, or alive again).
  using NodeStateListener = std::function<void(std::uint64_t node_id, balancer::MemberState)>;
  void SetNodeStateListener(NodeStateListener listener) { node_listener_ = std::move(listener); }
  // IPC frames (FrameType::kIpcRemote) from peers go to `handler`; an error it returns closes
  // that peer's link with the error as the logged reason. Links up and down are reported too.
  using IpcFrameHandler =
      std::function<Expected<void>(std::uint64_t node_id, ipc::FrameType, std::string payload)>;
  using LinkListener = std::function<void(std::uint64_t node_id, bool up)>;
  void SetIpcHandlers(IpcFrameHandler frames, LinkListener links) {
    ipc_frames_ = std::move(frames);
    link_listener_ = std::move(links);
  }
  // Frames for another node's agent, in order, in one write of its link. Opens a link on
  // demand (the frames wait for it); false when the node is unknown or dead. If the link does
  // not come up, the link listener reports the node down, as for a link that broke.
  bool SendIpc(std::uint64_t node_id, std::vector<ipc::Frame> frames);
  // Bytes sent to `node_id` not yet written to its link, or waiting for it.
  std::size_t IpcBacklog(std::uint64_t node_id) const;
  // Answers every call still waiting on `node_id` with 503 and `reason`.
  void FailPendingCalls(std::uint64_t node_id, const std::string& reason);

  Expected<void> Start();
  void Stop();

  // Sends `call` to the agent of `node_id` and reports its answer. Never blocks.
  void Call(std::uint64_t node_id, ApiCall call, ApiDone done,
            std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Sends `call` to every alive peer and reports all answers (node name → result) at once.
  void CallAllPeers(const ApiCall& call,
                    std::function<void(std::vector<std::pair<std::string, ApiResult>>)> done);

  std::optional<std::uint64_t> AliveNodeByName(const std::string& name) const;
  std::vector<NodeView> Nodes() const;
  const NodeIdentity& self() const { return self_; }
  std::string NameOf(std::uint64_t node_id) const;
  ClusterTraffic Traffic() const;
  // How long frames wait for a link to open before the node counts as unreachable.
  static constexpr std::chrono::milliseconds kOpenTimeout{5000};
  // How long a LinkIdle exchange may take before the link is closed anyway.
  static constexpr std::chrono::milliseconds kCloseTimeout{5000};
  // How often a dead member (one in turn) is dialled again, so that one that comes back is
  // found even when it knows no one to dial itself.
  static constexpr std::chrono::milliseconds kDeadRedial{5000};

 private:
  struct PendingCall {
    ApiDone done;
    std::unique_ptr<boost::asio::steady_timer> timer;
    std::uint64_t node_id = 0;
  };

  // This agent's side of the link to one peer.
  struct Link {
    enum class State { kNone, kOpening, kUp, kClosing };
    State state = State::kNone;
    std::chrono::milliseconds since{0};  // of kOpening / kClosing
    bool asked = false;                  // kClosing: we sent "ask" (else we answered "yes")
    std::string dial_address;            // kOpening
    std::vector<std::vector<ipc::Frame>> queued;  // waiting for the link (kOpening, kClosing)
    std::size_t queued_bytes = 0;
    bool ipc_up = false;  // the link listener was told "up" and not "down"
  };

  void OnHeartbeatTimer();
  void SendGossip();
  void ManageLinks();
  void SyncMembershipFromGossip();
  void RedialTheDead(std::chrono::milliseconds now);
  void Apply(const std::vector<balancer::MembershipAction>& actions);
  void OnPeerUp(const ipc::PeerIdentity& peer);
  void OnPeerDown(std::uint64_t node_id, const std::string& reason);
  void OnFrame(std::uint64_t node_id, std::uint16_t type, std::string payload);
  void OnGossipFrame(std::uint64_t node_id, const std::string& payload);
  void OnLinkIdle(std::uint64_t node_id, const std::string& payload);
  void OnApiRequest(std::uint64_t node_id, const std::string& payload);
  void OnApiResponse(const std::string& payload);
  void Complete(std::uint64_t request_id, ApiResult result);
  // Sends on the link, or queues and opens one. `use`: counts as use of the link (keepalives
  // do not). `droppable` (gossip): not worth reopening a closing link for. False when there
  // is no way to the node.
  bool Deliver(std::uint64_t node_id, std::vector<ipc::Frame> frames, bool use,
               bool droppable = false);
  bool Open(std::uint64_t node_id, Link& link);
  void Flush(std::uint64_t node_id, Link& link);
  // The link could not be opened, or the node died: waiting frames and calls fail.
  void GiveUp(std::uint64_t node_id, Link& link, const std::string& reason);
  bool HasPendingCalls(std::uint64_t node_id) const;
  void SendLinkIdle(std::uint64_t node_id, std::string_view step);
  void RateLimitedWarn(const std::string& message);
  std::chrono::milliseconds Now() const;

  boost::asio::io_context& io_;
  const AgentConfig& config_;
  NodeIdentity self_;
  std::unique_ptr<ipc::PeerTransport> transport_;
  balancer::MembershipView membership_;
  balancer::Gossip gossip_;
  balancer::LinkBudget budget_;
  std::mt19937_64 rng_;
  std::map<std::uint64_t, Link> links_;
  boost::asio::steady_timer heartbeat_timer_;
  RequestHandler request_handler_;
  LoadProvider load_provider_;
  NodeStateListener node_listener_;
  IpcFrameHandler ipc_frames_;
  LinkListener link_listener_;
  std::uint64_t load_seq_ = 0;
  std::chrono::milliseconds last_dead_redial_{0};
  std::uint64_t last_dead_dialled_ = 0;  // node id
  std::uint64_t next_request_id_ = 1;
  std::map<std::uint64_t, PendingCall> pending_;
  ClusterTraffic traffic_;
  std::chrono::milliseconds warn_window_start_{0};
  int warns_in_window_ = 0;
  int warns_suppressed_ = 0;
  std::chrono::steady_clock::time_point epoch_ = std::chrono::steady_clock::now();
  bool stopped_ = false;
};

}  // namespace tern::agent
