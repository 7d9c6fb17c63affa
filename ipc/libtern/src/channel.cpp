#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/container/small_vector.hpp>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "channel_impl.hpp"
#include "send_all.hpp"

namespace tern {

namespace libtern {

IpcError Unavailable(std::string message) { return IpcError{JobStatus::kUnavailable, message}; }

std::uint32_t TimeoutMs(Timeout timeout) {
  if (timeout.count() <= 0) return 0;
  if (timeout.count() >= static_cast<Timeout::rep>(ipc::kWaitForever)) return ipc::kWaitForever;
  return static_cast<std::uint32_t>(timeout.count());
}

}  // namespace libtern

namespace {

using tern::UniqueFd;

std::atomic<std::uint64_t> next_channel_id{1};

// A job's frames may carry a whole message (kMaxMessageBytes) plus its framing.
constexpr std::size_t kMaxFramePayload = ipc::kMaxMessageBytes + (1u << 20);
constexpr std::size_t kMaxFdsPerRead = 8;

std::shared_ptr<Channel::Impl> ImplFromEnvironment() {
  const char* value = std::getenv("TERN_IPC_FD");
  if (value == nullptr || *value == '\0') {
    return std::make_shared<Channel::Impl>("not running under tern: TERN_IPC_FD is not set");
  }
  char* end = nullptr;
  errno = 0;
  const long fd = std::strtol(value, &end, 10);
  if (errno != 0 || *end != '\0' || fd < 0 || fd > std::numeric_limits<int>::max()) {
    return std::make_shared<Channel::Impl>(std::string("not running under tern: TERN_IPC_FD=\"") +
                                           value + "\" is not a file descriptor number");
  }
  struct stat info {};
  if (::fstat(static_cast<int>(fd), &info) != 0 || !S_ISSOCK(info.st_mode)) {
    return std::make_shared<Channel::Impl>(std::string("not running under tern: TERN_IPC_FD=") +
                                           value + " is not an open socket");
  }
  return std::make_shared<Channel::Impl>(UniqueFd(static_cast<int>(fd)));
}

// The ok replies of these ops carry one fd on their frame's first byte.
bool CarriesFd(ipc::JobOp op) {
  return op == ipc::JobOp::kRegionMap || op == ipc::JobOp::kDirectOpen ||
         op == ipc::JobOp::kDirectAccept;
}

std::mutex default_mu;
std::shared_ptr<Channel::Impl>& DefaultImpl() {
  static std::shared_ptr<Channel::Impl> impl;
  return impl;
}

}  // namespace

std::string IpcError::ToString() const {
  return std::string(ipc::JobStatusName(status)) + ": " + message;
}

Channel::Impl::Impl(UniqueFd fd)
    : id_(next_channel_id.fetch_add(1)), fd_(std::move(fd)), decoder_(kMaxFramePayload) {}

Channel::Impl::Impl(std::string reason)
    : id_(next_channel_id.fetch_add(1)), closed_reason_(std::move(reason)) {}

Channel::Impl::~Impl() = default;

bool Channel::Impl::connected() {
  std::lock_guard lock(mu_);
  return closed_reason_.empty();
}

IpcResult<Channel::Impl::Reply> Channel::Impl::Request(ipc::JobOp op, std::string_view body) {
  return Request(op, std::span<const std::string_view>(&body, 1));
}

IpcResult<Channel::Impl::Reply> Channel::Impl::Request(ipc::JobOp op,
                                                       std::span<const std::string_view> body) {
  auto request = Post(op, body);
  if (!request) return request.error();
  return Collect(*request);
}

IpcResult<std::uint32_t> Channel::Impl::Post(ipc::JobOp op, std::string_view body) {
  return Post(op, std::span<const std::string_view>(&body, 1));
}

IpcResult<std::uint32_t> Channel::Impl::Post(ipc::JobOp op,
                                             std::span<const std::string_view> body) {
  std::unique_lock lock(mu_);
  if (!closed_reason_.empty()) return libtern::Unavailable(closed_reason_);
  // Filed before the write: the reply may be read by another thread before this one waits.
  const std::uint32_t request = FileSlot(op);
  lock.unlock();

  // The frame's and the request's headers, then the body as it is.
  std::size_t body_size = 0;
  for (std::string_view piece : body) body_size += piece.size();
  std::string header;
  ipc::AppendFrameHeader(header, ipc::FrameType::kIpcRequest,
                         static_cast<std::uint32_t>(ipc::kJobRequestHeaderSize + body_size));
  header += ipc::EncodeJobRequest(request, op, {});
  // A call's request has a few pieces: no allocation for them on this hot path.
  boost::container::small_vector<std::string_view, 8> pieces{header};
  pieces.insert(pieces.end(), body.begin(), body.end());
  auto written = Write({pieces.data(), pieces.size()});
  if (!written) {
    lock.lock();
    slots_.erase(request);
    CloseLocked(written.error().message);
    return written.error();
  }
  return request;
}

IpcResult<Channel::Impl::Reply> Channel::Impl::Collect(std::uint32_t request) {
  std::unique_lock lock(mu_);
  return AwaitReply(lock, request);
}

std::uint32_t Channel::Impl::FileSlot(ipc::JobOp op) {
  std::uint32_t request = next_request_++;
  while (request == 0 || slots_.contains(request)) request = next_request_++;
  slots_[request].op = op;
  return request;
}

IpcResult<Channel::Impl::Reply> Channel::Impl::AwaitReply(std::unique_lock<std::mutex>& lock,
                                                          std::uint32_t request) {
  for (;;) {
    auto it = slots_.find(request);
    if (it->second.done) {
      Slot slot = std::move(it->second);
      slots_.erase(it);
      if (slot.status != JobStatus::kOk) {
        return IpcError{slot.status, std::string(slot.reply.body())};
      }
      return std::move(slot.reply);
    }
    if (!closed_reason_.empty()) {
      slots_.erase(it);
      return libtern::Unavailable(closed_reason_);
    }
    if (reader_active_) {
      cv_.wait(lock);
      continue;
    }
    reader_active_ = true;
    ReadAndDispatch(lock);
    reader_active_ = false;
    // Someone else may be waiting for a reply that has not come yet: let one of them read.
    cv_.notify_all();
  }
}

std::vector<IpcResult<Channel::Impl::Reply>> Channel::Impl::RequestMany(
    ipc::JobOp op, const std::vector<std::string>& bodies) {
  std::vector<IpcResult<Reply>> results;
  std::vector<std::uint32_t> requests;
  std::string frames;
  std::unique_lock lock(mu_);
  if (!closed_reason_.empty()) {
    for (std::size_t i = 0; i < bodies.size(); ++i) {
      results.emplace_back(libtern::Unavailable(closed_reason_));
    }
    return results;
  }
  for (const std::string& body : bodies) {
    const std::uint32_t request = FileSlot(op);
    requests.push_back(request);
    ipc::AppendFrame(frames, ipc::FrameType::kIpcRequest, ipc::EncodeJobRequest(request, op, body));
  }
  lock.unlock();
  const std::string_view piece = frames;
  auto written = Write(std::span<const std::string_view>(&piece, 1));
  lock.lock();
  if (!written) {
    for (std::uint32_t request : requests) slots_.erase(request);
    CloseLocked(written.error().message);
    for (std::size_t i = 0; i < bodies.size(); ++i) results.emplace_back(written.error());
    return results;
  }
  for (std::uint32_t request : requests) results.push_back(AwaitReply(lock, request));
  return results;
}

IpcResult<void> Channel::Impl::Write(std::span<const std::string_view> pieces) {
  std::lock_guard lock(write_mu_);
  if (const int error = libtern::SendAll(fd_.get(), pieces); error != 0) {
    return libtern::Unavailable(std::string("IPC channel write failed: ") + std::strerror(error));
  }
  return {};
}

void Channel::Impl::ReadAndDispatch(std::unique_lock<std::mutex>& lock) {
  lock.unlock();
  // Straight into the decoder: a large reply lands in its own frame, never copied.
  const std::span<char> space = decoder_.Prepare();
  alignas(struct cmsghdr) std::array<char, CMSG_SPACE(sizeof(int) * kMaxFdsPerRead)> control;
  ssize_t n = 0;
  int read_errno = 0;
  std::vector<UniqueFd> fds;
  // A reader is here because its reply is not in yet, and the agent rarely answers within the
  // few microseconds since the request left: wait first, then read (one recvmsg fewer per
  // round trip than reading first and finding nothing). Wait in poll, not in recvmsg: a recvmsg
  // sleeper is also woken each time the agent reads our requests (the socket's write-space
  // wake-up), a poll for POLLIN is not.
  bool wait = true;
  for (;;) {
    if (wait) {
      wait = false;
      pollfd readable{fd_.get(), POLLIN, 0};
      if (::poll(&readable, 1, -1) < 0 && errno != EINTR) {
        n = -1;
        read_errno = errno;
        break;
      }
    }
    iovec iov{space.data(), space.size()};
    msghdr header{};
    header.msg_iov = &iov;
    header.msg_iovlen = 1;
    header.msg_control = control.data();
    header.msg_controllen = control.size();
    n = ::recvmsg(fd_.get(), &header, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      wait = true;
      continue;
    }
    read_errno = n < 0 ? errno : 0;
    if (n >= 0) {
      for (cmsghdr* c = CMSG_FIRSTHDR(&header); c != nullptr; c = CMSG_NXTHDR(&header, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
          int received = -1;
          std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          fds.emplace_back(received);
        }
      }
    }
    break;
  }
  lock.lock();
  for (UniqueFd& fd : fds) fds_.push_back(std::move(fd));
  if (n == 0) return CloseLocked("the agent closed the IPC channel");
  if (n < 0) {
    return CloseLocked(std::string("IPC channel read failed: ") + std::strerror(read_errno));
  }
  if (auto fed = decoder_.Commit(n > 0 ? static_cast<std::size_t>(n) : 0); !fed) {
    return CloseLocked("IPC channel broken: " + fed.error().message);
  }
  while (auto frame = decoder_.Next()) Dispatch(std::move(*frame));
  cv_.notify_all();
}

void Channel::Impl::Dispatch(ipc::Frame frame) {
  if (frame.type != ipc::FrameType::kIpcReply) return;  // nothing else is meant for a job
  const auto reply = ipc::ReadJobReplyHeader(frame.payload);
  if (!reply) return CloseLocked("IPC channel broken: IPC reply shorter than its header");
  auto it = slots_.find(reply->id);
  UniqueFd fd;
  if (reply->status == JobStatus::kOk && it != slots_.end() && CarriesFd(it->second.op) &&
      !fds_.empty()) {
    fd = std::move(fds_.front());
    fds_.pop_front();
  }
  if (it == slots_.end() || it->second.done) return;
  it->second.done = true;
  it->second.status = reply->status;
  if (reply->status == JobStatus::kOk) {
    // The body stays in the frame's payload: a large one is not copied out.
    it->second.reply.payload = std::move(frame.payload);
    it->second.reply.body_at = ipc::kJobReplyHeaderSize;
  } else {
    it->second.reply.payload = ipc::JobReplyErrorText(
        reply->status, std::string_view(frame.payload).substr(ipc::kJobReplyHeaderSize));
  }
  it->second.reply.fd = std::move(fd);
}

void Channel::Impl::CloseLocked(std::string reason) {
  if (closed_reason_.empty()) closed_reason_ = std::move(reason);
  cv_.notify_all();
}

// Channel handle --------------------------------------------------------------------------

Channel::Channel() {
  std::lock_guard lock(default_mu);
  auto& impl = DefaultImpl();
  if (!impl) impl = ImplFromEnvironment();
  impl_ = impl;
}

Channel Channel::FromFd(int fd) {
  if (fd < 0) {
    return Channel(std::make_shared<Impl>("not running under tern: no IPC channel fd given"));
  }
  return Channel(std::make_shared<Impl>(UniqueFd(fd)));
}

void Channel::SetDefault(const Channel& channel) {
  std::lock_guard lock(default_mu);
  DefaultImpl() = channel.impl_;
}

bool Channel::connected() const { return impl_->connected(); }
std::uint64_t Channel::id() const { return impl_->id(); }

}  // namespace tern
