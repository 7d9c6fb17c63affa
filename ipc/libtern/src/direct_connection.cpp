#include "direct_connection.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>

#include <boost/container/small_vector.hpp>
#include <cerrno>
#include <climits>
#include <cstring>

#include "send_all.hpp"

namespace tern::libtern {

namespace {

// A direct frame carries at most one message (kMaxMessageBytes) plus its framing.
constexpr std::size_t kMaxDirectPayload = ipc::kMaxMessageBytes + (1u << 20);
constexpr std::chrono::microseconds kQuickWait{1000};

void SetKeepalive(int fd) {
  // Errors are ignored: a Unix socketpair (tests) has no TCP options, and a connection without
  // keepalive still works; only a vanished peer node is then found later.
  const int on = 1, idle = 5, interval = 1, probes = 3;
  (void)::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
}

}  // namespace

DirectConnection::DirectConnection(UniqueFd fd) : fd_(std::move(fd)), decoder_(kMaxDirectPayload) {
  SetKeepalive(fd_.get());
  // Read's first wait is a blocking receive of at most this long (every other receive is
  // MSG_DONTWAIT). An error leaves the socket without it: Read then waits in poll at once.
  const timeval quick{0, static_cast<suseconds_t>(kQuickWait.count())};
  (void)::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &quick, sizeof(quick));
}

Unexpected<Error> DirectConnection::Break(std::string reason) {
  if (broken_reason_.empty()) broken_reason_ = std::move(reason);
  return Fail(broken_reason_);
}

Expected<void> DirectConnection::Write(ipc::WireWriter& frames) {
  if (broken()) return Fail(broken_reason_);
  boost::container::small_vector<std::string_view, 8> pieces;
  ipc::ForEachPiece(
      frames.out(), frames.shared(), [&](std::string_view piece) { pieces.push_back(piece); },
      [&](const ipc::SharedSpan& span) { pieces.push_back(span.bytes); });
  if (const int error = libtern::SendAll(fd_.get(), {pieces.data(), pieces.size()}); error != 0) {
    return Break(std::string("direct connection write failed: ") + std::strerror(error));
  }
  return {};
}

Expected<bool> DirectConnection::ReceiveOnce(bool* drained) {
  if (broken()) return Fail(broken_reason_);
  for (;;) {
    const std::span<char> space = decoder_.Prepare();
    // recvmsg, not recv: a stream reader's welcome may carry its rings' memfd (SCM_RIGHTS),
    // which a plain recv would drop.
    iovec piece{space.data(), space.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    msghdr message{};
    message.msg_iov = &piece;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd_.get(), &message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n > 0) TakeControl(message);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    if (n < 0) return Break(std::string("direct connection read failed: ") + std::strerror(errno));
    if (n == 0) return Break("the other job closed the direct connection");
    if (drained) *drained = static_cast<std::size_t>(n) < space.size();
    if (auto fed = decoder_.Commit(static_cast<std::size_t>(n)); !fed) {
      return Break("direct connection broken: " + fed.error().message);
    }
    return true;
  }
}

void DirectConnection::TakeControl(msghdr& message) {
  for (cmsghdr* header = CMSG_FIRSTHDR(&message); header != nullptr;
       header = CMSG_NXTHDR(&message, header)) {
    if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(header) + i * sizeof(int), sizeof fd);
      passed_.Reset(fd);  // the last one; any other is closed
    }
  }
}

Expected<bool> DirectConnection::ReceiveBlocking() {
  const std::span<char> space = decoder_.Prepare();
  const ssize_t n = ::recv(fd_.get(), space.data(), space.size(), 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return false;
  if (n < 0) return Break(std::string("direct connection read failed: ") + std::strerror(errno));
  if (n == 0) return Break("the other job closed the direct connection");
  if (auto fed = decoder_.Commit(static_cast<std::size_t>(n)); !fed) {
    return Break("direct connection broken: " + fed.error().message);
  }
  return true;
}

Expected<std::optional<ipc::Frame>> DirectConnection::Read(
    std::chrono::steady_clock::time_point deadline) {
  bool quick_tried = false;
  for (;;) {
    if (auto frame = decoder_.Next()) return std::optional<ipc::Frame>(std::move(*frame));
    if (broken()) return Fail(broken_reason_);
    // Wait first: the answer is rarely in within the microseconds since the request left.
    // An answer that comes within kQuickWait costs one blocking recv (as a raw TCP client's)
    // instead of a poll and a recv; a slower one, or a near deadline, waits in poll.
    if (!quick_tried && (deadline == std::chrono::steady_clock::time_point::max() ||
                         deadline - std::chrono::steady_clock::now() > kQuickWait)) {
      quick_tried = true;
      auto got = ReceiveBlocking();
      if (!got) return Fail(got.error().message);
      if (*got) continue;
    }
    int wait_ms = -1;
    if (deadline != std::chrono::steady_clock::time_point::max()) {
      const auto left =
          std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        wait_ms = 0;
      } else {
        wait_ms = left.count() > INT_MAX ? INT_MAX : static_cast<int>(left.count());
      }
    }
    pollfd readable{fd_.get(), POLLIN, 0};
    const int ready = ::poll(&readable, 1, wait_ms);
    if (ready < 0 && errno != EINTR) {
      return Break(std::string("direct connection poll failed: ") + std::strerror(errno));
    }
    if (ready == 0) return std::optional<ipc::Frame>();
    if (ready < 0) continue;
    auto got = ReceiveOnce();
    if (!got) return Fail(got.error().message);
  }
}

Expected<void> DirectConnection::ReadAvailable() {
  for (;;) {
    // A read that did not fill the space took all there was: no second receive to learn it
    // (a request costs one recv, not two). What arrives later wakes the owner's epoll again.
    bool drained = false;
    auto got = ReceiveOnce(&drained);
    if (!got) return Fail(got.error().message);
    if (!*got || drained) return {};
  }
}

}  // namespace tern::libtern
