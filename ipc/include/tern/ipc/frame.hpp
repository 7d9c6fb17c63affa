// Frames of the node-to-node transport: [u32 length BE][u16 type BE][payload].
//
// FrameDecoder is sans-I/O: feed it whatever bytes arrived, take out the complete frames. A
// declared length above the limit is a malformed stream (Feed returns the error; the link is
// then closed) — it is never allocated. Unknown types are not the decoder's business.
//
// Thread-safety: FrameDecoder is not thread-safe; the functions are pure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>

#include <tern/expected.hpp>
#include "tern/ipc/frame_type.hpp"

namespace tern::ipc {

inline constexpr std::size_t kFrameHeaderSize = 6;
inline constexpr std::size_t kDefaultMaxPayload = 16 * 1024 * 1024;

struct Frame {
  FrameType type;
  std::string payload;
};

std::string EncodeFrame(FrameType type, std::string_view payload);
void AppendFrame(std::string& out, FrameType type, std::string_view payload);

class FrameDecoder {
 public:
  explicit FrameDecoder(std::size_t max_payload = kDefaultMaxPayload) : max_payload_(max_payload) {}

  Expected<void> Feed(std::string_view bytes);
  std::optional<Frame> Next();

 private:
  std::size_t max_payload_;
  std::string buffer_;
  std::deque<Frame> ready_;
  bool broken_ = false;
};

}  // namespace tern::ipc
