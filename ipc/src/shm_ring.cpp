#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>
#include <memory>
#include <tern/ipc/shm_ring.hpp>

namespace tern::ipc {

struct ShmRing::Header {
  alignas(kLine) std::uint64_t magic;
  std::uint64_t capacity;
  std::atomic<std::uint32_t> revoked;
  // What the creator's consumer follows (kSkips). Zero in a block an older libtern made.
  std::atomic<std::uint32_t> features;
  alignas(kLine) std::atomic<std::uint64_t> head;
  // The producer's last Rewind: `skip_length` bytes from position `skip_at` carry nothing.
  std::atomic<std::uint64_t> skip_at;
  std::atomic<std::uint64_t> skip_length;
  // The CPU the producer last published from, plus one (Publish); zero in a block an older
  // libtern made, or before the first Publish.
  std::atomic<std::uint32_t> producer_cpu;
  alignas(kLine) std::atomic<std::uint64_t> tail;
  alignas(kLine) std::atomic<std::uint32_t> data;
  std::atomic<std::uint32_t> reader_waiting;
  // The mark a consumer armed for poll() waits for (ArmForData): a Publish below it does not
  // ring. Zero in a block an older libtern made (a memfd starts zeroed): any Publish rings.
  std::atomic<std::uint64_t> wake_at;
  alignas(kLine) std::atomic<std::uint32_t> space;
  std::atomic<std::uint32_t> writer_waiting;
};

namespace {

static_assert(std::atomic<std::uint64_t>::is_always_lock_free &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "the words are shared between processes: they must be plain memory");

// Process-shared futexes (no FUTEX_PRIVATE_FLAG): the two sides are different processes.
void FutexWait(std::atomic<std::uint32_t>& word, std::uint32_t seen,
               std::chrono::nanoseconds timeout) {
  timespec wait{};
  wait.tv_sec = static_cast<time_t>(timeout.count() / 1'000'000'000);
  wait.tv_nsec = static_cast<long>(timeout.count() % 1'000'000'000);
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT, seen, &wait, nullptr,
            0);
}

void FutexWake(std::atomic<std::uint32_t>& word, int count) {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, count, nullptr, nullptr,
            0);
}

// What a `waiting` word holds: who sleeps, and so how Publish / Release wake it (a side armed
// for poll() is rung by the caller, on its doorbell; one on the futex is woken there).
constexpr std::uint32_t kSkips = 1;  // features: the consumer jumps over a Rewind

constexpr std::uint32_t kOnFutex = 1;
constexpr std::uint32_t kPolls = 2;

bool PowerOfTwo(std::uint64_t n) { return n != 0 && (n & (n - 1)) == 0; }

// The first half of the handshake (the contract): says the side sleeps, then checks again.
// False, and nothing said, when there is no need to sleep.
template <typename Ready>
bool Arm(std::atomic<std::uint32_t>& waiting, const std::atomic<std::uint32_t>& revoked,
         Ready ready) {
  if (revoked.load() || ready()) return false;
  waiting.store(kPolls);
  if (!revoked.load() && !ready()) return true;
  waiting.store(0);
  return false;
}

// Sleeps on `word` until `ready()`, `revoked`, or the deadline, with the `waiting` handshake of
// the contract. True if ready.
template <typename Ready>
bool Await(std::atomic<std::uint32_t>& word, std::atomic<std::uint32_t>& waiting,
           const std::atomic<std::uint32_t>& revoked, std::chrono::milliseconds timeout,
           Ready ready) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (revoked.load()) return false;
    if (ready()) return true;
    const std::uint32_t seen = word.load();
    waiting.store(kOnFutex);
    if (revoked.load() || ready()) {
      waiting.store(0);
      return !revoked.load() && ready();
    }
    const auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::nanoseconds::zero()) {
      waiting.store(0);
      return false;
    }
    FutexWait(word, seen, left);
    waiting.store(0);
  }
}

}  // namespace

