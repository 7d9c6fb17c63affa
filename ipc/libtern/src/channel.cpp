#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/container/small_vector.hpp>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <thread>

#include "channel_impl.hpp"
#include "link_direct.hpp"
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

// What this channel's link receivers took and have not answered yet is answered first (a process
// that takes its last link message and closes its channel or exits must not leave its sender
// told "broken" for a message it took).
Channel::Impl::~Impl() { libtern::LinkChannelCloses(*this); }

bool Channel::Impl::connected() {
  std::lock_guard lock(mu_);
  return closed_reason_.empty();
}

IpcResult<Channel::Impl::Reply> Channel::Impl::Request(ipc::JobOp op, std::string_view body) {
  return Request(op, std::span<const std::string_view>(&body, 1));
}

IpcResult<Channel::Impl::Reply> Channel::Impl::Request(ipc::JobOp op,
                                                       std::span<const std::string_view> body) {
  // A request whose frame never got into the old channel whole (the agent died first) is sent
  // again on the new one: nothing of it can have run.
  for (int attempt = 0;; ++attempt) {
    auto request = Post(op, body);
    if (!request) return request.error();
    auto reply = Collect(*request);
    if (!reply && reply.status() == JobStatus::kUnavailable && attempt < kMaxResends &&
        reply.error().message == kUnsentText) {
      continue;
    }
    return reply;
  }
}

IpcResult<std::uint32_t> Channel::Impl::Post(ipc::JobOp op, std::string_view body, bool watched) {
  return Post(op, std::span<const std::string_view>(&body, 1), watched);
}

IpcResult<std::uint32_t> Channel::Impl::Post(ipc::JobOp op, std::span<const std::string_view> body,
                                             bool watched) {
  if (lookups_due_.load(std::memory_order_acquire)) RedoLookups();
  std::unique_lock lock(mu_);
  if (!closed_reason_.empty()) return libtern::Unavailable(closed_reason_);
  // Filed before the write: the reply may be read by another thread before this one waits.
  const std::uint32_t request = FileSlot(op);
  Slot& filed = slots_[request];
  filed.watched = watched;
  const std::uint64_t generation = filed.generation;
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
  std::string error;
  if (Write({pieces.data(), pieces.size()}, generation, {&request, 1}, /*unsent_when_cut=*/true,
            error) == Written::kFailed) {
    lock.lock();
    slots_.erase(request);
    CloseLocked(error);
    return libtern::Unavailable(error);
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
  Slot& slot = slots_[request];
  slot.op = op;
  slot.generation = generation_.load(std::memory_order_acquire);
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
    // Someone else may be waiting for a reply that has not come yet: let one of them read
    // (a thread in poll on event_fd() too).
    cv_.notify_all();
    SignalLocked();
  }
}

int Channel::Impl::event_fd() {
  std::lock_guard lock(mu_);
  if (!event_.valid()) event_.Reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  return event_.get();
}

int Channel::Impl::idle_fd() {
  std::lock_guard lock(mu_);
  return reader_active_ || !closed_reason_.empty() ? -1 : fd_.get();
}

void Channel::Impl::ReadIfIdle() {
  std::unique_lock lock(mu_);
  if (reader_active_ || !closed_reason_.empty()) return;
  reader_active_ = true;
  ReadAndDispatch(lock, /*block=*/false);
  reader_active_ = false;
  cv_.notify_all();
}

void Channel::Impl::SignalLocked() {
  if (!event_.valid()) return;
  const std::uint64_t one = 1;
  (void)!::write(event_.get(), &one, sizeof one);
}

std::optional<IpcResult<Channel::Impl::Reply>> Channel::Impl::TryCollect(std::uint32_t request) {
  std::lock_guard lock(mu_);
  auto it = slots_.find(request);
  if (it == slots_.end()) return IpcResult<Reply>(libtern::Unavailable("no such request"));
  if (it->second.done) {
    Slot slot = std::move(it->second);
    slots_.erase(it);
    if (slot.status != JobStatus::kOk) {
      return IpcResult<Reply>(IpcError{slot.status, std::string(slot.reply.body())});
    }
    return IpcResult<Reply>(std::move(slot.reply));
  }
  if (!closed_reason_.empty()) {
    slots_.erase(it);
    return IpcResult<Reply>(libtern::Unavailable(closed_reason_));
  }
  return std::nullopt;
}

