// Frames of the node-to-node transport: [u32 length BE][u16 type BE][payload].
//
// `length` counts the payload only. EncodeFrame/AppendFrame build frames (AppendFrame lets a
// writer batch many frames into one buffer). FrameDecoder is sans-I/O: feed it whatever bytes
// arrived, in any split, and take out the complete frames in order. A declared length above
// the limit makes the stream malformed: Feed returns an error saying so (the link then closes
// with that reason), the oversize payload is never buffered, and every later Feed fails too.
// Unknown frame types are delivered like any other: they are not the decoder's business.
//
// Two ways in: Feed copies bytes that were read elsewhere; Prepare/Commit let the reader
// receive straight into the decoder. With the latter, a frame of kDirectPayload bytes or more
// is received into its own payload string once its header is known, and Next() hands that
// string out as it is: a large frame is never copied in user space.
//
// Memory follows the bytes, not the headers: a header declaring a large payload reserves its
// capacity (address space, up to 16 MiB) but touches none of it; the size grows as its bytes
// arrive (doubling, from kDirectPayload) inside that capacity, never moving what came (beyond
// 16 MiB it reallocates). Untouched pages are not resident, so a peer that declares 16 MiB and
// sends nothing costs at most one staging area and a kDirectPayload start of memory.
//
// Example:
//   FrameDecoder decoder;
//   auto space = decoder.Prepare();
//   ssize_t got = ::recv(fd, space.data(), space.size(), 0);
//   if (auto fed = decoder.Commit(got); !fed) return Close(fed.error().message);
//   while (auto frame = decoder.Next()) Handle(*frame);
//
// Thread-safety: the functions are pure; a FrameDecoder is not thread-safe (one reader owns it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <tern/ipc/frame_type.hpp>
#include <utility>

namespace tern::ipc {

inline constexpr std::size_t kFrameHeaderSize = 6;

struct FrameHeader {
  std::uint32_t length = 0;
  FrameType type{};
};
// The header in the kFrameHeaderSize bytes at `header`.
FrameHeader ReadFrameHeader(const char* header);
inline constexpr std::size_t kDefaultMaxPayload = 16 * 1024 * 1024;
// Payloads this large are received in place (Prepare/Commit) rather than split off a buffer.
inline constexpr std::size_t kDirectPayload = 64 * 1024;

struct Frame {
  FrameType type;
  std::string payload;
};

// Returns the frame's wire bytes. `payload` must not exceed UINT32_MAX bytes.
std::string EncodeFrame(FrameType type, std::string_view payload);
// Appends the frame's wire bytes to `out`.
void AppendFrame(std::string& out, FrameType type, std::string_view payload);
// Appends only the header of a frame whose `length` payload bytes the caller writes after it.
void AppendFrameHeader(std::string& out, FrameType type, std::uint32_t length);

class FrameDecoder {
 public:
  explicit FrameDecoder(std::size_t max_payload = kDefaultMaxPayload) : max_payload_(max_payload) {}

  // Buffers `bytes` and splits off every complete frame. Fails once a frame header declares
  // more than max_payload() bytes; the decoder then stays failed.
  Expected<void> Feed(std::string_view bytes);
  // Space to receive the next bytes into (never empty), valid until the next call; then
  // Commit(n) with how many arrived there, which splits off the complete frames as Feed does.
  std::span<char> Prepare();
  Expected<void> Commit(std::size_t received);
  // The next complete frame, oldest first, or nullopt when none is complete yet.
  std::optional<Frame> Next();

  std::size_t max_payload() const { return max_payload_; }
  // Changes the limit for frames not yet decoded (a link raises it after authentication).
  void set_max_payload(std::size_t max_payload) { max_payload_ = max_payload; }
  // Bytes buffered that do not yet form a complete frame.
  std::size_t buffered() const;
  // Takes those bytes out (a channel handed to another reader continues from them).
  std::string TakeBuffered();
  // Bytes of memory this decoder holds now (its buffers' capacities; for a large frame being
  // received, the part of its payload touched so far, not the address space reserved for the
  // rest), not counting frames ready for Next(): what a peer's partial frame costs.
  std::size_t allocated() const;

 private:
  // Splits every complete frame off buffer_, and starts a direct frame for a large one.
  Expected<void> Split();
  Expected<void> Broken(FrameType type, std::uint32_t length);
  // Room for the direct frame's next bytes, grown as needed (never empty).
  std::span<char> DirectSpace();

  static constexpr std::size_t kReadSize = 64 * 1024;  // the staging area

  std::size_t max_payload_;
  std::string buffer_;
  std::unique_ptr<char[]> staging_;  // where Prepare lets small reads land
  // A large frame being received in place: its type and payload, and how much has arrived.
  struct Direct {
    FrameType type;
    std::uint32_t length = 0;  // declared
    std::string payload;       // capacity: length; size grown as bytes arrive; its first
                               // `filled` bytes are real
    std::size_t filled = 0;
  };
  std::optional<Direct> direct_;
  std::deque<Frame> ready_;
  bool broken_ = false;
  std::string broken_reason_;
};

}  // namespace tern::ipc