ShmRing::ShmRing(Header* header, std::byte* data, std::size_t capacity)
    : header_(header),
      data_(data),
      capacity_(capacity),
      written_(header->head.load()),
      read_(header->tail.load()),
      taken_(read_) {}

std::optional<ShmRing> ShmRing::Create(std::span<std::byte> block, std::size_t capacity) {
  static_assert(sizeof(Header) <= kHeaderBytes);
  if (!PowerOfTwo(capacity) || capacity < 4096 || block.size() < BytesFor(capacity) ||
      reinterpret_cast<std::uintptr_t>(block.data()) % kLine != 0) {
    return std::nullopt;
  }
  Header* header = std::construct_at(reinterpret_cast<Header*>(block.data()));
  header->magic = kMagic;
  header->capacity = capacity;
  header->revoked.store(0);
  header->features.store(kSkips);
  header->head.store(0);
  header->skip_at.store(0);
  header->skip_length.store(0);
  header->tail.store(0);
  header->data.store(0);
  header->reader_waiting.store(0);
  header->wake_at.store(0);
  header->space.store(0);
  header->writer_waiting.store(0);
  return ShmRing(header, block.data() + kHeaderBytes, capacity);
}

std::optional<ShmRing> ShmRing::Attach(std::span<std::byte> block) {
  if (block.size() < kHeaderBytes || reinterpret_cast<std::uintptr_t>(block.data()) % kLine != 0) {
    return std::nullopt;
  }
  auto* header = std::launder(reinterpret_cast<Header*>(block.data()));
  const std::uint64_t capacity = header->capacity;
  if (header->magic != kMagic || !PowerOfTwo(capacity) || capacity < 4096 ||
      capacity > block.size() - kHeaderBytes) {
    return std::nullopt;
  }
  return ShmRing(header, block.data() + kHeaderBytes, capacity);
}

std::size_t ShmRing::Space() const {
  if (header_->revoked.load(std::memory_order_relaxed)) return 0;
  const std::uint64_t used = written_ - header_->tail.load(std::memory_order_acquire);
  return used >= capacity_ ? 0 : capacity_ - used;  // a tail from nowhere reads as full
}

std::size_t ShmRing::Write(std::span<const std::byte> bytes) {
  const std::size_t n = std::min(bytes.size(), Space());
  const std::size_t at = written_ & (capacity_ - 1);
  const std::size_t first = std::min(n, capacity_ - at);
  std::memcpy(data_ + at, bytes.data(), first);
  std::memcpy(data_, bytes.data() + first, n - first);
  written_ += n;
  return n;
}

bool ShmRing::Publish(std::uint64_t mark) {
  if (header_->head.load(std::memory_order_relaxed) == written_) return false;
  header_->head.store(written_);
  // A hint for the consumer (producer_cpu()); the line is the one `head` just took.
  if (const int cpu = ::sched_getcpu(); cpu >= 0) {
    header_->producer_cpu.store(static_cast<std::uint32_t>(cpu) + 1, std::memory_order_relaxed);
  }
  if (header_->reader_waiting.load() == 0) return false;
  // Armed for a later mark: it sleeps on (the bytes are there for when it looks).
  if (mark < header_->wake_at.load()) return false;
  const std::uint32_t waiting = header_->reader_waiting.exchange(0);
  if (waiting == 0) return false;
  // A consumer asleep in poll() is rung by the caller: no futex wake for nobody. One asleep on
  // the futex is woken here, and needs no bell.
  if (waiting == kPolls) return true;
  header_->data.fetch_add(1);
  FutexWake(header_->data, 1);
  return false;
}

std::optional<unsigned> ShmRing::producer_cpu() const {
  const std::uint32_t cpu = header_->producer_cpu.load(std::memory_order_relaxed);
  if (cpu == 0) return std::nullopt;
  return cpu - 1;
}

bool ShmRing::WaitForSpace(std::size_t bytes, std::chrono::milliseconds timeout) {
  const std::size_t want = std::min(bytes, capacity_);
  return Await(header_->space, header_->writer_waiting, header_->revoked, timeout,
               [&] { return Space() >= want; });
}