void Channel::Impl::Abandon(std::uint32_t request) {
  std::lock_guard lock(mu_);
  auto it = slots_.find(request);
  if (it == slots_.end()) return;
  if (it->second.done || !closed_reason_.empty()) {
    slots_.erase(it);
  } else {
    it->second.abandoned = true;
  }
}

std::vector<IpcResult<Channel::Impl::Reply>> Channel::Impl::RequestMany(
    ipc::JobOp op, const std::vector<std::string>& bodies) {
  if (lookups_due_.load(std::memory_order_acquire)) RedoLookups();
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
  const std::uint64_t generation = generation_.load(std::memory_order_acquire);
  lock.unlock();
  const std::string_view piece = frames;
  std::string error;
  const Written written =
      // Never marked unsent by a write cut short: the frames before the cut may have run.
      Write(std::span<const std::string_view>(&piece, 1), generation, requests,
            /*unsent_when_cut=*/false, error);
  lock.lock();
  if (written == Written::kFailed) {
    for (std::uint32_t request : requests) slots_.erase(request);
    CloseLocked(error);
    for (std::size_t i = 0; i < bodies.size(); ++i) {
      results.emplace_back(libtern::Unavailable(error));
    }
    return results;
  }
  for (std::uint32_t request : requests) results.push_back(AwaitReply(lock, request));
  return results;
}

Channel::Impl::Written Channel::Impl::Write(std::span<const std::string_view> pieces,
                                            std::uint64_t generation,
                                            std::span<const std::uint32_t> requests,
                                            bool unsent_when_cut, std::string& error) {
  std::lock_guard lock(write_mu_);
  if (generation_.load(std::memory_order_acquire) != generation &&
      !StillToSendAfterReattach(requests)) {
    return Written::kLost;
  }
  if (const int failed = libtern::SendAll(fd_.get(), pieces); failed != 0) {
    // A closed agent end: the reader meets end of file and re-attaches (or closes), and this
    // request is answered then. Nothing of it can have run: its frame never got in whole.
    if ((failed == EPIPE || failed == ECONNRESET) && !unsent_when_cut) return Written::kLost;
    if (failed == EPIPE || failed == ECONNRESET) {
      // Marked before the re-attach (which needs write_mu_) fails what was in flight.
      std::lock_guard slots_lock(mu_);
      for (const std::uint32_t request : requests) {
        if (auto it = slots_.find(request); it != slots_.end()) it->second.unsent = true;
      }
      return Written::kLost;
    }
    error = std::string("IPC channel write failed: ") + std::strerror(failed);
    return Written::kFailed;
  }
  return Written::kOk;
}

// The channel was replaced after `requests` were filed and before this write: nothing of them
// reached any agent (the re-attach held write_mu_). The re-attach either failed them as lost
// with the old agent (they say "not sent" instead, so that Request sends them again), or, when
// the new agent restored the job's state from a move's hand-off, left them waiting for it to
// answer: it never heard of them, so they go to it now (true), or they would wait for good.
bool Channel::Impl::StillToSendAfterReattach(std::span<const std::uint32_t> requests) {
  std::lock_guard slots_lock(mu_);
  bool waiting = false;
  for (const std::uint32_t request : requests) {
    auto it = slots_.find(request);
    if (it == slots_.end()) continue;
    Slot& slot = it->second;
    if (!slot.done) {
      waiting = true;
    } else if (slot.status == JobStatus::kUnavailable && !slot.unsent) {
      slot.unsent = true;
      slot.reply.payload = std::string(kUnsentText);
      slot.reply.body_at = 0;
    }
  }
  return waiting && closed_reason_.empty();
}

void Channel::Impl::ReadAndDispatch(std::unique_lock<std::mutex>& lock, bool block) {
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
  bool wait = block;
  bool nothing = false;  // !block and nothing was there
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
      if (!block) {
        nothing = true;
        break;
      }
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
  if (nothing) return;
  if (n == 0) return LostLocked(lock, "the agent closed the IPC channel");
  if (n < 0) {
    return LostLocked(lock, std::string("IPC channel read failed: ") + std::strerror(read_errno));
  }
  if (auto fed = decoder_.Commit(n > 0 ? static_cast<std::size_t>(n) : 0); !fed) {
    return CloseLocked("IPC channel broken: " + fed.error().message);
  }
  while (auto frame = decoder_.Next()) Dispatch(std::move(*frame));
  cv_.notify_all();
}

