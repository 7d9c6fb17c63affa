#include "direct_calls.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <tern/process_tree.hpp>
#include <variant>

namespace tern::ipc {

DirectCalls::DirectCalls(boost::asio::io_context& io, std::uint64_t self,
                         const ipc::PortRouter& router, IpcService::NodeSender send,
                         ReplyToJob reply)
    : io_(io), self_(self), router_(router), send_(std::move(send)), reply_(std::move(reply)) {
  StartDirectListener();
}

void DirectCalls::Start() { AcceptDirect(); }

void DirectCalls::SetHooks(IpcService::NodeAddress node_address, IpcService::JobInitPid init_pid) {
  node_address_ = std::move(node_address);
  init_pid_ = std::move(init_pid);
}

void DirectCalls::OnJobRequest(const std::string& job, std::uint32_t request, ipc::JobOp op,
                               std::string_view body) {
  OnDirectRequest(job, request, op, body);
  RunDirect();
}

void DirectCalls::Leaving(const std::string& job) {
  broker_.Leaving(job);
  RunDirect();
}

void DirectCalls::JobGone(const std::string& job) {
  broker_.JobGone(job);
  RunDirect();
  // Whatever the job passed its ends to loses them with it.
  if (auto copies = copies_.find(job); copies != copies_.end()) {
    for (auto& [inode, copy] : copies->second.by_inode) ::shutdown(copy.get(), SHUT_RDWR);
    copies_.erase(copies);
  }
}

void DirectCalls::Suspend(const std::string& job) {
  broker_.Suspend(job);
  RunDirect();
}

void DirectCalls::Resume(const std::string& job) { broker_.Resume(job); }

std::vector<std::string> DirectCalls::Sockets(const std::string& job) const {
  std::vector<std::string> sockets;
  for (const auto& record : broker_.Records(job)) {
    sockets.push_back("socket:[" + std::to_string(record.inode) + "]");
  }
  return sockets;
}

void DirectCalls::Stop() {
  if (stopped_) return;
  stopped_ = true;
  direct_timer_.cancel();
  boost::system::error_code not_open;
  acceptor_.close(not_open);
  direct_connections_.clear();
}

// The listener for granted connections, on every address (other nodes connect to it).
void DirectCalls::StartDirectListener() {
  boost::system::error_code error;
  const boost::asio::ip::tcp::endpoint any(boost::asio::ip::tcp::v4(), 0);
  acceptor_.open(any.protocol(), error);
  if (!error) ::fcntl(acceptor_.native_handle(), F_SETFD, FD_CLOEXEC);
  if (!error) acceptor_.bind(any, error);
  if (!error) acceptor_.listen(boost::asio::socket_base::max_listen_connections, error);
  if (error) {
    spdlog::warn("IPC: no listener for direct calls ({}): jobs use the agent path",
                 error.message());
    acceptor_.close(error);
    return;
  }
  direct_port_ = acceptor_.local_endpoint().port();
  spdlog::info("IPC: direct calls listener on TCP port {}", direct_port_);
}

// Accepting starts with the first connection to serve (the io_context needs our shared_ptr).
void DirectCalls::AcceptDirect() {
  if (!acceptor_.is_open() || stopped_) return;
  acceptor_.async_accept([self = shared_from_this()](const boost::system::error_code& error,
                                                     boost::asio::ip::tcp::socket socket) {
    if (self->stopped_ || error == boost::asio::error::operation_aborted) return;
    if (!error) self->ReadToken(std::move(socket));
    self->AcceptDirect();
  });
}

// A granted connection: exactly its 16-byte token, within kTokenWait, then it is the broker's.
void DirectCalls::ReadToken(boost::asio::ip::tcp::socket socket) {
  ::fcntl(socket.native_handle(), F_SETFD, FD_CLOEXEC);
  auto incoming = std::make_shared<Incoming>(io_, std::move(socket));
  incoming->timer.expires_after(kTokenWait);
  incoming->timer.async_wait([incoming](const boost::system::error_code& error) {
    if (error) return;
    boost::system::error_code ignored;
    incoming->socket.close(ignored);  // the read fails, and the connection is dropped
  });
  boost::asio::async_read(
      incoming->socket, boost::asio::buffer(incoming->token),
      [self = shared_from_this(), incoming](const boost::system::error_code& error, std::size_t) {
        incoming->timer.cancel();
        if (error || self->stopped_) return;
        auto handed = self->HandOver(incoming->socket);
        if (!handed) {
          spdlog::debug("IPC: direct connection dropped: {}", handed.error().message);
          return;
        }
        const auto [connection, inode] = *handed;
        self->broker_.Arrived(connection, inode, incoming->token, ipc::DirectBroker::Clock::now());
        self->RunDirect();
      });
}

// Makes `socket` a direct connection end: the options both ends need, then a blocking
// descriptor of our own (the job gets it; Asio's is closed). Returns its id and inode.
Expected<std::pair<std::uint64_t, std::uint64_t>> DirectCalls::HandOver(
    boost::asio::ip::tcp::socket& socket) {
  const int fd = socket.native_handle();
  const int on = 1, idle = 5, interval = 1, probes = 3;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) != 0 ||
      ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) != 0 ||
      ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) != 0 ||
      ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval) != 0 ||
      ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes) != 0) {
    return Fail(std::string("setsockopt: ") + std::strerror(errno));
  }
  // release(), not a dup and close: Asio leaves a closed descriptor in its epoll set, trusting
  // the close to remove it, and a dup keeps the socket open, so the socket's events (the job
  // shares it) would go on waking whatever descriptor Asio registers next under the same
  // state, such as a job's pidfd, whose watch then saw the job end.
  boost::system::error_code released;
  UniqueFd own(socket.release(released));
  if (released || !own.valid())
    return Fail("cannot take the socket from Asio: " + released.message());
  // O_NONBLOCK belongs to the open socket, which the job shares: Asio's mode must not leak.
  const int flags = ::fcntl(own.get(), F_GETFL);
  if (flags < 0 || ::fcntl(own.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
    return Fail(std::string("fcntl: ") + std::strerror(errno));
  }
  struct stat status {};
  if (::fstat(own.get(), &status) != 0) return Fail(std::string("fstat: ") + std::strerror(errno));
  const std::uint64_t id = next_connection_++;
  direct_connections_[id] = std::move(own);
  return std::make_pair(id, static_cast<std::uint64_t>(status.st_ino));
}

