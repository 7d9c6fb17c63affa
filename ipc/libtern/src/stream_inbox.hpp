// The reader's end of a direct stream connection (docs/ipc.md "Direct streams"): receives the
// writer's frames into large buffers it reuses, and hands each frame out as a view that keeps
// its buffer alive. A buffer goes back to a small pool when the last message in it is handed
// out, so a stream costs no fresh memory (no page faults) per frame, as a socket reader with one
// buffer does; a frame larger than a buffer gets a buffer of its size, received into in place.
//
// Thread-safety: none; one owner (the PortReader's thread), which also releases the views.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tern/ipc/frame.hpp>
#include <tern/unique_fd.hpp>
#include <vector>

namespace tern::libtern {

class StreamInbox {
 public:
  struct Frame {
    ipc::FrameType type{};
    std::string_view payload;                  // inside *owner
    std::shared_ptr<const std::string> owner;  // keeps the buffer (and its place in the pool)
  };

  // Takes `fd`; turns on TCP keepalive (5 s idle, 1 s interval, 3 probes) where it applies.
  explicit StreamInbox(UniqueFd fd);

  int fd() const { return fd_.get(); }
  // Receives once, without waiting: kMore when it filled its room (more may be there: take the
  // frames with Next() and receive again), kDrained when it took all there was, kBroken on end
  // of file, an error or a frame over kMaxPayload (for good).
  enum class Received { kMore, kDrained, kBroken };
  Received Receive();
  // The next complete frame, nullopt when none is.
  std::optional<Frame> Next();
  // Writes all of `bytes` (an ack); false when the connection is broken.
  bool Write(std::string_view bytes);
  bool broken() const { return broken_; }

  static constexpr std::size_t kBufferBytes = 256 * 1024;
  static constexpr std::size_t kMaxPayload = (256u << 20) + (1u << 20);

 private:
  using Pool = std::vector<std::unique_ptr<std::string>>;
  // A buffer of at least `size` bytes (from the pool when one is big enough).
  std::shared_ptr<std::string> Buffer(std::size_t size);
  std::size_t Needed() const;

  UniqueFd fd_;
  std::shared_ptr<Pool> pool_ = std::make_shared<Pool>();
  std::shared_ptr<std::string> buffer_;  // where bytes arrive
  std::size_t used_ = 0;                 // bytes received into buffer_
  std::size_t parsed_ = 0;               // where the next frame begins in buffer_
  bool broken_ = false;
};

}  // namespace tern::libtern