void Channel::Impl::Dispatch(ipc::Frame frame) {
  if (frame.type == ipc::FrameType::kIpcHello) {
    // How to find the agent again; a malformed one is ignored (the channel cannot re-attach).
    if (auto hello = ipc::DecodeChannelHello(frame.payload)) {
      hello_ = std::move(*hello);
      hellos_.fetch_add(1, std::memory_order_acq_rel);
    }
    return;
  }
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
  if (it->second.abandoned) {
    slots_.erase(it);  // with the fd it carried
    return;
  }
  it->second.done = true;
  if (it->second.watched) SignalLocked();
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

void Channel::Impl::LostLocked(std::unique_lock<std::mutex>& lock, std::string reason) {
  if (!hello_ || !fd_.valid()) return CloseLocked(std::move(reason));
  const ipc::ChannelHello hello = *hello_;
  lock.unlock();
  std::optional<UniqueFd> fresh;
  bool restored = false;
  bool kept = false;
  std::string why;
  {
    // No writer between the old channel and the new one.
    std::lock_guard write_lock(write_mu_);
    auto attached = Reattach(hello);
    if (!attached) {
      why = attached.error().message;
    } else if (::dup2(attached->first.get(), fd_.get()) < 0) {
      why = std::string("dup2: ") + std::strerror(errno);
    } else {
      fresh = std::move(attached->first);
      restored = attached->second.restored;
      kept = attached->second.kept;
      generation_.fetch_add(1, std::memory_order_acq_rel);
    }
    // mu_ before the writes are let go: a writer waiting with a request filed before the new
    // generation finds it decided below (failed, or left to a restoring agent), never between
    // (it sent it to the new agent, which ran it, and it was then failed as lost).
    lock.lock();
  }
  if (!fresh) return CloseLocked(reason + "; re-attaching failed: " + why);
  const std::uint64_t now = generation_.load(std::memory_order_acquire);
  for (auto& [id, slot] : slots_) {
    if (slot.done || slot.generation >= now) continue;
    // Restored: the agent answers what the job asked before (the hand-off carried it).
    if (restored && !slot.unsent) continue;
    slot.done = true;
    slot.status = JobStatus::kUnavailable;
    slot.reply.payload = std::string(slot.unsent ? kUnsentText : kept ? kLostKeptText : kLostText);
    slot.reply.body_at = 0;
  }
  std::erase_if(slots_,
                [](const auto& entry) { return entry.second.done && entry.second.abandoned; });
  decoder_ = ipc::FrameDecoder(kMaxFramePayload);  // a frame cut short by the old agent's death
  fds_.clear();
  // Kept (the agent's own record of the job's rights): the names stand, nothing to look up.
  if (!restored && !kept && !lookups_.empty()) {
    redo_lookups_ = true;
    lookups_due_.store(true, std::memory_order_release);
  }
  reattached_.fetch_add(1, std::memory_order_acq_rel);
  cv_.notify_all();
  SignalLocked();
}

namespace {

// Reads the agent's IpcAttached answer from `fd` within `wait`: the answer and the fd it
// carries (invalid when none came).
IpcResult<std::pair<ipc::AttachAnswer, UniqueFd>> ReadAttached(int fd,
                                                               std::chrono::milliseconds wait) {
  ipc::FrameDecoder decoder(ipc::kMaxAttachFrame);
  UniqueFd passed;
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return libtern::Unavailable("the agent did not answer the attach");
    pollfd readable{fd, POLLIN, 0};
    if (::poll(&readable, 1, static_cast<int>(left.count())) < 0 && errno != EINTR) {
      return libtern::Unavailable(std::string("poll: ") + std::strerror(errno));
    }
    const std::span<char> space = decoder.Prepare();
    iovec iov{space.data(), space.size()};
    alignas(struct cmsghdr) std::array<char, CMSG_SPACE(sizeof(int) * 2)> control;
    msghdr header{};
    header.msg_iov = &iov;
    header.msg_iovlen = 1;
    header.msg_control = control.data();
    header.msg_controllen = control.size();
    const ssize_t n = ::recvmsg(fd, &header, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n <= 0) return libtern::Unavailable("the agent closed the attach connection");
    for (cmsghdr* c = CMSG_FIRSTHDR(&header); c != nullptr; c = CMSG_NXTHDR(&header, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int received = -1;
        std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        if (!passed.valid()) {
          passed.Reset(received);
        } else {
          ::close(received);
        }
      }
    }
    if (auto fed = decoder.Commit(static_cast<std::size_t>(n)); !fed) {
      return libtern::Unavailable("malformed attach answer: " + fed.error().message);
    }
    auto frame = decoder.Next();
    if (!frame) continue;
    auto answer = frame->type == ipc::FrameType::kIpcAttached
                      ? ipc::DecodeAttachAnswer(frame->payload)
                      : std::nullopt;
    if (!answer) return libtern::Unavailable("malformed attach answer");
    return std::make_pair(std::move(*answer), std::move(passed));
  }
}

}  // namespace