// Serves a job's direct_open / direct_accept (the router knows neither).
void DirectCalls::OnDirectRequest(const std::string& job, std::uint32_t request, ipc::JobOp op,
                                  std::string_view body) {
  const auto now = ipc::DirectBroker::Clock::now();
  const auto answer = [&](ipc::JobStatus status, const std::string& why) {
    Reply(ipc::DirectBroker::Reply{job, request, status, why, 0});
  };
  ipc::WireReader in(body);
  const auto name = in.U32();
  if (op == ipc::JobOp::kDirectAccept) {
    const auto timeout = in.U32();
    if (!timeout || !in.AtEnd()) return answer(ipc::JobStatus::kBadRequest, "malformed body");
    // A link end: its holder takes the offers sent on the peer end on connections keyed by it
    // (docs/ipc.md "Link operations direct").
    auto port = router_.ReceiveRightPort(job, *name);
    if (!port) port = router_.LinkEndOf(job, *name);
    if (!port) return answer(ipc::JobStatus::kInvalidName, "not a receive right or a link end");
    if (!acceptor_.is_open()) {
      return answer(ipc::JobStatus::kUnavailable, "this agent has no direct call listener");
    }
    broker_.Accept(job, request, *name, *port, *timeout, now);
    return;
  }
  if (!name || !in.AtEnd()) return answer(ipc::JobStatus::kBadRequest, "malformed body");
  // A link end: a connection to the holder of its peer, which accepts on that end.
  auto port = router_.SendRightTarget(job, *name);
  if (!port) port = router_.LinkPeerOf(job, *name);
  if (!port) return answer(ipc::JobStatus::kInvalidName, "not a send right or a link end");
  if (broker_.Suspended(job)) return answer(ipc::JobStatus::kUnavailable, "the job is moving");
  const std::uint64_t ask = broker_.StartAsk(job, request, *name, *port, now);
  OnAsk(self_, ipc::DirectAsk{ask, self_, *port});
}

