// DirectCalls: the I/O of direct call connections (docs/ipc.md "Direct calls") for one agent,
// private to IpcService. ipc::DirectBroker makes the decisions; this class does what they need:
// it listens on an ephemeral TCP port for the connections it grants to other nodes' jobs (each
// presents its 16-byte token within kTokenWait), connects the clients' ends to the granting
// node, gives both ends TCP_NODELAY and keepalive, hands two jobs of its own node the ends of a
// Unix socket pair instead, keeps each end until its answer takes it to
// the job, answers the agents' asks (IpcDirect frames), arms the broker's deadlines, and revokes
// an end whose right is gone by shutting it down through the copy it keeps of every end.
//
// What it needs from IpcService, given at construction and nothing more:
//  - `router`: read-only, for the rights a job's names are (SendRightTarget, ReceiveRightPort;
//    LinkEndOf, LinkPeerOf for link ends) and where a port's receive right or a link end is
//    (ReceiverOf, LinkHolderOf);
//  - `send`: a frame to another node's agent;
//  - `reply`: an answer to a job's request, queued on the job's channel and flushed, with the
//    connection's fd sent alongside (SCM_RIGHTS) when it carries one; dropped (the fd closed)
//    when the job has no channel;
//  - SetHooks: a node's address (for the client's connect) and a job's init pid (revocation).
//
// Contract: Start once after construction (accepting needs the shared_ptr). Each event method
// carries out what the broker then asks for before it returns. Stop before what the callbacks
// reach goes away: after Stop no pending handler calls them, the listener is closed and the
// ends not yet handed to a job are closed.
//
// Thread-safety: none; everything runs on the agent's io_context thread.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <tern/ipc/direct_broker.hpp>
#include <tern/ipc/direct_wire.hpp>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/node/ipc_service.hpp>
#include <tern/ipc/port_router.hpp>
#include <tern/unique_fd.hpp>
#include <utility>
#include <vector>

namespace tern::ipc {

class DirectCalls : public std::enable_shared_from_this<DirectCalls> {
 public:
  // `reply` is an encoded job reply (ipc::EncodeJobReply), without its frame header.
  using ReplyToJob =
      std::function<void(const std::string& job, std::string_view reply, UniqueFd fd)>;

  DirectCalls(boost::asio::io_context& io, std::uint64_t self, const ipc::PortRouter& router,
              IpcService::NodeSender send, ReplyToJob reply);
  DirectCalls(const DirectCalls&) = delete;
  DirectCalls& operator=(const DirectCalls&) = delete;

  void Start();
  void SetHooks(IpcService::NodeAddress node_address, IpcService::JobInitPid init_pid);

  // A job's direct_open / direct_accept (the router knows neither).
  void OnJobRequest(const std::string& job, std::uint32_t request, ipc::JobOp op,
                    std::string_view body);
  // An IpcDirect frame from another node's agent.
  Expected<void> OnDirectFrame(std::uint64_t from, std::string_view payload);
  // After a job's requests ran: its connections whose right is gone are revoked, and the ports
  // whose receive right left it stop accepting.
  void CheckDirectRights(const std::string& job);
  // The job's channel is about to be handed off: its waiting accepts are answered now.
  void Leaving(const std::string& job);
  // The job's channel closed.
  void JobGone(const std::string& job);
  // Moving: see IpcService::SuspendDirect / ResumeDirect.
  void Suspend(const std::string& job);
  void Resume(const std::string& job);
  // "socket:[INODE]" of each live direct connection end handed to the job.
  std::vector<std::string> Sockets(const std::string& job) const;

  void Stop();

 private:
  // A granted connection: exactly its 16-byte token, within kTokenWait, then it is the broker's.
  struct Incoming {
    Incoming(boost::asio::io_context& io, boost::asio::ip::tcp::socket s)
        : socket(std::move(s)), timer(io) {}
    boost::asio::ip::tcp::socket socket;
    boost::asio::steady_timer timer;
    ipc::DirectToken token{};
  };
  // The client's end of a granted connection: connect, present the token, hand it over.
  struct Outgoing {
    explicit Outgoing(boost::asio::io_context& io) : socket(io), timer(io) {}
    boost::asio::ip::tcp::socket socket;
    boost::asio::steady_timer timer;
    ipc::DirectGrant grant;
  };

  void StartDirectListener();
  void AcceptDirect();
  void ReadToken(boost::asio::ip::tcp::socket socket);
  Expected<std::pair<std::uint64_t, std::uint64_t>> HandOver(boost::asio::ip::tcp::socket& socket);
  void OnDirectRequest(const std::string& job, std::uint32_t request, ipc::JobOp op,
                       std::string_view body);
  void OnAsk(std::uint64_t from, const ipc::DirectAsk& ask);
  void PassToLinkEnd(std::uint64_t from, const ipc::DirectAsk& ask,
                     const ipc::PortRouter::LinkHolderView& end);
  bool SendDirect(std::uint64_t node, const ipc::DirectFrame& frame);
  void Connect(const ipc::DirectGrant& grant, const std::string& host);
  void Pair(std::uint64_t ask, const ipc::DirectToken& token);
  void RunDirect();
  void Reply(ipc::DirectBroker::Reply reply);
  void ArmDirectTimer();
  void Revoke(const std::string& job, std::uint64_t inode);

  static constexpr auto kTokenWait = std::chrono::seconds(2);
  static constexpr int kPairBuffer = 2 << 20;  // each end's send buffer, bytes

  boost::asio::io_context& io_;
  std::uint64_t self_;
  const ipc::PortRouter& router_;
  IpcService::NodeSender send_;
  ReplyToJob reply_;
  IpcService::NodeAddress node_address_;
  IpcService::JobInitPid init_pid_;
  bool stopped_ = false;

  ipc::DirectBroker broker_;
  boost::asio::ip::tcp::acceptor acceptor_{io_};
  std::uint16_t direct_port_ = 0;
  // Direct connection ends made and not yet handed to a job (queued, or on their way).
  std::map<std::uint64_t, UniqueFd> direct_connections_;
  // This agent's copy of every end it handed to a job (by job, then socket inode): revocation
  // shuts the connection down through it wherever the job has passed its own end, and so does
  // the job's end. Copies whose job end is gone are pruned once a job has kPruneAt of them.
  struct Copies {
    std::map<std::uint64_t, UniqueFd> by_inode;
    std::size_t prune_at = kPruneAt;
  };
  static constexpr std::size_t kPruneAt = 16;
  std::map<std::string, Copies> copies_;
  bool KeepCopy(const std::string& job, int fd);
  void Prune(const std::string& job, Copies& copies);
  std::uint64_t next_connection_ = 1;
  boost::asio::steady_timer direct_timer_{io_};
  std::optional<ipc::DirectBroker::Clock::time_point> direct_timer_at_;
};

}  // namespace tern::ipc
