#include "stream_inbox.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>

#include "send_all.hpp"

namespace tern::libtern {

namespace {
constexpr std::size_t kPoolSize = 4;
// What the owner of a frame read in place points at: the frame's bytes are in ring 0, not in a
// string (no one reads a direct frame through its owner; it only keeps the bytes there).
const std::string kInRing;
}  // namespace

// Ring 0's bytes the reader took, in ring order: copied out (given back at once) or lent to the
// views of frames read in place (given back when the frame's last owner goes). Only the oldest
// bytes can go back (the ring is FIFO), so a frame still held keeps those after it. The owners
// live in the PortReader's thread, as the inbox does; once the inbox is gone (or broken) a
// returned loan gives nothing back: the rings are revoked.
struct StreamInbox::RingLoans {
  std::shared_ptr<StreamRings> rings;  // the mapping, while a view lives
  int fd = -1;                         // the bell's socket, while `open`
  bool open = true;
  bool bell_failed = false;
  struct Loan {
    std::uint64_t start = 0;  // its position in ring 0 (ShmRing::taken_at)
    bool out = true;
  };
  std::deque<Loan> loans;  // frames read in place, oldest first

  // Gives back everything taken before the oldest loan still out.
  void GiveBack() {
    if (!open) return;
    ipc::ShmRing& ring = rings->frames();
    while (!loans.empty() && !loans.front().out) loans.pop_front();
    const std::uint64_t until = loans.empty() ? ring.taken_at() : loans.front().start;
    if (until <= ring.released_at()) return;
    // The writer sleeps in poll() until the ring has room.
    if (ring.Release(until - ring.released_at()) && !RingBell(fd)) bell_failed = true;
  }
  void Returned(std::uint64_t start) {
    for (Loan& loan : loans) {
      if (loan.start == start) {
        loan.out = false;
        break;
      }
    }
    GiveBack();
  }
};

namespace {
// The owner of one frame read in place: gives it back when the last copy of it goes.
struct FrameLoan {
  FrameLoan(std::shared_ptr<StreamInbox::RingLoans> of, std::uint64_t at)
      : loans(std::move(of)), start(at) {}
  ~FrameLoan();
  FrameLoan(const FrameLoan&) = delete;
  FrameLoan& operator=(const FrameLoan&) = delete;
  std::shared_ptr<StreamInbox::RingLoans> loans;
  std::uint64_t start;
};
}  // namespace

StreamInbox::StreamInbox(UniqueFd fd) : fd_(std::move(fd)) {
  // Errors are ignored: a Unix socketpair (tests) has no TCP options.
  const int on = 1, idle = 5, interval = 1, probes = 3;
  (void)::setsockopt(fd_.get(), SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
  (void)::setsockopt(fd_.get(), IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  (void)::setsockopt(fd_.get(), IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  (void)::setsockopt(fd_.get(), IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
}

StreamInbox::~StreamInbox() {
  // A writer busy in the rings sees the end there at once, before the socket's end of file.
  if (rings_) rings_->Revoke();
  if (loans_) loans_->open = false;
}

namespace {
FrameLoan::~FrameLoan() { loans->Returned(start); }
}  // namespace

bool StreamInbox::TakeFromRing() {
  if (rings_->Revoked()) return false;
  ipc::ShmRing& ring = rings_->frames();
  for (;;) {
    const std::span<const std::byte> readable = ring.Readable();
    if (readable.size() < ipc::kFrameHeaderSize) return true;
    const char* at = reinterpret_cast<const char*>(readable.data());
    const ipc::FrameHeader header = ipc::ReadFrameHeader(at);
    if (header.length > kMaxPayload) return false;
    const std::size_t total = ipc::kFrameHeaderSize + header.length;
    // Across the ring's end, or not whole yet: copied (Receive).
    if (total > readable.size()) return true;
    Frame& frame = in_place_.emplace_back();
    frame.type = header.type;
    frame.payload = std::string_view(at + ipc::kFrameHeaderSize, header.length);
    frame.shared = true;
    frame.in_ring = true;
    const std::uint64_t start = ring.taken_at();
    frame.owner =
        std::shared_ptr<const std::string>(std::make_shared<FrameLoan>(loans_, start), &kInRing);
    loans_->loans.push_back({start, true});
    ring.Take(total);
  }
}

std::shared_ptr<std::string> StreamInbox::Buffer(std::size_t size) {
  std::unique_ptr<std::string> bytes;
  Pool& pool = *pool_;
  // The smallest that holds `size`: large ones stay for large frames. Of equal ones the last
  // returned, whose lines are likeliest still cached (the oldest first cycled a stream of small
  // frames through all four, 1 MiB, as large as this machine's L2 cache).
  std::size_t best = pool.size();
  for (std::size_t i = pool.size(); i-- > 0;) {
    if (pool[i]->size() >= size && (best == pool.size() || pool[i]->size() < pool[best]->size())) {
      best = i;
    }
  }
  if (best != pool.size()) {
    bytes = std::move(pool[best]);
    pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(best));
  }
  if (!bytes) {
    bytes = std::make_unique<std::string>();
    bytes->resize(std::max(size, kBufferBytes));
  }
  // Back to the pool when the last view of it goes (if the inbox still exists).
  std::weak_ptr<Pool> home = pool_;
  return std::shared_ptr<std::string>(bytes.release(), [home](std::string* released) {
    std::unique_ptr<std::string> owned(released);
    auto pool = home.lock();
    if (!pool) return;
    if (pool->size() < kPoolSize) {
      pool->push_back(std::move(owned));
      return;
    }
    // A full pool keeps the largest buffers: a stream of large frames otherwise got a fresh
    // one (zero-filled by resize, 16% of a 1 MiB reader's time) for most frames, while the
    // pool held small ones (bench/README.md, seventh session).
    auto smallest = std::min_element(pool->begin(), pool->end(), [](const auto& a, const auto& b) {
      return a->size() < b->size();
    });
    if ((*smallest)->size() < owned->size()) *smallest = std::move(owned);
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
  // Whole frames in place, while nothing is half-copied into the buffer (which comes first).
  if (taken_ && (!buffer_ || used_ == parsed_) && !TakeFromRing()) {
    Break();
    return Received::kBroken;
  }
  if (!buffer_) {
    buffer_ = Buffer(kBufferBytes);
    used_ = parsed_ = 0;
  }
  const std::size_t partial = used_ - parsed_;
  const std::size_t needed = Needed();
  if (needed - ipc::kFrameHeaderSize > kMaxPayload) {
    Break();
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
  if (taken_) {
    if (rings_->Revoked()) {
      Break();
      return Received::kBroken;
    }
    // At most two runs: up to the end of the ring, then from its start.
    ipc::ShmRing& ring = rings_->frames();
    std::size_t n = 0;
    for (int run = 0; run < 2 && n < room; ++run) {
      const std::span<const std::byte> readable = ring.Readable();
      const std::size_t k = std::min(readable.size(), room - n);
      if (k == 0) break;
      std::memcpy(buffer_->data() + used_ + n, readable.data(), k);
      ring.Take(k);
      n += k;
    }
    used_ += n;
    loans_->GiveBack();
    if (loans_->bell_failed) {
      Break();
      return Received::kBroken;
    }
    return n < room ? Received::kDrained : Received::kMore;
  }
  for (;;) {
    const ssize_t n = ::recv(fd_.get(), buffer_->data() + used_, room, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Received::kDrained;
    if (n <= 0) {
      Break();
      return Received::kBroken;
    }
    used_ += static_cast<std::size_t>(n);
    // A read that did not fill the room took all there was.
    return static_cast<std::size_t>(n) < room ? Received::kDrained : Received::kMore;
  }
}

std::optional<StreamInbox::Frame> StreamInbox::Next() {
  // Frames read in place lie before anything copied into the buffer since (Receive).
  if (in_place_next_ < in_place_.size()) {
    Frame frame = std::move(in_place_[in_place_next_++]);
    if (in_place_next_ == in_place_.size()) {
      in_place_.clear();
      in_place_next_ = 0;
    }
    return frame;
  }
  // Frames that came before an end of file are taken all the same.
  if (!buffer_) return std::nullopt;
  const std::size_t partial = used_ - parsed_;
  if (partial < ipc::kFrameHeaderSize) return std::nullopt;
  const ipc::FrameHeader header = ipc::ReadFrameHeader(buffer_->data() + parsed_);
  if (partial < ipc::kFrameHeaderSize + header.length) return std::nullopt;
  if (header.type == kDirectStreamBell) {
    parsed_ += ipc::kFrameHeaderSize + header.length;
    if (!taken_ && rings_) {
      // The writer took the rings: the socket carries nothing but bells from here on, and
      // what it holds past this one is bells too.
      taken_ = true;
      used_ = parsed_;
    }
    return Next();
  }
  Frame frame;
  frame.shared = taken_;
  frame.type = header.type;
  frame.payload = std::string_view(*buffer_).substr(parsed_ + ipc::kFrameHeaderSize, header.length);
  frame.owner = buffer_;
  parsed_ += ipc::kFrameHeaderSize + header.length;
  return frame;
}

bool StreamInbox::Write(std::string_view bytes, std::uint64_t handed) {
  if (broken_) return false;
  if (taken_ && StreamRings::WriteWhole(rings_->acks(), bytes)) {
    if (rings_->acks().Publish(handed) && !RingBell(fd_.get())) Break();
    return !broken_;
  }
  // No rings, or the writer has not read its acks in a while: the socket, which it reads too.
  if (libtern::SendAll(fd_.get(), {&bytes, 1}) != 0) Break();
  return !broken_;
}

}  // namespace tern::libtern

namespace tern::libtern {

bool StreamInbox::Welcome(std::string_view welcome, bool rings) {
  if (broken_) return false;
  if (rings) {
    if (auto made = StreamRings::Create()) {
      auto& [shared, memfd] = *made;
      if (SendWithFd(fd_.get(), welcome, memfd.get()) != 0) {
        broken_ = true;
        return false;
      }
      rings_ = std::move(shared);
      loans_ = std::make_shared<RingLoans>();
      loans_->rings = rings_;
      loans_->fd = fd_.get();
      return true;
    }
    // No memfd (limits, an old kernel): the socket alone, as across nodes.
  }
  return Write(welcome);
}

bool StreamInbox::ArmForFrames() {
  if (!taken_ || broken_) return false;
  return rings_->frames().ArmForData();
}

void StreamInbox::Disarm() {
  if (taken_) rings_->frames().DisarmForData();
}

bool StreamInbox::TakeBells() {
  if (broken_) return false;
  char bells[256];
  for (;;) {
    const ssize_t n = ::recv(fd_.get(), bells, sizeof bells, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n <= 0) {
      Break();
      return false;
    }
    if (static_cast<std::size_t>(n) < sizeof bells) return true;
  }
}

void StreamInbox::Break() {
  broken_ = true;
  if (rings_) rings_->Revoke();
  if (loans_) loans_->open = false;
}

}  // namespace tern::libtern