// An ask for a connection to `ask.port` (a port, or a link end), from this node's job or another
// agent (`from`): granted if the receive right (the end) is here and accepts, passed on to where
// the home says it is, or refused.
void DirectCalls::OnAsk(std::uint64_t from, const ipc::DirectAsk& ask) {
  const auto refuse = [&](const std::string& why, bool dead = false) {
    spdlog::debug("IPC: direct connection to {:x}/{} refused here: {}", ask.port.home,
                  ask.port.serial, why);
    if (ask.origin == self_) return broker_.AskRefused(ask.ask, why, dead);
    SendDirect(ask.origin, ipc::DirectRefuse{ask.ask, why});
  };
  if (auto acceptor = broker_.Acceptor(ask.port);
      acceptor && (router_.ReceiveRightPort(acceptor->first, acceptor->second) == ask.port ||
                   router_.LinkEndOf(acceptor->first, acceptor->second) == ask.port)) {
    auto token = broker_.Grant(ask.port, ipc::DirectBroker::Clock::now());
    if (!token) return refuse(token.error().message);
    if (ask.origin == self_) return Pair(ask.ask, *token);
    SendDirect(ask.origin, ipc::DirectGrant{ask.ask, direct_port_, *token});
    return;
  }
  if (ask.port.home == self_) {
    if (const auto end = router_.LinkHolderOf(ask.port)) return PassToLinkEnd(from, ask, *end);
    const auto receiver = router_.ReceiverOf(ask.port);
    if (!receiver) return refuse("the port is dead", true);
    if (receiver->node == self_) return refuse("the port's receiver never asked for direct calls");
    if (receiver->node == 0) return refuse("the port's receive right is moving");
    if (receiver->node == from) return refuse("the port's receive right is moving");
    if (!SendDirect(receiver->node, ask)) return refuse("the receiver's node cannot be reached");
    return;
  }
  if (from == self_) {
    if (!SendDirect(ask.port.home, ask)) return refuse("the port's home node cannot be reached");
    return;
  }
  refuse("the port's receive right is not on this node");
}

// An ask for a link end homed here goes to the node of the job that holds the end. The asker's
// node named the end as its own end's pair partner (PortRouter::LinkPeerOf); that holds only
// when the two are this link's ends, which only this node can tell.
void DirectCalls::PassToLinkEnd(std::uint64_t from, const ipc::DirectAsk& ask,
                                const ipc::PortRouter::LinkHolderView& end) {
  const auto refuse = [&](const std::string& why) {
    if (ask.origin == self_) return broker_.AskRefused(ask.ask, why);
    SendDirect(ask.origin, ipc::DirectRefuse{ask.ask, why});
  };
  if (end.peer.serial != (ask.port.serial ^ 1)) {
    return refuse("the link was made before direct connections on links");
  }
  if (end.node == 0) return refuse("the link end is in a message");
  // The holder's own node found no accept for it: it never asked (or it is moving).
  if (end.node == self_ || end.node == from) {
    return refuse("the link end's holder never asked for direct connections");
  }
  if (!SendDirect(end.node, ask)) return refuse("the link end holder's node cannot be reached");
}

bool DirectCalls::SendDirect(std::uint64_t node, const ipc::DirectFrame& frame) {
  std::vector<ipc::Frame> frames;
  frames.push_back({ipc::FrameType::kIpcDirect, ipc::EncodeDirectFrame(frame)});
  return send_(node, std::move(frames));
}

Expected<void> DirectCalls::OnDirectFrame(std::uint64_t from, std::string_view payload) {
  auto frame = ipc::ParseDirectFrame(payload);
  if (!frame) return Unexpected<Error>{frame.error()};
  if (const auto* ask = std::get_if<ipc::DirectAsk>(&*frame)) {
    OnAsk(from, *ask);
  } else if (const auto* grant = std::get_if<ipc::DirectGrant>(&*frame)) {
    if (broker_.AskPending(grant->ask)) {
      const std::string host = node_address_ ? node_address_(from) : "";
      if (host.empty()) {
        broker_.AskRefused(grant->ask, "the receiver's node has no known address");
      } else {
        Connect(*grant, host);
      }
    }
  } else {
    const auto& refuse = std::get<ipc::DirectRefuse>(*frame);
    broker_.AskRefused(refuse.ask, refuse.why);
  }
  RunDirect();
  return {};
}

