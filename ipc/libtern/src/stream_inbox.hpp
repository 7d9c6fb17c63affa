// The reader's end of a direct stream connection (docs/ipc.md "Direct streams"): receives the
// writer's frames into large buffers it reuses, and hands each frame out as a view that keeps
// its buffer alive. A buffer goes back to a small pool when the last message in it is handed
// out, so a stream costs no fresh memory (no page faults) per frame, as a socket reader with one
// buffer does; a frame larger than a buffer gets a buffer of its size, received into in place.
//
// On one node the connection may have shared memory under it (stream_rings.hpp, docs/ipc.md
// "Shared memory on one node"): the reader offers rings with its welcome (Welcome), and once the
// writer's first bell comes on the socket (it took them) frames come out of ring 0 instead, the
// socket carries only bells and its end of file, and acks go into ring 1 (on the socket when
// that ring is full). A frame that lies whole in ring 0 is handed out in place: its view points
// into the ring, whose bytes go back to the writer when the last view of it goes (in ring
// order: a frame still held keeps the ones after it too); one across the ring's end, or not
// yet whole (a large one being written), is copied into the buffers as from the socket.
//
// Thread-safety: none; one owner (the PortReader's thread), which also releases the views.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tern/ipc/frame.hpp>
#include <tern/unique_fd.hpp>
#include <vector>

#include "stream_rings.hpp"

namespace tern::libtern {

class StreamInbox {
 public:
  struct Frame {
    ipc::FrameType type{};
    std::string_view payload;  // inside *owner
    // Keeps the buffer (and its place in the pool), or the frame's place in ring 0.
    std::shared_ptr<const std::string> owner;
    bool shared = false;   // it came through the rings
    bool in_ring = false;  // ... and lies in ring 0: whoever keeps it long copies it
  };

  // Takes `fd`; turns on TCP keepalive (5 s idle, 1 s interval, 3 probes) where it applies.
  explicit StreamInbox(UniqueFd fd);
  ~StreamInbox();
  StreamInbox(const StreamInbox&) = delete;
  StreamInbox& operator=(const StreamInbox&) = delete;

  int fd() const { return fd_.get(); }
  // Writes the welcome (an ack of writer 0), with rings for the writer when `rings` (a Unix
  // socket: a memfd cannot cross TCP) and they can be made; false when the connection is
  // broken.
  bool Welcome(std::string_view welcome, bool rings);
  // The writer took the rings: frames come from them, and the reader sleeps only when armed.
  bool shared() const { return taken_; }
  // For a reader about to sleep in poll() on fd(): arms ring 0; false if frames are there
  // already (or it broke): do not sleep. Disarm when awake.
  bool ArmForFrames();
  // Frames (or the break) wait in the ring.
  bool HasFrames() const {
    return taken_ && (rings_->frames().Available() != 0 || rings_->Revoked());
  }
  void Disarm();
  // Part of a frame came and the rest has not: its writer is in the middle of it (a large one).
  bool InFrame() const { return buffer_ && used_ != parsed_; }
  // Takes the bells the socket holds (poll said it is readable): false on its end of file or
  // an error (the break). Only once shared().
  bool TakeBells();
  // Receives once, without waiting (from ring 0 once shared()): kMore when it filled its room (more
  // may be there: take the frames with Next() and receive again), kDrained when it took all there
  // was, kBroken on end of file, an error or a frame over kMaxPayload (for good).
  enum class Received { kMore, kDrained, kBroken };
  Received Receive();
  // The next complete frame, nullopt when none is.
  std::optional<Frame> Next();
  // Writes all of `bytes` (an ack); false when the connection is broken. `handed`: the ack's
  // messages handed out, which a writer asleep for credits compares with what it waits for
  // (ShmRing::Publish's mark: it is rung only when it can go on).
  bool Write(std::string_view bytes, std::uint64_t handed = UINT64_MAX);
  bool broken() const { return broken_; }

  static constexpr std::size_t kBufferBytes = 256 * 1024;

  // What ring 0 lends out: the frames read in place, their views' owners, and what goes back to
  // the writer when (stream_inbox.cpp).
  struct RingLoans;
  static constexpr std::size_t kMaxPayload = (256u << 20) + (1u << 20);

 private:
  using Pool = std::vector<std::unique_ptr<std::string>>;
  // A buffer of at least `size` bytes (from the pool when one is big enough).
  std::shared_ptr<std::string> Buffer(std::size_t size);
  std::size_t Needed() const;

  // The break: the rings revoked for the writer too, then nothing more.
  void Break();
  // Ring 0's frames read in place (above), and its bytes copied out; false on the break.
  bool TakeFromRing();

  UniqueFd fd_;
  std::shared_ptr<StreamRings> rings_;  // offered with the welcome (views in ring 0 keep it)
  std::shared_ptr<RingLoans> loans_;
  std::vector<Frame> in_place_;  // frames read in place, not yet returned by Next()
  std::size_t in_place_next_ = 0;
  bool taken_ = false;  // the writer's first bell came
  std::shared_ptr<Pool> pool_ = std::make_shared<Pool>();
  std::shared_ptr<std::string> buffer_;  // where bytes arrive
  std::size_t used_ = 0;                 // bytes received into buffer_
  std::size_t parsed_ = 0;               // where the next frame begins in buffer_
  bool broken_ = false;
};

}  // namespace tern::libtern
