// The writer's side of a direct stream (docs/ipc.md "Direct streams"), without I/O: sequence
// numbers, the path messages take, the credit window and the frames kept until the reader has
// them. PortWriter feeds it events (a welcome, an ack, a broken connection) and acts on what it
// answers.
//
//  - Every message written gets the next sequence number, from 1, whichever way it goes.
//  - Until a connection is first welcomed the writer is plain: its messages go through the
//    agents unchanged (a receiver that never opted in sees exactly what was sent). From the
//    first welcome on it is numbered: a message through the agents carries its header.
//  - Welcomed(credits) answers the sequence a sync through the agents must carry: the reader
//    learns from it where the writer's numbering stands.
//  - On the connection a frame whose last message is numbered `last` may go when
//    last <= handed out through + credits (the port's queue limit, per path).
//  - A frame sent is kept until an ack says the reader received it; when the connection breaks
//    the frames not received come back, oldest first, to be sent again through the agents.
//
// Thread-safety: none; one owner.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "stream_wire.hpp"

namespace tern::libtern {

class StreamSender {
 public:
  struct Frame {
    std::uint64_t first = 0;
    std::uint32_t count = 0;
    StreamFrameBytes bytes;  // the whole DirectStream frame
    std::uint64_t last() const { return first + count - 1; }
  };

  explicit StreamSender(std::uint64_t writer) : writer_(writer == 0 ? 1 : writer) {}

  std::uint64_t writer() const { return writer_; }
  // The last sequence given out (0: none yet).
  std::uint64_t last() const { return last_; }
  // A new message's sequence.
  std::uint64_t Number() { return ++last_; }
  // Gives back the sequence Number() just gave (its message never went anywhere: refused).
  void Unnumber() {
    if (last_ != 0) --last_;
  }
  bool numbered() const { return numbered_; }
  bool direct() const { return direct_; }

  // A connection's welcome: direct from now on. Returns the sequence the sync must carry.
  std::uint64_t Welcomed(std::uint32_t credits);
  // Whether a frame whose last message is `last` fits the window now.
  bool MaySend(std::uint64_t last) const { return direct_ && last <= handed_ + credits_; }
  // How many more messages fit the window after `last` (0 when it is full).
  std::uint64_t Room(std::uint64_t last) const {
    return last >= handed_ + credits_ ? 0 : handed_ + credits_ - last;
  }
  // The messages the reader must have handed out for `last` to fit the window.
  std::uint64_t HandedFor(std::uint64_t last) const {
    return last > credits_ ? last - credits_ : 0;
  }
  void Sent(Frame frame);
  // An ack of this writer: frees what the reader received (their buffers go to `freed`, for
  // reuse). False when it acknowledges what was never sent (a broken peer).
  bool Acked(const StreamAck& ack, std::vector<std::string>& freed);
  // The connection broke: the frames the reader may not have, oldest first. Not direct after.
  std::deque<Frame> Broke();

  // Messages sent on connections and received by the reader.
  std::uint64_t received_count() const { return received_count_; }
  bool all_received() const { return unreceived_.empty(); }
  // Bytes of the frames kept until the reader has them.
  std::size_t unreceived_bytes() const { return unreceived_bytes_; }
  std::size_t unreceived_frames() const { return unreceived_.size(); }

 private:
  std::uint64_t writer_;
  std::uint64_t last_ = 0;
  bool numbered_ = false;
  bool direct_ = false;
  std::uint64_t handed_ = 0;  // the reader handed out everything up to here
  std::uint32_t credits_ = 0;
  std::uint64_t received_count_ = 0;
  std::deque<Frame> unreceived_;  // sent, oldest first
  std::size_t unreceived_bytes_ = 0;
};

}  // namespace tern::libtern
