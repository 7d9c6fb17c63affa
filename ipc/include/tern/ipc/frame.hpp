// Frames of the node-to-node transport: [u32 length BE][u16 type BE][payload].
//
// `length` counts the payload only. EncodeFrame/AppendFrame build frames (AppendFrame lets a
// writer batch many frames into one buffer). FrameDecoder is sans-I/O: feed it whatever bytes
// arrived, in any split, and take out the complete frames in order. A declared length above
// the limit makes the stream malformed: Feed returns an error saying so (the link then closes
// with that reason), the oversize payload is never buffered, and every later Feed fails too.
// Unknown frame types are delivered like any other: they are not the decoder's business.
//
// Example:
//   FrameDecoder decoder;
//   if (auto fed = decoder.Feed(bytes); !fed) return Close(fed.error().message);
//   while (auto frame = decoder.Next()) Handle(*frame);
//
// Thread-safety: the functions are pure; a FrameDecoder is not thread-safe (one reader owns it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <tern/ipc/frame_type.hpp>
#include <utility>

namespace tern::ipc {

inline constexpr std::size_t kFrameHeaderSize = 6;
inline constexpr std::size_t kDefaultMaxPayload = 16 * 1024 * 1024;

struct Frame {
  FrameType type;
  std::string payload;
};

// Returns the frame's wire bytes. `payload` must not exceed UINT32_MAX bytes.
std::string EncodeFrame(FrameType type, std::string_view payload);
// Appends the frame's wire bytes to `out`.
void AppendFrame(std::string& out, FrameType type, std::string_view payload);

class FrameDecoder {
 public:
  explicit FrameDecoder(std::size_t max_payload = kDefaultMaxPayload) : max_payload_(max_payload) {}

  // Buffers `bytes` and splits off every complete frame. Fails once a frame header declares
  // more than max_payload() bytes; the decoder then stays failed.
  Expected<void> Feed(std::string_view bytes);
  // The next complete frame, oldest first, or nullopt when none is complete yet.
  std::optional<Frame> Next();

  std::size_t max_payload() const { return max_payload_; }
  // Changes the limit for frames not yet decoded (a link raises it after authentication).
  void set_max_payload(std::size_t max_payload) { max_payload_ = max_payload; }
  // Bytes buffered that do not yet form a complete frame.
  std::size_t buffered() const { return buffer_.size(); }
  // Takes those bytes out (a channel handed to another reader continues from them).
  std::string TakeBuffered() { return std::exchange(buffer_, {}); }

 private:
  std::size_t max_payload_;
  std::string buffer_;
  std::deque<Frame> ready_;
  bool broken_ = false;
  std::string broken_reason_;
};

}  // namespace tern::ipc
