// StreamRings: the shared memory under a same-node direct stream (docs/ipc.md "Shared memory on
// one node"): one memfd holding two ShmRings, ring 0 for the writer's DirectStream frames and
// ring 1 for the reader's DirectStreamAcks, each carrying exactly the bytes the socket would.
// The reader makes it when it accepts a Unix socket connection and passes the memfd with its
// welcome (SCM_RIGHTS); the writer maps it when it reads the welcome and says so with its first
// bell. The socket stays: it is the doorbell (a side that sleeps in poll() arms its ring, and
// the other side, whose Publish or Release then returns true, sends one kDirectStreamBell frame)
// and the break (end of file: revoked, a move, the peer gone). A side that sees the break
// revokes both rings, so that the other side, busy in them, sees it at its next look.
//
// Both sides close the memfd as soon as it is mapped: a job holds only the mapping (which CRIU
// dumps with the job and restores as a copy of its own, which nothing else writes; the job's
// socket comes back closed, so libtern takes it for a break and unmaps the copy).
//
// Thread-safety: none; one owner (the PortWriter's or the PortReader's thread).
#pragma once

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string_view>
#include <tern/expected.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/shm_ring.hpp>
#include <tern/unique_fd.hpp>
#include <utility>

namespace tern::libtern {

// Frame type of a doorbell on the socket of a connection that has rings: no payload; "look at
// the rings". The writer's first one also says it took them. libtern's own, as 42 and 43.
inline constexpr auto kDirectStreamBell = static_cast<ipc::FrameType>(44);

class StreamRings {
 public:
  // Ring 0, for the DirectStream frames. Its writer keeps its used part small (Rewind at
  // kHotFrames, when the reader holds nothing): 4 MiB were walked every 52 frames of 1000
  // messages of 64 B, each store meeting a line long gone from the cache (the writer's copy
  // into the ring was 13% of its time); a small ring would do the same but cut large messages
  // into pieces (1 MiB at 0.6x a Unix socket's MB/s with a 256 KiB ring: bench/README.md,
  // eleventh session).
  static constexpr std::size_t kFrameRing = 4u << 20;
  static constexpr std::size_t kHotFrames = 256u << 10;
  static constexpr std::size_t kAckRing = 256u << 10;  // ring 1: DirectStreamAcks

  // The reader's side: a fresh memfd with both rings; the fd is to be passed to the writer
  // (then closed).
  static Expected<std::pair<std::unique_ptr<StreamRings>, UniqueFd>> Create();
  // The writer's side, over the memfd the reader passed (taken and closed here).
  static Expected<std::unique_ptr<StreamRings>> Attach(UniqueFd memfd);

  ~StreamRings();
  StreamRings(const StreamRings&) = delete;
  StreamRings& operator=(const StreamRings&) = delete;

  ipc::ShmRing& frames() { return frames_; }
  ipc::ShmRing& acks() { return acks_; }
  // The break: both rings give nothing more, on both sides.
  void Revoke();
  bool Revoked() const { return frames_.Revoked() || acks_.Revoked(); }

  // Copies all of `bytes` into `ring` if they fit (then true; not yet published), else writes
  // nothing and returns false.
  static bool WriteWhole(ipc::ShmRing& ring, std::string_view bytes);
  // Copies up to `room` published bytes out of `ring` into `to` (across the wrap) and releases
  // them; returns how many. `rang`: the producer was asleep (ring its bell).
  static std::size_t CopyOut(ipc::ShmRing& ring, char* to, std::size_t room, bool& rang);

 private:
  StreamRings(void* block, std::size_t size, ipc::ShmRing frames, ipc::ShmRing acks);