// The client's end of a granted connection: connect, present the token, hand it over.
void DirectCalls::Connect(const ipc::DirectGrant& grant, const std::string& host) {
  boost::system::error_code error;
  const auto address = boost::asio::ip::make_address(host, error);
  if (error) return broker_.AskRefused(grant.ask, "bad node address " + host);
  auto outgoing = std::make_shared<Outgoing>(io_);
  outgoing->grant = grant;
  const boost::asio::ip::tcp::endpoint to(address, grant.tcp_port);
  outgoing->socket.open(to.protocol(), error);
  if (error) return broker_.AskRefused(grant.ask, "socket: " + error.message());
  ::fcntl(outgoing->socket.native_handle(), F_SETFD, FD_CLOEXEC);
  // The ask is answered by its deadline anyway; this frees the socket of a stuck connect.
  outgoing->timer.expires_after(ipc::DirectBroker::kAskDeadline);
  outgoing->timer.async_wait([outgoing](const boost::system::error_code& fired) {
    if (fired) return;
    boost::system::error_code ignored;
    outgoing->socket.close(ignored);
  });
  outgoing->socket.async_connect(
      to, [self = shared_from_this(), outgoing, host](const boost::system::error_code& connected) {
        if (self->stopped_) return;
        if (connected) {
          outgoing->timer.cancel();
          self->broker_.AskRefused(outgoing->grant.ask,
                                   "cannot connect to " + host + ": " + connected.message());
          return self->RunDirect();
        }
        boost::asio::async_write(
            outgoing->socket, boost::asio::buffer(outgoing->grant.token),
            [self, outgoing](const boost::system::error_code& written, std::size_t) {
              outgoing->timer.cancel();
              if (self->stopped_) return;
              if (written) {
                self->broker_.AskRefused(outgoing->grant.ask,
                                         "direct connection set-up failed: " + written.message());
                return self->RunDirect();
              }
              auto handed = self->HandOver(outgoing->socket);
              if (!handed) {
                self->broker_.AskRefused(outgoing->grant.ask, "direct connection set-up failed: " +
                                                                  handed.error().message);
              } else {
                self->broker_.AskConnected(outgoing->grant.ask, handed->first, handed->second);
              }
              self->RunDirect();
            });
      });
}

// Both jobs on this node: the two ends of a Unix socket pair, made here, stand for the
// listener's connection and the client's. No TCP stack between them (a Unix socket moves a
// frame with one copy and no protocol work), nothing to listen for or to present a token to;
// revocation is the same shutdown, which a Unix stream socket passes to its peer. The ends go
// to the broker as a granted connection would: the accepting job's first, then the asker's.
void DirectCalls::Pair(std::uint64_t ask, const ipc::DirectToken& token) {
  int ends[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) != 0) {
    return broker_.AskRefused(ask, std::string("socketpair: ") + std::strerror(errno));
  }
  UniqueFd server(ends[0]), client(ends[1]);
  // A larger send buffer than the default 208 KiB, so that a 1 MiB frame can leave in one
  // write instead of waking the reader for each fifth of it; the agent (root) may force it
  // past net.core.wmem_max. Not measured apart from the pair itself (bench/README.md).
  for (const int fd : {server.get(), client.get()}) {
    (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &kPairBuffer, sizeof kPairBuffer);
  }
  struct stat server_info {};
  struct stat client_info {};
  if (::fstat(server.get(), &server_info) != 0 || ::fstat(client.get(), &client_info) != 0) {
    return broker_.AskRefused(ask, std::string("fstat: ") + std::strerror(errno));
  }
  const std::uint64_t server_id = next_connection_++;
  const std::uint64_t client_id = next_connection_++;
  direct_connections_[server_id] = std::move(server);
  direct_connections_[client_id] = std::move(client);
  broker_.Arrived(server_id, server_info.st_ino, token, ipc::DirectBroker::Clock::now());
  broker_.AskConnected(ask, client_id, client_info.st_ino);
}

// After a job's requests ran: its connections whose right is gone are revoked, and the ports
// whose receive right left it stop accepting.
void DirectCalls::CheckDirectRights(const std::string& job) {
  broker_.CheckRights(job, [&](ipc::DirectBroker::Role role, std::uint32_t name,
                               ipc::ObjectId port) {
    // A link end's connection rests on the end: the sender's on its end (whose peer is the
    // key), the receiver's on the end it accepts on.
    if (role == ipc::DirectBroker::Role::kClient) {
      return router_.SendRightTarget(job, name) == port || router_.LinkPeerOf(job, name) == port;
    }
    return router_.ReceiveRightPort(job, name) == port || router_.LinkEndOf(job, name) == port;
  });
  RunDirect();
}

