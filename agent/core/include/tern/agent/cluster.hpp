// Cluster: this agent's membership in the cluster. It drives the pure-logic MembershipView and
// LoadTable (balancer/) with events from the peer transport (ipc/) and a heartbeat timer:
// every heartbeat it samples the local load, merges it, and sends each peer a Heartbeat frame
// carrying a window of the freshest load entries and the member list it knows (MOSIX-style
// dissemination), so every agent soon knows every node and a recent view of its load.
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
#include <string>
#include <tern/balancer/load_table.hpp>
#include <tern/balancer/membership.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/frame_type.hpp>
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
  std::int64_t last_seen_ms = 0;
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
  // Frames for another node's agent, in order, in one write of its link; false without one.
  bool SendIpc(std::uint64_t node_id, std::vector<ipc::Frame> frames);
  // Bytes sent to `node_id` not yet written to its link (0 without a link).
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

 private:
  struct PendingCall {
    ApiDone done;
    std::unique_ptr<boost::asio::steady_timer> timer;
    std::uint64_t node_id = 0;
  };

  void OnHeartbeatTimer();
  void SendHeartbeats();
  void Apply(const std::vector<balancer::MembershipAction>& actions);
  void OnFrame(std::uint64_t node_id, std::uint16_t type, std::string payload);
  void OnApiRequest(std::uint64_t node_id, const std::string& payload);
  void OnApiResponse(const std::string& payload);
  void Complete(std::uint64_t request_id, ApiResult result);
  std::chrono::milliseconds Now() const;

  boost::asio::io_context& io_;
  const AgentConfig& config_;
  NodeIdentity self_;
  std::unique_ptr<ipc::PeerTransport> transport_;
  balancer::MembershipView membership_;
  balancer::LoadTable load_table_;
  boost::asio::steady_timer heartbeat_timer_;
  RequestHandler request_handler_;
  LoadProvider load_provider_;
  NodeStateListener node_listener_;
  IpcFrameHandler ipc_frames_;
  LinkListener link_listener_;
  std::uint64_t load_seq_ = 0;
  std::uint64_t next_request_id_ = 1;
  std::map<std::uint64_t, PendingCall> pending_;
  std::chrono::steady_clock::time_point epoch_ = std::chrono::steady_clock::now();
  bool stopped_ = false;
};

}  // namespace tern::agent