  void* block_;
  std::size_t size_;
  ipc::ShmRing frames_;
  ipc::ShmRing acks_;
};

// Before a side arms its ring and sleeps in poll(): a short wait for `ready()`. A stream's two
// sides mostly wait on each other for microseconds (a writer for credits the reader is about
// to give, a reader for the frame being written); a sleep and a bell cost a system call and a
// context switch each way, more than that.
//
// The wait adapts, per side: one that ended in a sleep halves the next (down to none), one that
// ended ready doubles it again (up to kLongest). A side whose peer is not running (a loaded
// machine, where the peer waits for a CPU; or a peer with nothing to send) then stops burning
// its CPU share on waits that end in a sleep anyway, which a fixed 50 µs of sched_yield did
// (bench/README.md, 2026-12-06 ninth session: most of both sides' CPU under load). It spins
// with the CPU's pause, no system call, and yields only past kYieldAfter, so that another task
// on this CPU (the peer, on a machine with few) may run. A side that stopped waiting tries
// again with the shortest wait every kRetryEvery sleeps.
//
// Thread-safety: none; one per side.
class SpinWait {
 public:
  static constexpr std::chrono::nanoseconds kLongest = std::chrono::microseconds(50);
  static constexpr std::chrono::nanoseconds kShortest = std::chrono::microseconds(2);
  static constexpr std::chrono::nanoseconds kYieldAfter = std::chrono::microseconds(10);
  static constexpr int kRetryEvery = 8;

  // True if ready (within the wait or at its end).
  template <typename Ready>
  bool operator()(Ready ready) {
    if (budget_ == std::chrono::nanoseconds::zero()) {
      if (++idle_ < kRetryEvery) return ready();
      idle_ = 0;
      budget_ = kShortest;
    }
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      for (int i = 0; i < 32; ++i) {
        if (ready()) {
          budget_ = std::min(kLongest, budget_ * 2);
          return true;
        }
        Pause();
      }
      const auto waited = std::chrono::steady_clock::now() - start;
      if (waited >= budget_) break;
      if (waited >= kYieldAfter) ::sched_yield();
    }
    budget_ /= 2;
    if (budget_ < kShortest) budget_ = std::chrono::nanoseconds::zero();
    return ready();
  }

  std::chrono::nanoseconds budget() const { return budget_; }

 private:
  static void Pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

  std::chrono::nanoseconds budget_ = kLongest;
  int idle_ = 0;
};

// The writer's wait for room in ring 0 (large frames: a frame of 64 B messages never fills
// it), and the reader's for the rest of a frame begun: 50 µs of sched_yield turns, then the
// caller arms and sleeps. Not SpinWait: a room wait
// of a 1 MiB stream outlasts any spin (the reader copies the frame out), so SpinWait soon stops
// waiting, and a writer armed at once is woken by each of the reader's releases, long before
// the room it wants is there: 1 MiB at 0.7x main's MB/s (bench/README.md, ninth session).
// True if ready.
template <typename Ready>
bool SpinBriefly(Ready ready) {
  constexpr auto kSpin = std::chrono::microseconds(50);
  const auto until = std::chrono::steady_clock::now() + kSpin;
  do {
    if (ready()) return true;
    ::sched_yield();
  } while (std::chrono::steady_clock::now() < until);
  return ready();
}

// How many messages a writer puts in a frame through shared memory, for a window of `credits`:
// half the window while its reader runs on another CPU than the writer (the reader's last ack
// was published from `reader_cpu`, the writer is on `writer_cpu`), so that the writer fills
// the next frame while the reader hands out the last one; the whole window otherwise (the two
// take turns on one CPU, where each frame costs a turn of both: or the reader has not said).
// docs/ipc.md "Frames sized by where the reader runs".
inline std::size_t RingFrameMessages(std::uint32_t credits, std::optional<unsigned> reader_cpu,
                                     int writer_cpu) {
  const bool apart =
      reader_cpu && writer_cpu >= 0 && *reader_cpu != static_cast<unsigned>(writer_cpu);
  return std::max<std::size_t>(1, apart ? credits / 2 : credits);
}

// Writes `bytes` to the Unix socket `fd` with `pass` attached (SCM_RIGHTS); 0 or the errno.
int SendWithFd(int fd, std::string_view bytes, int pass);
// One doorbell frame on `fd`; false when the connection is broken.
bool RingBell(int fd);

}  // namespace tern::libtern
