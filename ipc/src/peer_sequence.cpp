#include "tern/ipc/peer_sequence.hpp"

#include <tern/ipc/job_wire.hpp>

namespace tern::ipc {

void AppendSequenceTrailer(std::string& payload, SequenceTag tag) {
  WireWriter trailer;
  trailer.U64(tag.epoch);
  trailer.U64(tag.seq);
  payload.append(trailer.out());
}

std::optional<SequenceTag> ReadSequenceTrailer(std::string_view payload) {
  if (payload.size() < kSequenceTrailerBytes) return std::nullopt;
  WireReader in(payload.substr(payload.size() - kSequenceTrailerBytes));
  auto epoch = in.U64();
  auto seq = in.U64();
  if (!seq || *seq == 0) return std::nullopt;
  return SequenceTag{*epoch, *seq};
}

std::string EncodeSequenceAck(SequenceTag tag) {
  WireWriter out;
  out.U64(tag.epoch);
  out.U64(tag.seq);
  return out.Take();
}

std::optional<SequenceTag> ParseSequenceAck(std::string_view payload) {
  if (payload.size() != kSequenceTrailerBytes) return std::nullopt;
  WireReader in(payload);
  auto epoch = in.U64();
  auto seq = in.U64();
  if (!seq) return std::nullopt;
  return SequenceTag{*epoch, *seq};  // seq 0: a probe, nothing acknowledged
}

SequencedOutbox::SequencedOutbox(std::uint64_t epoch, std::size_t max_held_bytes)
    : epoch_(epoch), max_held_bytes_(max_held_bytes) {}

SequencedOutbox::SequencedOutbox(std::uint64_t epoch, std::size_t max_held_bytes,
                                 const std::vector<std::pair<SequenceTag, Payload>>& unacked)
    : SequencedOutbox(epoch, max_held_bytes) {
  for (const auto& [tag, payload] : unacked) {
    epoch_ = tag.epoch;
    next_seq_ = tag.seq + 1;
    held_bytes_ += payload->size();
    unacked_.push_back({tag.seq, payload});
  }
}

SequencedOutbox::Added SequencedOutbox::Add(std::string payload) {
  const SequenceTag tag{epoch_, next_seq_++};
  AppendSequenceTrailer(payload, tag);
  auto kept = std::make_shared<const std::string>(std::move(payload));
  held_bytes_ += kept->size();
  unacked_.push_back({tag.seq, kept});
  return {tag, std::move(kept)};
}

void SequencedOutbox::LinkDown(Clock::time_point now) {
  if (!up_) return;
  up_ = false;
  down_since_ = now;
  // The last probe's time stays: a link up for a while is asked for again at once, one that
  // breaks as soon as it is up (a peer that still holds its link to this agent's killed
  // predecessor closes each new one) once a probe interval, not in a loop of dials.
}

void SequencedOutbox::LinkUp(std::vector<Payload>& now) {
  up_ = true;
  for (const Kept& kept : unacked_) now.push_back(kept.payload);
}

void SequencedOutbox::Acked(SequenceTag tag) {
  if (tag.epoch != epoch_) return;
  while (!unacked_.empty() && unacked_.front().seq <= tag.seq) {
    held_bytes_ -= unacked_.front().payload->size();
    unacked_.pop_front();
  }
}

std::vector<std::string_view> SequencedOutbox::Unacked() const {
  std::vector<std::string_view> frames;
  for (const Kept& kept : unacked_) frames.push_back(*kept.payload);
  return frames;
}

bool SequencedOutbox::ProbeDue(Clock::time_point now) {
  if (up_ || unacked_.empty()) return false;
  if (probed_at_ && now - *probed_at_ < kProbeEvery) return false;
  if (!probed_at_ && down_since_ == Clock::time_point{}) down_since_ = now;  // never up
  probed_at_ = now;
  return true;
}

bool SequencedOutbox::GiveUpDue(Clock::time_point now) const {
  return !up_ && !unacked_.empty() && down_since_ != Clock::time_point{} &&
         now - down_since_ >= kGiveUpAfter;
}

std::size_t SequencedOutbox::GiveUp() {
  const std::size_t dropped = unacked_.size();
  unacked_.clear();
  held_bytes_ = 0;
  // The receiver may have handled some of what was dropped: a new epoch starts at 1, which it
  // takes as a sender that starts afresh.
  ++epoch_;
  next_seq_ = 1;
  probed_at_.reset();
  down_since_ = {};
  return dropped;
}

SequencedInbox::SequencedInbox(std::optional<SequenceTag> known) : delivered_(known) {}

SequencedInbox::Verdict SequencedInbox::Take(SequenceTag tag) {
  if (!delivered_) {
    delivered_ = tag;
    return Verdict::kDeliver;
  }
  if (tag.epoch != delivered_->epoch) {
    // A sender that starts a new epoch starts it at 1; a later one means its first were lost on
    // the way (they come again with the link).
    if (tag.seq != 1) return Verdict::kGap;
    delivered_ = tag;
    return Verdict::kDeliver;
  }
  if (tag.seq <= delivered_->seq) return Verdict::kDuplicate;
  if (tag.seq != delivered_->seq + 1) return Verdict::kGap;
  delivered_ = tag;
  return Verdict::kDeliver;
}

}  // namespace tern::ipc