bool ShmRing::Rewind(std::size_t from) {
  const std::size_t at = written_ & (capacity_ - 1);
  if (at == 0 || at < from || (header_->features.load(std::memory_order_relaxed) & kSkips) == 0) {
    return false;
  }
  // Only with nothing unpublished and nothing held by the consumer: it has taken everything,
  // so the skip is the next thing it meets.
  if (header_->head.load(std::memory_order_relaxed) != written_ ||
      header_->tail.load(std::memory_order_acquire) != written_) {
    return false;
  }
  // Visible with the next Publish (its store of head orders these before it).
  header_->skip_length.store(capacity_ - at, std::memory_order_relaxed);
  header_->skip_at.store(written_, std::memory_order_relaxed);
  written_ += capacity_ - at;
  return true;
}

std::size_t ShmRing::Available() const {
  if (header_->revoked.load(std::memory_order_relaxed)) return 0;
  const std::uint64_t head = header_->head.load(std::memory_order_acquire);
  // The producer rewound here: those bytes are taken at once (given back with the next
  // Release). A length past what was published is garbage: not followed.
  if (head != taken_ && header_->skip_at.load(std::memory_order_relaxed) == taken_) {
    const std::uint64_t skip = header_->skip_length.load(std::memory_order_relaxed);
    if (skip <= head - taken_ && skip <= capacity_ - (taken_ - read_)) taken_ += skip;
  }
  const std::uint64_t published = head - taken_;
  // A head from nowhere: garbage, in bounds.
  return std::min<std::uint64_t>(published, capacity_ - (taken_ - read_));
}

std::span<const std::byte> ShmRing::Readable() const {
  const std::size_t available = Available();  // first: it follows a skip
  const std::size_t at = taken_ & (capacity_ - 1);
  return {data_ + at, std::min(available, capacity_ - at)};
}

void ShmRing::Take(std::size_t bytes) { taken_ += std::min(bytes, Available()); }

bool ShmRing::Release(std::size_t bytes) {
  std::uint64_t held = 0;
  if (!header_->revoked.load(std::memory_order_relaxed)) {
    held =
        std::min<std::uint64_t>(header_->head.load(std::memory_order_acquire) - read_, capacity_);
  }
  read_ += std::min<std::uint64_t>(bytes, held);
  if (taken_ < read_) taken_ = read_;
  header_->tail.store(read_);
  const std::uint32_t waiting = header_->writer_waiting.exchange(0);
  if (waiting == 0) return false;
  if (waiting == kPolls) return true;
  header_->space.fetch_add(1);
  FutexWake(header_->space, 1);
  return false;
}

bool ShmRing::WaitForData(std::chrono::milliseconds timeout, std::uint64_t mark) {
  header_->wake_at.store(mark);
  return Await(header_->data, header_->reader_waiting, header_->revoked, timeout,
               [&] { return Available() > 0; });
}

bool ShmRing::ArmForSpace(std::size_t bytes) {
  const std::size_t want = std::min(bytes, capacity_);
  return Arm(header_->writer_waiting, header_->revoked, [&] { return Space() >= want; });
}

bool ShmRing::ArmForData(std::uint64_t mark) {
  // Before the `waiting` word: a producer that sees that word set reads this mark after it.
  header_->wake_at.store(mark);
  return Arm(header_->reader_waiting, header_->revoked, [&] { return Available() > 0; });
}

void ShmRing::DisarmForData() { header_->reader_waiting.store(0); }

void ShmRing::DisarmForSpace() { header_->writer_waiting.store(0); }

void ShmRing::Revoke() {
  header_->revoked.store(1);
  header_->data.fetch_add(1);
  header_->space.fetch_add(1);
  FutexWake(header_->data, INT_MAX);
  FutexWake(header_->space, INT_MAX);
}

bool ShmRing::Revoked() const { return header_->revoked.load() != 0; }

}  // namespace tern::ipc
