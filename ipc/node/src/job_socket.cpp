#include "job_socket.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <tern/fd_control.hpp>

namespace tern::ipc {

struct JobSocket::Attaching {
  explicit Attaching(boost::asio::io_context& io)
      : socket(io), deadline(io), decoder(kMaxAttachFrame) {}
  boost::asio::local::stream_protocol::socket socket;
  boost::asio::steady_timer deadline;
  FrameDecoder decoder;
  int peer_pid = 0;
  bool done = false;
};

JobSocket::JobSocket(boost::asio::io_context& io, Decide decide)
    : io_(io), decide_(std::move(decide)), acceptor_(io) {}

Expected<void> JobSocket::Listen(const std::string& path) {
  if (path.size() > kMaxJobSocketPath) return Fail("job socket path too long: " + path);
  std::error_code ignored;
  std::filesystem::remove(path, ignored);  // a dead agent's
  boost::system::error_code error;
  const boost::asio::local::stream_protocol::endpoint endpoint(path);
  acceptor_.open(endpoint.protocol(), error);
  if (!error) ::fcntl(acceptor_.native_handle(), F_SETFD, FD_CLOEXEC);
  if (!error) acceptor_.bind(endpoint, error);
  if (!error && ::chmod(path.c_str(), 0666) != 0) {
    error = boost::system::error_code(errno, boost::system::system_category());
  }
  if (!error) acceptor_.listen(boost::asio::socket_base::max_listen_connections, error);
  if (error) {
    boost::system::error_code closing;
    acceptor_.close(closing);
    return Fail("cannot listen for jobs at " + path + ": " + error.message());
  }
  path_ = path;
  Accept();
  return {};
}

void JobSocket::Stop() {
  if (stopped_) return;
  stopped_ = true;
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  if (!path_.empty()) {
    std::error_code gone;
    std::filesystem::remove(path_, gone);
  }
}

void JobSocket::Accept() {
  if (stopped_ || !acceptor_.is_open()) return;
  auto attaching = std::make_shared<Attaching>(io_);
  acceptor_.async_accept(attaching->socket, [self = shared_from_this(),
                                             attaching](const boost::system::error_code& error) {
    if (self->stopped_ || error == boost::asio::error::operation_aborted) return;
    if (!error) {
      if (self->attaching_ >= kMaxAttaching) {
        spdlog::warn("IPC: job socket: {} connections attaching already; one closed",
                     kMaxAttaching);
      } else {
        ucred peer{};
        socklen_t size = sizeof peer;
        if (::getsockopt(attaching->socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &peer,
                         &size) == 0 &&
            peer.pid > 0) {
          ++self->attaching_;
          attaching->peer_pid = peer.pid;
          attaching->deadline.expires_after(kAttachWait);
          attaching->deadline.async_wait([self, attaching](const boost::system::error_code& e) {
            if (e || attaching->done) return;
            spdlog::warn("IPC: job socket: pid {} sent no attach request within {} s",
                         attaching->peer_pid,
                         std::chrono::duration_cast<std::chrono::seconds>(kAttachWait).count());
            self->Done(attaching);
          });
          self->ReadMore(attaching);
        }
      }
    }
    self->Accept();
  });
}

void JobSocket::ReadMore(const std::shared_ptr<Attaching>& attaching) {
  const std::span<char> space = attaching->decoder.Prepare();
  attaching->socket.async_read_some(
      boost::asio::buffer(space.data(), space.size()),
      [self = shared_from_this(), attaching](const boost::system::error_code& error,
                                             std::size_t got) {
        if (self->stopped_ || attaching->done) return;
        if (error) return self->Done(attaching);
        if (auto fed = attaching->decoder.Commit(got); !fed) {
          spdlog::warn("IPC: job socket: pid {}: {}", attaching->peer_pid, fed.error().message);
          return self->Done(attaching);
        }
        auto frame = attaching->decoder.Next();
        if (!frame) return self->ReadMore(attaching);
        std::optional<AttachRequest> request;
        if (frame->type == FrameType::kIpcAttach) request = DecodeAttachRequest(frame->payload);
        if (!request) {
          spdlog::warn("IPC: job socket: pid {} sent a malformed attach request",
                       attaching->peer_pid);
          return self->Done(attaching);
        }
        self->Answer(attaching, *request);
      });
}

void JobSocket::Answer(const std::shared_ptr<Attaching>& attaching, const AttachRequest& request) {
  auto decided = decide_(request, attaching->peer_pid);
  UniqueFd channel;
  AttachAnswer answer;
  if (auto* accepted = std::get_if<Accepted>(&decided)) {
    channel = std::move(accepted->channel);
    answer.ok = true;
    answer.restored = accepted->restored;
    answer.kept = accepted->kept;
  } else {
    answer.why = std::get<std::string>(decided);
    spdlog::warn("IPC: job socket: pid {}: {}", attaching->peer_pid, answer.why);
  }
  std::string frame;
  AppendFrame(frame, FrameType::kIpcAttached, EncodeAttachAnswer(answer));
  iovec iov{frame.data(), frame.size()};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  FdControl control(channel.get());
  if (channel.valid()) control.AttachTo(message);
  // A fresh connection's buffer takes this small frame whole; a peer that does not read it
  // loses it (the new channel's end closes with `channel`, and the agent sees end of file).
  const ssize_t put =
      ::sendmsg(attaching->socket.native_handle(), &message, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (put != static_cast<ssize_t>(frame.size())) {
    spdlog::warn("IPC: job socket: pid {}: the answer could not be written: {}",
                 attaching->peer_pid, put < 0 ? std::strerror(errno) : "short write");
  }
  Done(attaching);
}

void JobSocket::Done(const std::shared_ptr<Attaching>& attaching) {
  if (attaching->done) return;
  attaching->done = true;
  --attaching_;
  boost::system::error_code ignored;
  attaching->deadline.cancel();
  attaching->socket.close(ignored);
}

}  // namespace tern::ipc
