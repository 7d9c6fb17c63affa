#include "tern/ipc/frame.hpp"

#include <algorithm>
#include <cstring>
#include <tern/big_endian.hpp>

namespace tern::ipc {
namespace {

// How much address space a large frame's payload reserves ahead of its bytes: room for a
// 16 MiB receive_many answer, a 4 MiB blast chunk or a peer link's largest frame, so those are
// never moved while they arrive. Larger payloads (a job's message of up to 256 MiB) grow past
// it by reallocating, doubling; a header can thus pin at most this much address space, even
// under a strict overcommit policy.
constexpr std::size_t kReserveAhead = 16 * 1024 * 1024;

}  // namespace

FrameHeader ReadFrameHeader(const char* header) {
  return {LoadBigEndian<std::uint32_t>(header),
          static_cast<FrameType>(LoadBigEndian<std::uint16_t>(header + 4))};
}

void AppendFrameHeader(std::string& out, FrameType type, std::uint32_t length) {
  AppendBigEndian(out, length);
  AppendBigEndian(out, static_cast<std::uint16_t>(type));
}

void AppendFrame(std::string& out, FrameType type, std::string_view payload) {
  AppendFrameHeader(out, type, static_cast<std::uint32_t>(payload.size()));
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
  while (direct_ && !bytes.empty()) {
    const std::span<char> space = DirectSpace();
    const std::size_t take = std::min(bytes.size(), space.size());
    std::memcpy(space.data(), bytes.data(), take);
    bytes.remove_prefix(take);
    if (auto done = Commit(take); !done) return done;
  }
  if (bytes.empty()) return {};
  buffer_.append(bytes);
  return Split();
}

std::span<char> FrameDecoder::DirectSpace() {
  Direct& d = *direct_;
  if (d.filled == d.payload.size()) {
    // The payload's capacity was reserved at the declared length (up to kReserveAhead) when
    // the frame began, so growing its size within it never moves a byte: it only zero-fills
    // (touches) the next pages, as many as have arrived (doubling). Reserving takes address
    // space, not memory: pages nobody wrote are not resident, so a header still costs nothing
    // by itself. (Growing the allocation itself by doubling, as before, moved each byte again
    // and faulted in fresh pages at each step: 1 MiB messages went 3-4x slower,
    // bench/README.md.)
    d.payload.resize(std::min<std::size_t>(d.length, std::max(2 * d.filled, kDirectPayload)));
  }
  return {d.payload.data() + d.filled, d.payload.size() - d.filled};
}

std::span<char> FrameDecoder::Prepare() {
  if (direct_) return DirectSpace();
  // A fixed staging area, not buffer_'s tail: growing a string zero-fills it, which would cost
  // more than copying the few bytes a small read brings.
  if (!staging_) staging_ = std::make_unique_for_overwrite<char[]>(kReadSize);
  return {staging_.get(), kReadSize};
}

Expected<void> FrameDecoder::Commit(std::size_t received) {
  if (broken_) return Fail(broken_reason_);
  if (!direct_) {
    buffer_.append(staging_.get(), received);
    return Split();
  }
  direct_->filled += received;
  if (direct_->filled == direct_->length) {
    ready_.push_back(Frame{direct_->type, std::move(direct_->payload)});
    direct_.reset();
  }
  return {};
}

Expected<void> FrameDecoder::Broken(FrameType type, std::uint32_t length) {
  broken_ = true;
  broken_reason_ = "malformed frame: " + std::string(FrameTypeName(type)) + " (type " +
                   std::to_string(static_cast<unsigned>(type)) + ") declares " +
                   std::to_string(length) + " payload bytes, over the limit of " +
                   std::to_string(max_payload_);
  buffer_.clear();
  buffer_.shrink_to_fit();
  direct_.reset();
  return Fail(broken_reason_);
}

Expected<void> FrameDecoder::Split() {
  std::size_t offset = 0;
  while (buffer_.size() - offset >= kFrameHeaderSize) {
    const auto [length, type] = ReadFrameHeader(buffer_.data() + offset);
    if (length > max_payload_) return Broken(type, length);
    const std::size_t available = buffer_.size() - offset - kFrameHeaderSize;
    if (available < length) {
      if (length >= kDirectPayload) {
        // The rest of this frame goes straight into its payload; nothing follows it in buffer_.
        // It starts with what arrived of it; Prepare/Feed grow it as more does, within the
        // capacity reserved here (DirectSpace says why that costs no memory yet).
        Direct& d = direct_.emplace(Direct{type, length, {}, available});
        d.payload.reserve(std::min<std::size_t>(length, kReserveAhead));
        d.payload.append(buffer_, offset + kFrameHeaderSize, available);
        offset = buffer_.size();
      }
      break;
    }
    ready_.push_back(Frame{type, buffer_.substr(offset + kFrameHeaderSize, length)});
    offset += kFrameHeaderSize + length;
  }
  buffer_.erase(0, offset);
  return {};
}

std::size_t FrameDecoder::buffered() const {
  return buffer_.size() + (direct_ ? kFrameHeaderSize + direct_->filled : 0);
}

std::string FrameDecoder::TakeBuffered() {
  std::string bytes;
  if (direct_) {
    AppendFrameHeader(bytes, direct_->type, direct_->length);
    bytes.append(direct_->payload, 0, direct_->filled);
    direct_.reset();
  }
  bytes += std::exchange(buffer_, {});
  return bytes;
}

std::size_t FrameDecoder::allocated() const {
  // A direct payload counts the bytes it has touched (its size), not its reserved capacity:
  // the pages beyond were never written and are not resident.
  return buffer_.capacity() + (direct_ ? direct_->payload.size() : 0) + (staging_ ? kReadSize : 0);
}

std::optional<Frame> FrameDecoder::Next() {
  if (ready_.empty()) return std::nullopt;
  Frame frame = std::move(ready_.front());
  ready_.pop_front();
  return frame;
}

}  // namespace tern::ipc