IpcResult<std::pair<UniqueFd, ipc::AttachAnswer>> Channel::Impl::Reattach(
    const ipc::ChannelHello& hello) {
  const auto deadline = std::chrono::steady_clock::now() + kReattachWait;
  std::string why = "no attempt";
  int refusals = 0;
  std::string frame;
  ipc::AppendFrame(frame, ipc::FrameType::kIpcAttach,
                   ipc::EncodeAttachRequest({hello.job, hello.secret}));
  for (;;) {
    auto pause = std::chrono::milliseconds(100);
    UniqueFd socket(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, hello.socket_path.data(),
                std::min(hello.socket_path.size(), sizeof address.sun_path - 1));
    if (!socket.valid()) {
      why = std::string("socket: ") + std::strerror(errno);
    } else if (::connect(socket.get(), reinterpret_cast<const sockaddr*>(&address),
                         sizeof address) != 0) {
      // Not listening yet: the agent is restarting.
      why = "cannot connect to " + hello.socket_path + ": " + std::strerror(errno);
    } else {
      const std::string_view piece = frame;
      if (const int failed = libtern::SendAll(socket.get(), {&piece, 1}); failed != 0) {
        why = std::string("attach request not sent: ") + std::strerror(failed);
      } else if (auto answer = ReadAttached(socket.get(), std::chrono::seconds(5)); !answer) {
        why = answer.error().message;
      } else if (answer->first.ok && answer->second.valid()) {
        return std::make_pair(std::move(answer->second), std::move(answer->first));
      } else {
        why = answer->first.ok ? "the agent accepted but sent no channel" : answer->first.why;
        // A refusal is final unless the agent was still adopting its jobs: a few more tries.
        if (++refusals >= 3) return libtern::Unavailable(why);
        pause = std::chrono::seconds(1);
      }
    }
    if (std::chrono::steady_clock::now() + pause >= deadline) {
      return libtern::Unavailable(why);
    }
    std::this_thread::sleep_for(pause);
  }
}

void Channel::Impl::NoteLookup(std::uint32_t name, std::string text) {
  std::lock_guard lock(mu_);
  lookups_[name] = std::move(text);
}

void Channel::Impl::RedoLookups() {
  std::unique_lock lock(mu_);
  for (;;) {
    if (redoing_) {
      if (redoer_ == std::this_thread::get_id()) return;  // its own lookups
      cv_.wait(lock);
      continue;
    }
    if (!redo_lookups_) return;
    break;
  }
  redoing_ = true;
  redo_lookups_ = false;
  redoer_ = std::this_thread::get_id();
  const auto lookups = lookups_;
  lock.unlock();
  // A restarted agent answers not_found until its links to the other agents are up again.
  const auto deadline = std::chrono::steady_clock::now() + kRelookupWait;
  for (const auto& [name, text] : lookups) {
    ipc::WireWriter body;
    body.Bytes(text);
    body.U32(name);  // the name the job knows it by
    auto reply = Request(ipc::JobOp::kNameLookup, body.out());
    while (!reply &&
           (reply.status() == JobStatus::kNotFound || reply.status() == JobStatus::kUnavailable) &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      reply = Request(ipc::JobOp::kNameLookup, body.out());
    }
    if (!reply) continue;  // gone: the old name stays invalid_name
    ipc::WireReader in(reply->body());
    const auto got = in.U32();
    if (got && *got != name) {
      // The agent could not give the old name: this right is not the one the job uses.
      ipc::WireWriter drop;
      drop.U32(*got);
      (void)Request(ipc::JobOp::kDeallocate, drop.out());
    }
  }
  lock.lock();
  redoing_ = false;
  if (!redo_lookups_) lookups_due_.store(false, std::memory_order_release);
  cv_.notify_all();
}

void Channel::Impl::CloseLocked(std::string reason) {
  if (closed_reason_.empty()) closed_reason_ = std::move(reason);
  cv_.notify_all();
  SignalLocked();
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
