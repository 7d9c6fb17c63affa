#include "stream_inbox.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "send_all.hpp"

namespace tern::libtern {

namespace {
constexpr std::size_t kPoolSize = 4;
}  // namespace

StreamInbox::StreamInbox(UniqueFd fd) : fd_(std::move(fd)) {
  // Errors are ignored: a Unix socketpair (tests) has no TCP options.
  const int on = 1, idle = 5, interval = 1, probes = 3;
  (void)::setsockopt(fd_.get(), SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
  (void)::setsockopt(fd_.get(), IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  (void)::setsockopt(fd_.get(), IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  (void)::setsockopt(fd_.get(), IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
}

std::shared_ptr<std::string> StreamInbox::Buffer(std::size_t size) {
  std::unique_ptr<std::string> bytes;
  Pool& pool = *pool_;
  for (std::size_t i = 0; i < pool.size(); ++i) {
    if (pool[i]->size() >= size) {
      bytes = std::move(pool[i]);
      pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(i));
      break;
    }
  }
  if (!bytes) {
    bytes = std::make_unique<std::string>();
    bytes->resize(std::max(size, kBufferBytes));
  }
  // Back to the pool when the last view of it goes (if the inbox still exists).
  std::weak_ptr<Pool> home = pool_;
  return std::shared_ptr<std::string>(bytes.release(), [home](std::string* released) {
    std::unique_ptr<std::string> owned(released);
    if (auto pool = home.lock(); pool && pool->size() < kPoolSize) {
      pool->push_back(std::move(owned));
    }
  });
}

// The first frame's size when its header is in, else just the header's.
std::size_t StreamInbox::Needed() const {
  const std::size_t partial = used_ - parsed_;
  if (partial < ipc::kFrameHeaderSize) return ipc::kFrameHeaderSize;
  return ipc::kFrameHeaderSize + ipc::ReadFrameHeader(buffer_->data() + parsed_).length;
}

StreamInbox::Received StreamInbox::Receive() {
  if (broken_) return Received::kBroken;
  if (!buffer_) {
    buffer_ = Buffer(kBufferBytes);
    used_ = parsed_ = 0;
  }
  const std::size_t partial = used_ - parsed_;
  const std::size_t needed = Needed();
  if (needed - ipc::kFrameHeaderSize > kMaxPayload) {
    broken_ = true;
    return Received::kBroken;
  }
  if (partial >= needed) {
    if (used_ == buffer_->size()) return Received::kMore;  // Next() first
  } else if (buffer_->size() - parsed_ < needed || used_ == buffer_->size()) {
    // The frame begun does not fit what is left: a buffer that holds it, with what came of it
    // (less than one frame) moved to its start. A large frame is then received in place.
    auto fresh = Buffer(needed);
    if (partial != 0) std::memcpy(fresh->data(), buffer_->data() + parsed_, partial);
    buffer_ = std::move(fresh);
    used_ = partial;
    parsed_ = 0;
  }
  const std::size_t room = buffer_->size() - used_;
  for (;;) {
    const ssize_t n = ::recv(fd_.get(), buffer_->data() + used_, room, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Received::kDrained;
    if (n <= 0) {
      broken_ = true;
      return Received::kBroken;
    }
    used_ += static_cast<std::size_t>(n);
    // A read that did not fill the room took all there was.
    return static_cast<std::size_t>(n) < room ? Received::kDrained : Received::kMore;
  }
}

std::optional<StreamInbox::Frame> StreamInbox::Next() {
  // Frames that came before an end of file are taken all the same.
  if (!buffer_) return std::nullopt;
  const std::size_t partial = used_ - parsed_;
  if (partial < ipc::kFrameHeaderSize) return std::nullopt;
  const ipc::FrameHeader header = ipc::ReadFrameHeader(buffer_->data() + parsed_);
  if (partial < ipc::kFrameHeaderSize + header.length) return std::nullopt;
  Frame frame;
  frame.type = header.type;
  frame.payload = std::string_view(*buffer_).substr(parsed_ + ipc::kFrameHeaderSize, header.length);
  frame.owner = buffer_;
  parsed_ += ipc::kFrameHeaderSize + header.length;
  return frame;
}

bool StreamInbox::Write(std::string_view bytes) {
  if (broken_) return false;
  if (libtern::SendAll(fd_.get(), {&bytes, 1}) != 0) broken_ = true;
  return !broken_;
}

}  // namespace tern::libtern
