#include "stream_path.hpp"

#include <poll.h>

#include <algorithm>

#include "stream_wire.hpp"

namespace tern::libtern {

void StreamPath::TakeRings(UniqueFd memfd) {
  if (!memfd.valid()) return;
  if (auto attached = StreamRings::Attach(std::move(memfd));
      attached && RingBell(connection->fd())) {
    rings = std::move(*attached);
    ring_acks = ipc::FrameDecoder();
  }
}

bool StreamPath::TakeAcks(bool socket) {
  if (!connection) return false;
  bool open = true;
  if (!rings || socket || ++unchecked >= kSocketEvery) {
    unchecked = 0;
    open = static_cast<bool>(connection->ReadAvailable());
    while (auto frame = connection->Next()) {
      if (!TakeAck(*frame)) return false;
    }
  }
  if (rings && open) {
    if (rings->Revoked()) return false;
    bool rang = false;
    for (;;) {
      const std::span<char> space = ring_acks.Prepare();
      const std::size_t n = StreamRings::CopyOut(rings->acks(), space.data(), space.size(), rang);
      if (n == 0) break;
      if (!ring_acks.Commit(n)) return false;
      while (auto frame = ring_acks.Next()) {
        if (!TakeAck(*frame)) return false;
      }
    }
  }
  return open;
}

bool StreamPath::AwaitAck(std::uint64_t handed) {
  if (!connection) return false;
  if (!rings) {
    auto frame = connection->Read(std::chrono::steady_clock::time_point::max());
    if (!frame || !*frame) return false;
    return TakeAck(**frame);
  }
  bool look = false;  // at the socket too
  for (;;) {
    const std::uint64_t before = acks_taken;
    if (!TakeAcks(look)) return false;
    if (acks_taken != before) return true;
    look = false;
    if (spin([&] { return rings->acks().Available() != 0 || rings->Revoked(); })) continue;
    // Asleep on the ack ring's futex until the reader publishes an ack of `handed` (its Publish
    // wakes it: no bell, no receive after), the rings are revoked, or kLookEvery passes, when it
    // looks at the socket for its end (the reader's job frozen for a move revokes nothing: the
    // agent's shutdown of the socket says it).
    look = !rings->acks().WaitForData(kLookEvery, handed);
  }
}

bool StreamPath::WriteToRing(std::span<const std::string_view> pieces) {
  ipc::ShmRing& ring = rings->frames();
  // Back to the ring's start while the reader keeps up, so that its used lines stay cached.
  (void)ring.Rewind(StreamRings::kHotFrames);
  for (std::string_view piece : pieces) {
    while (!piece.empty()) {
      piece.remove_prefix(ring.Write(std::as_bytes(std::span<const char>(piece))));
      if (piece.empty()) break;
      // Full: what is in goes out, then wait for the reader to make room (a quarter of the ring
      // at most, so that it goes on while the reader copies).
      if (!Publish()) return false;
      const std::size_t want = std::min(piece.size(), ring.capacity() / 4);
      for (;;) {
        if (rings->Revoked()) return false;
        if (ring.Space() >= want) break;
        if (SpinBriefly([&] { return ring.Space() >= want || rings->Revoked(); })) continue;
        if (ring.ArmForSpace(want)) {
          Sleep();
          // The socket woke it: a bell, an ack, or its end.
          if (!TakeAcks()) {
            ring.DisarmForSpace();
            return false;
          }
        }
        ring.DisarmForSpace();
      }
    }
  }
  return Publish();
}

bool StreamPath::Publish() {
  if (rings->frames().Publish()) return RingBell(connection->fd());
  return !rings->Revoked();
}

void StreamPath::Sleep() {
  pollfd socket{connection->fd(), POLLIN, 0};
  (void)::poll(&socket, 1, -1);
}

bool StreamPath::TakeAck(const ipc::Frame& frame) {
  if (frame.type == kDirectStreamBell) return true;  // look at the rings again
  if (frame.type != kDirectStreamAck) return false;
  ++acks_taken;
  auto ack = ParseStreamAck(frame.payload);
  if (!ack) return false;
  if (ack->writer == 0) return true;  // a welcome again: nothing new
  std::vector<std::string> freed;
  if (!sender.Acked(*ack, freed)) return false;  // acknowledges what was never sent
  if (ack->credits != 0) credits = ack->credits;
  for (std::string& buffer : freed) {
    if (spare.size() < kSpareFrames) spare.push_back(std::move(buffer));
  }
  return true;
}

void StreamPath::Drop() {
  if (rings) rings->Revoke();
  rings.reset();
  connection.reset();
}

std::string StreamPath::Buffer() {
  if (spare.empty()) return {};
  std::string buffer = std::move(spare.back());
  spare.pop_back();
  return buffer;
}

}  // namespace tern::libtern
