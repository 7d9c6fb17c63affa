#include "tern/ipc/blast_outbox.hpp"

#include <tern/ipc/job_wire.hpp>

namespace tern::ipc {

std::optional<BlastChunk> ParseBlastChunk(std::string_view payload) {
  WireReader reader(payload);
  auto blast = reader.U64();
  auto index = reader.U32();
  auto count = reader.U32();
  if (!blast || !index || !count || *index >= *count ||
      *count > kMaxMessageBytes / BlastOutbox::kChunkBytes + 2) {
    return std::nullopt;
  }
  return BlastChunk{*blast, *index, *count, payload.substr(BlastOutbox::kChunkHeaderBytes)};
}

std::string EncodeBlastAck(std::uint64_t blast, std::uint32_t index) {
  WireWriter writer;
  writer.U64(blast);
  writer.U32(index);
  return writer.Take();
}

bool IsBlastAck(std::string_view payload) {
  return payload.size() == sizeof(std::uint64_t) + sizeof(std::uint32_t);
}

void BlastOutbox::Add(std::string payload, std::vector<Frame>& out) {
  if (waiting_.empty() && payload.size() <= kChunkBytes) {
    out.push_back({single_, std::move(payload)});
    return;
  }
  Waiting entry;
  if (payload.size() > kChunkBytes) {
    entry.blast = next_blast_++;
    entry.count = static_cast<std::uint32_t>((payload.size() + kChunkBytes - 1) / kChunkBytes);
  }
  entry.payload = std::move(payload);
  waiting_.push_back(std::move(entry));
  Drain(out);
}

void BlastOutbox::OnAck(std::vector<Frame>& out) {
  if (unacked_ > 0) --unacked_;
  Drain(out);
}

void BlastOutbox::Reset() {
  waiting_.clear();
  unacked_ = 0;
}

void BlastOutbox::Drain(std::vector<Frame>& now) {
  while (!waiting_.empty()) {
    Waiting& front = waiting_.front();
    if (front.blast == 0) {
      now.push_back({single_, std::move(front.payload)});
      waiting_.pop_front();
      continue;
    }
    while (front.next < front.count && unacked_ < kWindowChunks) {
      WireWriter chunk;
      chunk.U64(front.blast);
      chunk.U32(front.next);
      chunk.U32(front.count);
      chunk.out().append(std::string_view(front.payload)
                             .substr(std::size_t{front.next} * kChunkBytes, kChunkBytes));
      now.push_back({FrameType::kIpcBlast, chunk.Take()});
      ++front.next;
      ++unacked_;
    }
    if (front.next < front.count) break;  // the window is full
    waiting_.pop_front();
  }
}

}  // namespace tern::ipc