// Carries out what the broker asked for.
void DirectCalls::RunDirect() {
  auto actions = broker_.TakeActions();
  for (std::uint64_t connection : actions.closes) direct_connections_.erase(connection);
  for (const auto& revoke : actions.revokes) Revoke(revoke.job, revoke.inode);
  for (auto& reply : actions.replies) Reply(std::move(reply));
  ArmDirectTimer();
}

void DirectCalls::Reply(ipc::DirectBroker::Reply reply) {
  UniqueFd fd;
  if (reply.connection != 0) {
    auto it = direct_connections_.find(reply.connection);
    if (it != direct_connections_.end()) {
      fd = std::move(it->second);
      direct_connections_.erase(it);
    }
  }
  if (reply.status == ipc::JobStatus::kOk && !fd.valid()) {
    reply.status = ipc::JobStatus::kUnavailable;
    reply.why = "the direct connection was lost";
  }
  // An end this agent could not keep a copy of could not be revoked: it is not handed over.
  if (fd.valid() && !KeepCopy(reply.job, fd.get())) {
    fd.Reset();
    reply.status = ipc::JobStatus::kUnavailable;
    reply.why = "no copy of the direct connection could be kept";
  }
  // Without a channel for the job, `reply_` drops it, and the connection closes with `fd`.
  reply_(reply.job,
         ipc::EncodeJobReply(reply.request, reply.status,
                             reply.status == ipc::JobStatus::kOk ? "" : reply.why),
         std::move(fd));
}

void DirectCalls::ArmDirectTimer() {
  const auto next = broker_.NextDeadline();
  if (stopped_ || !next || (direct_timer_at_ && *direct_timer_at_ <= *next)) return;
  direct_timer_at_ = *next;
  direct_timer_.expires_at(*next);
  direct_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& error) {
    if (error == boost::asio::error::operation_aborted || self->stopped_) return;
    self->direct_timer_at_.reset();
    self->broker_.Tick(ipc::DirectBroker::Clock::now());
    self->RunDirect();
  });
}

bool DirectCalls::KeepCopy(const std::string& job, int fd) {
  struct stat info {};
  UniqueFd copy(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!copy.valid() || ::fstat(fd, &info) != 0) return false;
  Copies& copies = copies_[job];
  copies.by_inode[info.st_ino] = std::move(copy);
  if (copies.by_inode.size() >= copies.prune_at) Prune(job, copies);
  return true;
}

// The copies whose connection the job no longer holds (a thread that ended closed its end) are
// shut down and dropped: the server would otherwise keep an idle connection for each.
void DirectCalls::Prune(const std::string& job, Copies& copies) {
  std::set<std::uint64_t> held;
  const int init_pid = init_pid_ ? init_pid_(job) : 0;
  if (init_pid > 0) {
    for (const pid_t pid : NamespacePids(init_pid)) {
      std::error_code error;
      for (const auto& entry :
           std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", error)) {
        std::error_code unreadable;
        const std::string target = std::filesystem::read_symlink(entry.path(), unreadable).string();
        if (target.rfind("socket:[", 0) == 0)
          held.insert(std::strtoull(target.c_str() + 8, nullptr, 10));
      }
    }
  }
  std::erase_if(copies.by_inode, [&](auto& entry) {
    if (held.contains(entry.first)) return false;
    ::shutdown(entry.second.get(), SHUT_RDWR);
    return true;
  });
  copies.prune_at = std::max(kPruneAt, 2 * copies.by_inode.size());
}

// Shuts a job's direct connection end down through this agent's copy: both jobs, and any
// process the job passed its end to, then read end-of-file.
void DirectCalls::Revoke(const std::string& job, std::uint64_t inode) {
  auto copies = copies_.find(job);
  if (copies == copies_.end()) return;
  auto copy = copies->second.by_inode.find(inode);
  if (copy == copies->second.by_inode.end()) return;  // pruned: the job's end was gone already
  ::shutdown(copy->second.get(), SHUT_RDWR);
  copies->second.by_inode.erase(copy);
  spdlog::debug("job {}: direct connection socket:[{}] revoked", job, inode);
}

}  // namespace tern::ipc
