// BlastOutbox: the IPC frames an agent sends to one other node, in order, where a payload too
// large for one frame (out-of-line data, up to kMaxMessageBytes) goes as a blast of chunks
// under a window: at most kWindowChunks chunks are on their way unacknowledged, and the
// receiving agent acknowledges each chunk it has taken (FrameType::kIpcBlastAck). So a large
// message never fills the link's send queue (which closes the link: docs/wire.md), and frames
// queued behind a blast wait for it, keeping the order the router made them in.
//
// Logic only: Add() and OnAck() append the frames to write now to `out`; the caller writes
// them, in order. With nothing waiting, a payload that fits one frame passes straight through.
//
// Thread-safety: none; one per node, used from the agent's io thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/frame_type.hpp>
#include <vector>

namespace tern::ipc {

// A blast chunk: [u64 blast id][u32 index][u32 count][bytes].
struct BlastChunk {
  std::uint64_t blast = 0;
  std::uint32_t index = 0;
  std::uint32_t count = 0;
  std::string_view bytes;
};
// nullopt for a malformed chunk: too short, an index past its count, or more chunks than the
// largest message (kMaxMessageBytes) needs.
std::optional<BlastChunk> ParseBlastChunk(std::string_view payload);
// The acknowledgement of one chunk: [u64 blast id][u32 index]; false when malformed.
std::string EncodeBlastAck(std::uint64_t blast, std::uint32_t index);
bool IsBlastAck(std::string_view payload);

class BlastOutbox {
 public:
  // `single`: the type of a payload sent as one frame (a sequenced one: kIpcSequenced).
  explicit BlastOutbox(FrameType single = FrameType::kIpcRemote) : single_(single) {}
  static constexpr std::size_t kChunkBytes = 4u << 20;
  static constexpr std::size_t kWindowChunks = 8;  // 32 MiB on the way at most
  static constexpr std::size_t kChunkHeaderBytes = 16;

  // Queues one IpcRemote payload; appends the frames that can leave now to `out`.
  void Add(std::string payload, std::vector<Frame>& out);
  // A chunk was acknowledged (one more than were sent is ignored); appends what can leave now.
  void OnAck(std::vector<Frame>& out);
  // The link went down: what waits and the blast on its way are dropped (the sender's
  // sequence keeps them and sends them again); blast ids go on, so that a receiver still
  // holding part of an old blast never takes a new one's chunks for it.
  void Reset();

  bool idle() const { return waiting_.empty() && unacked_ == 0; }
  std::size_t unacked() const { return unacked_; }

 private:
  struct Waiting {
    std::string payload;
    std::uint64_t blast = 0;  // 0: one frame
    std::uint32_t next = 0;
    std::uint32_t count = 0;
  };
  void Drain(std::vector<Frame>& out);

  FrameType single_;
  std::deque<Waiting> waiting_;
  std::size_t unacked_ = 0;
  std::uint64_t next_blast_ = 1;
};

}  // namespace tern::ipc
