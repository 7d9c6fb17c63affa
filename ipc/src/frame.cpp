#include "tern/ipc/frame.hpp"

namespace tern::ipc {

void AppendFrame(std::string& out, FrameType type, std::string_view payload) {
  const auto length = static_cast<std::uint32_t>(payload.size());
  const auto code = static_cast<std::uint16_t>(type);
  const char header[kFrameHeaderSize] = {
      static_cast<char>(length >> 24), static_cast<char>(length >> 16),
      static_cast<char>(length >> 8),  static_cast<char>(length),
      static_cast<char>(code >> 8),    static_cast<char>(code)};
  out.append(header, kFrameHeaderSize);
  out.append(payload);
}

std::string EncodeFrame(FrameType type, std::string_view payload) {
  std::string out;
  out.reserve(kFrameHeaderSize + payload.size());
  AppendFrame(out, type, payload);
  return out;
}

Expected<void> FrameDecoder::Feed(std::string_view bytes) {
  if (broken_) return Fail(broken_reason_);
  buffer_.append(bytes);
  std::size_t offset = 0;
  while (buffer_.size() - offset >= kFrameHeaderSize) {
    const auto byte = [&](std::size_t i) {
      return static_cast<std::uint32_t>(static_cast<unsigned char>(buffer_[offset + i]));
    };
    const std::uint32_t length = byte(0) << 24 | byte(1) << 16 | byte(2) << 8 | byte(3);
    const auto type = static_cast<FrameType>(byte(4) << 8 | byte(5));
    if (length > max_payload_) {
      broken_ = true;
      broken_reason_ = "malformed frame: " + std::string(FrameTypeName(type)) + " (type " +
                       std::to_string(static_cast<unsigned>(type)) + ") declares " +
                       std::to_string(length) + " payload bytes, over the limit of " +
                       std::to_string(max_payload_);
      buffer_.clear();
      buffer_.shrink_to_fit();
      return Fail(broken_reason_);
    }
    if (buffer_.size() - offset < kFrameHeaderSize + length) break;
    ready_.push_back(Frame{type, buffer_.substr(offset + kFrameHeaderSize, length)});
    offset += kFrameHeaderSize + length;
  }
  buffer_.erase(0, offset);
  return {};
}

std::optional<Frame> FrameDecoder::Next() {
  if (ready_.empty()) return std::nullopt;
  Frame frame = std::move(ready_.front());
  ready_.pop_front();
  return frame;
}

}  // namespace tern::ipc
