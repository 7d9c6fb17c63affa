#include "page_relay_process.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <tern/errno_text.hpp>
#include <thread>
#include <utility>
#include <vector>

namespace tern::agent {
namespace {

// The relay's fds: CRIU's loopback end, the listener (serve), the status pipe (dial).
constexpr int kCriuFd = 3;
constexpr int kListenFd = 4;
constexpr int kStatusFd = 5;

Expected<UniqueFd> Listen(const std::string& host, std::uint16_t port) {
  sockaddr_storage address{};
  socklen_t length = 0;
  int family = AF_INET;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&address);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&address);
  if (::inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    length = sizeof *v4;
  } else if (::inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    family = AF_INET6;
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    length = sizeof *v6;
  } else {
    return Fail("cannot listen for the lazy-page relay on '" + host + "': not an address");
  }
  UniqueFd listener(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener.valid()) return Fail(Errno("cannot make a socket"));
  const int on = 1;
  ::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&address), length) != 0 ||
      ::listen(listener.get(), 4) != 0) {
    return Fail(
        Errno("cannot listen for the lazy-page relay on " + host + ":" + std::to_string(port)));
  }
  return listener;
}

std::uint16_t LocalPort(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof address;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return 0;
  if (address.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<sockaddr_in6*>(&address)->sin6_port);
  }
  return ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port);
}

std::vector<std::string> Command(const PageRelayProcess::Options& options, const char* role) {
  return {options.program,
          "page-relay",
          role,
          "--criu-fd",
          std::to_string(kCriuFd),
          "--peer",
          options.peer_node,
          "--ca",
          options.tls.ca,
          "--cert",
          options.tls.cert,
          "--key",
          options.tls.key,
          "--migration",
          options.migration,
          "--idle-timeout-s",
          std::to_string(options.idle_timeout.count())};
}

}  // namespace

Expected<std::unique_ptr<PageRelayProcess>> PageRelayProcess::Serve(const Options& options,
                                                                    UniqueFd criu_side,
                                                                    const std::string& host,
                                                                    std::uint16_t port) {
  auto listener = Listen(host, port);
  if (!listener) return Unexpected<Error>{listener.error()};
  auto argv = Command(options, "serve");
  argv.insert(argv.end(), {"--listen-fd", std::to_string(kListenFd), "--accept-patience-ms",
                           std::to_string(options.accept_patience.count())});
  auto process = BackgroundProcess::Start(
      argv, options.log_path, {{kCriuFd, criu_side.get()}, {kListenFd, listener->get()}});
  if (!process) return Unexpected<Error>{process.error()};
  auto relay = std::make_unique<PageRelayProcess>(Key{});
  relay->process_ = std::make_shared<BackgroundProcess>(std::move(*process));
  relay->port_ = LocalPort(listener->get());
  relay->peer_node_ = options.peer_node;
  relay->log_path_ = options.log_path;
  return relay;
}

Expected<std::unique_ptr<PageRelayProcess>> PageRelayProcess::Dial(const Options& options,
                                                                   UniqueFd criu_side,
                                                                   const std::string& host,
                                                                   std::uint16_t port) {
  if (host.empty() || port == 0) {
    return Fail("the source named no address for its lazy-page relay ('" + host + ":" +
                std::to_string(port) + "')");
  }
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return Fail(Errno("cannot make a pipe"));
  UniqueFd read_end(pipe_fds[0]);
  UniqueFd write_end(pipe_fds[1]);
  auto argv = Command(options, "dial");
  argv.insert(argv.end(), {"--connect", host + ":" + std::to_string(port), "--status-fd",
                           std::to_string(kStatusFd)});
  auto process = BackgroundProcess::Start(
      argv, options.log_path, {{kCriuFd, criu_side.get()}, {kStatusFd, write_end.get()}});
  if (!process) return Unexpected<Error>{process.error()};
  auto relay = std::make_unique<PageRelayProcess>(Key{});
  relay->process_ = std::make_shared<BackgroundProcess>(std::move(*process));
  relay->status_ = std::move(read_end);
  relay->port_ = port;
  relay->peer_node_ = options.peer_node;
  relay->log_path_ = options.log_path;
  return relay;
}

PageRelayProcess::~PageRelayProcess() { Stop(); }

Expected<void> PageRelayProcess::AwaitConnected(std::chrono::milliseconds patience,
                                                const std::atomic<bool>& stop) {
  if (!status_.valid()) return Fail("the lazy-page relay to " + peer_node_ + " is not dialling");
  const auto deadline = std::chrono::steady_clock::now() + patience;
  while (!stop) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Fail("the lazy-page relay to " + peer_node_ + " did not get in within " +
                  std::to_string(patience.count()) + " ms (see " + log_path_ + ")");
    }
    // Woken by the byte or the relay's exit; the short bound only notices `stop`.
    pollfd ready{status_.get(), POLLIN, 0};
    const int got = ::poll(&ready, 1, static_cast<int>(std::min<long>(left.count(), 20)));
    if (got < 0 && errno != EINTR) return Fail(Errno("waiting for the lazy-page relay"));
    if (got <= 0) continue;
    char byte = 0;
    const ssize_t n = ::read(status_.get(), &byte, 1);
    if (n == 1) return {};
    if (n < 0 && errno == EINTR) continue;
    return Fail("the lazy-page relay to " + peer_node_ + " could not get in (see " + log_path_ +
                ")");
  }
  return Fail("the move was aborted");
}

void PageRelayProcess::Stop() {
  if (process_) std::exchange(process_, nullptr)->Finish(std::chrono::milliseconds(0));
}

void PageRelayProcess::LetRun() {
  auto process = std::exchange(process_, nullptr);
  if (!process) return;
  // Reaped once its stream ends; it ends by itself (stream done, error or idle timeout).
  std::thread([process] { process->Finish(std::chrono::hours(24)); }).detach();
}

}  // namespace tern::agent
