// Per-link sequence numbers for the IPC frames agents send each other (docs/ipc.md "Sends that
// wait for their home"): a frame to a node that cannot be reached now is held and sent when its
// link is back, in order, and never runs twice at its receiver.
//
// Wire (docs/wire.md): a sequenced IpcRemote payload ends with a trailer [u64 epoch][u64 seq]
// (big-endian; FrameType::kIpcSequenced, or a blast's reassembled payload); the receiver
// acknowledges with FrameType::kIpcSequenceAck, [u64 epoch][u64 seq]: "every frame of your
// `epoch` up to `seq` has been handled and is in my journal". An epoch is one run of one sender's
// sequence to one receiver: a restarted agent, or one that gave a node up, starts a new one at
// sequence 1.
//
// SequencedOutbox (the sender's side, one per peer node) numbers each payload and keeps it until
// it is acknowledged. While the link is up a payload leaves at once; while it is down it is held
// (and a probe asks the cluster for a link at most once per kProbeEvery); when the link comes back
// every payload not acknowledged leaves again, in order (the receiver drops what it already had).
// After kGiveUpAfter without a link, with something held, the caller gives the node up: what is
// held is dropped, the operations waiting on it fail, and a new epoch starts.
//
// SequencedInbox (the receiver's side, one per peer node) decides for each sequenced payload:
// deliver it (the next one), drop it as a duplicate (already handled: acknowledge again), or
// drop it as a gap (an earlier one is missing: the sender sends it again when its link is back).
//
// Logic only, time is an argument; thread-safety: none (the agent's io thread).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tern::ipc {

struct SequenceTag {
  std::uint64_t epoch = 0;
  std::uint64_t seq = 0;
  auto operator<=>(const SequenceTag&) const = default;
};

inline constexpr std::size_t kSequenceTrailerBytes = 16;
// Appends the trailer to `payload`.
void AppendSequenceTrailer(std::string& payload, SequenceTag tag);
// The trailer of a sequenced payload, and the payload's length without it; nullopt when too
// short or when seq is 0.
std::optional<SequenceTag> ReadSequenceTrailer(std::string_view payload);
// An acknowledgement; seq 0 acknowledges nothing (a probe that only asks for a link).
std::string EncodeSequenceAck(SequenceTag tag);
std::optional<SequenceTag> ParseSequenceAck(std::string_view payload);

class SequencedOutbox {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr auto kProbeEvery = std::chrono::seconds(1);
  // Long past membership's dead_after (10 s by default): a node that is only cut off (a link
  // cut of 30 s, an agent restarting) comes back dead and then alive, and its held sends go on.
  static constexpr auto kGiveUpAfter = std::chrono::seconds(120);

  // `epoch`: this sender's first epoch to that peer (random per agent run); `max_held_bytes`:
  // beyond it Full() says so (the caller holds its jobs back, then gives the node up).
  using Payload = std::shared_ptr<const std::string>;  // with its trailer
  SequencedOutbox(std::uint64_t epoch, std::size_t max_held_bytes);
  // A restarted agent's: `unacked` (in order, one epoch) as its journal kept them, held until
  // the link is up; numbering goes on after the last.
  SequencedOutbox(std::uint64_t epoch, std::size_t max_held_bytes,
                  const std::vector<std::pair<SequenceTag, Payload>>& unacked);

  // A payload as numbered: its tag, and the payload as kept (trailer and all: what leaves and
  // what the journal keeps).
  struct Added {
    SequenceTag tag;
    Payload payload;
  };
  // Numbers `payload` and keeps it until it is acknowledged. It leaves now if up(); if not, it
  // is held, and LinkUp sends it.
  Added Add(std::string payload);
  // The link went down (or the cluster would not take a frame): hold from now on.
  void LinkDown(Clock::time_point now);
  // The link is up: every payload not acknowledged goes out again, in order.
  void LinkUp(std::vector<Payload>& now);
  // The receiver has handled everything up to `tag.seq` of `tag.epoch`; another epoch's
  // acknowledgement (from before a give-up) is ignored.
  void Acked(SequenceTag tag);
  // Whether to ask the cluster for a link now (held payloads, down, none asked for in the last
  // kProbeEvery, whether or not a link came up meanwhile); true marks it asked.
  bool ProbeDue(Clock::time_point now);
  // Down with something held for kGiveUpAfter.
  bool GiveUpDue(Clock::time_point now) const;
  // Drops what is held and starts a new epoch; returns how many payloads were dropped.
  std::size_t GiveUp();

  std::vector<std::string_view> Unacked() const;  // trailer and all, in order
  bool up() const { return up_; }
  bool full() const { return held_bytes_ > max_held_bytes_; }
  std::size_t held() const { return unacked_.size(); }
  std::size_t held_bytes() const { return held_bytes_; }
  std::uint64_t epoch() const { return epoch_; }
  std::uint64_t next_seq() const { return next_seq_; }

 private:
  struct Kept {
    std::uint64_t seq = 0;
    Payload payload;
  };
  std::uint64_t epoch_;
  std::size_t max_held_bytes_;
  std::uint64_t next_seq_ = 1;
  std::deque<Kept> unacked_;
  std::size_t held_bytes_ = 0;
  // Down until the cluster says the link is up (a fresh agent has no link yet).
  bool up_ = false;
  Clock::time_point down_since_{};
  std::optional<Clock::time_point> probed_at_;
};

class SequencedInbox {
 public:
  enum class Verdict { kDeliver, kDuplicate, kGap };
  // `known`: the last tag delivered from that peer, as the journal kept it (none: a peer not
  // heard from yet, whose first frame is taken wherever its sequence stands).
  explicit SequencedInbox(std::optional<SequenceTag> known = std::nullopt);
  // For a payload tagged `tag`: kDeliver advances the delivered tag.
  Verdict Take(SequenceTag tag);
  // The acknowledgement to send: the last tag delivered (nullopt before any).
  std::optional<SequenceTag> delivered() const { return delivered_; }

 private:
  std::optional<SequenceTag> delivered_;
};

}  // namespace tern::ipc
