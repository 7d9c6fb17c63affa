// The writer's end of a direct stream's connection (docs/ipc.md "Direct streams"), shared by
// PortWriter and plain sends direct (direct_send.hpp): the protocol state (StreamSender), the
// connection, and on one node the shared-memory rings the reader offered with its welcome
// (stream_rings.hpp): frames go into ring 0, acks come from ring 1, the socket carries bells
// and the end. Its owner gathers frames and decides when they go; this takes acks, waits for
// them, and writes into the rings.
//
// Thread-safety: none; one owner at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tern/ipc.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/job_wire.hpp>
#include <tern/unique_fd.hpp>
#include <vector>

#include "direct_connection.hpp"
#include "random_id.hpp"
#include "stream_rings.hpp"
#include "stream_sender.hpp"
#include "stream_wire.hpp"

namespace tern::libtern {

class StreamPath {
 public:
  StreamSender sender{NewRandomId()};
  std::optional<DirectConnection> connection;
  std::uint32_t credits = 0;
  // Channel::Impl::reattached() when the connection was made: a restarted agent does not know
  // the connections its predecessor made (it could not shut them down before a move, so the
  // job could not move); they are dropped, and made again through it.
  std::uint64_t reattached = 0;
  std::vector<std::string> spare;  // frame buffers kept for reuse
  static constexpr std::size_t kSpareFrames = 8;
  // On one node, the shared memory the reader offered with its welcome: the writer sleeps for
  // acks on ring 1's futex, which the reader's Publish wakes.
  std::unique_ptr<StreamRings> rings;
  ipc::FrameDecoder ring_acks;
  SpinWait spin;  // before sleeping for acks
  std::uint64_t acks_taken = 0;
  // With rings, the socket is read after a sleep and at every kSocketEvery-th frame only: it
  // holds nothing but bells and its end, and a receive per frame cost a running writer 13% of
  // its time at 64 B. A break still shows in the rings (the reader revokes them) or there.
  static constexpr int kSocketEvery = 16;
  // A writer asleep for acks looks at its socket this often.
  static constexpr std::chrono::milliseconds kLookEvery{10};
  int unchecked = 0;

  // The welcome's memfd (if the reader offered shared memory): mapped, and said with the first
  // bell; without it (or if that fails) frames go on the socket.
  void TakeRings(UniqueFd memfd);
  // Takes the acks that came, without waiting; false when the connection is broken. `socket`:
  // read the socket too (with rings, it is read every kSocketEvery-th call anyway).
  bool TakeAcks(bool socket = true);
  // Waits for the next ack; false when the connection is broken. `handed`: through shared
  // memory, an ack of fewer messages handed out does not wake it from a sleep (it could not go
  // on: the reader rings it once, when it can).
  bool AwaitAck(std::uint64_t handed = 0);
  // Writes all of `pieces` into ring 0, waiting for room, and publishes them; false when the
  // connection is broken.
  bool WriteToRing(std::span<const std::string_view> pieces);
  bool Publish();
  bool TakeAck(const ipc::Frame& frame);
  // The connection is over: the rings revoked (a reader still in them sees the end at once).
  void Drop();
  std::string Buffer();

 private:
  // Waits in poll() for the socket: a bell or the end.
  void Sleep();
};

// After a break: writes each message of `frame` (a DirectStream frame of `writer`'s, kept until
// the reader had it) into `train` as a numbered message to `port` through the agents (the stream
// header first, then its items), calling `added()` after each; stops when it returns false (then
// false). Large items are Borrowed from the frame's copy, which lives until `added()` returns:
// a data-sharing train must leave (or copy them) by then.
template <typename Added>
bool WriteResend(const StreamSender::Frame& frame, std::uint64_t writer, std::uint32_t port,
                 ipc::WireWriter& train, Added&& added) {
  const std::string whole = frame.bytes.Joined();  // a rare copy: the connection broke
  auto view = ParseStreamFrame(std::string_view(whole).substr(ipc::kFrameHeaderSize));
  if (!view) return true;  // written by this writer: cannot happen
  std::vector<ItemView> items;
  for (std::size_t i = 0; i < view->messages.size(); ++i) {
    items.clear();
    if (!ReadStreamItems(view->messages[i].body, items)) continue;
    train.WriteMessageHeader({.destination = port,
                              .id = view->messages[i].id,
                              .item_count = static_cast<std::uint32_t>(items.size() + 1)});
    train.U8(static_cast<std::uint8_t>(ItemKind::kBytes));
    train.Bytes(EncodeStreamHeader({writer, view->first + i}));
    for (const ItemView& item : items) {
      train.U8(static_cast<std::uint8_t>(item.kind));
      train.Borrowed(item.bytes);
    }
    if (!added()) return false;
  }
  return true;
}

}  // namespace tern::libtern
