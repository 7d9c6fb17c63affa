// BlastOutbox without I/O: frames in order, large payloads as a windowed blast.
#include <gtest/gtest.h>

#include <tern/ipc/blast_outbox.hpp>

namespace tern::ipc {
namespace {

constexpr std::size_t kChunk = BlastOutbox::kChunkBytes;

std::vector<Frame> Add(BlastOutbox& outbox, std::string payload) {
  std::vector<Frame> now;
  outbox.Add(std::move(payload), now);
  return now;
}

std::vector<Frame> Ack(BlastOutbox& outbox) {
  std::vector<Frame> now;
  outbox.OnAck(now);
  return now;
}

// Reassembles what a receiving agent would, acknowledging each chunk as it takes it.
struct Receiver {
  std::vector<std::string> payloads;
  std::string assembly;
  int acks_due = 0;
  void Take(const std::vector<Frame>& frames) {
    for (const Frame& frame : frames) {
      if (frame.type == FrameType::kIpcRemote) {
        payloads.push_back(frame.payload);
        continue;
      }
      ASSERT_EQ(frame.type, FrameType::kIpcBlast);
      auto chunk = ParseBlastChunk(frame.payload);
      ASSERT_TRUE(chunk);
      assembly.append(chunk->bytes);
      ++acks_due;
      if (chunk->index + 1 == chunk->count) payloads.push_back(std::exchange(assembly, {}));
    }
  }
};

std::string Pattern(std::size_t size) {
  std::string bytes(size, '\0');
  for (std::size_t i = 0; i < size; ++i)
    bytes[i] = static_cast<char>('a' + (i * 7 + i / 4096) % 26);
  return bytes;
}

TEST(BlastOutbox, APayloadThatFitsAFrameGoesStraightThrough) {
  BlastOutbox outbox;
  auto now = Add(outbox, "small");
  ASSERT_EQ(now.size(), 1u);
  EXPECT_EQ(now[0].type, FrameType::kIpcRemote);
  EXPECT_EQ(now[0].payload, "small");
  EXPECT_TRUE(outbox.idle());
}

// 100 MiB once closed the link ("send queue full"): it now goes 8 chunks at a time, the
// frames behind it wait for it, and everything arrives whole and in order.
TEST(BlastOutbox, ALargePayloadGoesUnderAWindowAndWhatFollowsWaitsForIt) {
  BlastOutbox outbox;
  Receiver receiver;
  const std::string large = Pattern(100u << 20);
  receiver.Take(Add(outbox, "before"));
  auto now = Add(outbox, large);
  EXPECT_EQ(now.size(), BlastOutbox::kWindowChunks);
  receiver.Take(now);
  EXPECT_TRUE(Add(outbox, "after").empty()) << "waits behind the blast";
  std::size_t most_on_the_way = outbox.unacked();
  while (receiver.acks_due > 0) {
    --receiver.acks_due;
    receiver.Take(Ack(outbox));
    most_on_the_way = std::max(most_on_the_way, outbox.unacked());
  }
  EXPECT_LE(most_on_the_way, BlastOutbox::kWindowChunks);
  EXPECT_TRUE(outbox.idle());
  ASSERT_EQ(receiver.payloads.size(), 3u);
  EXPECT_EQ(receiver.payloads[0], "before");
  EXPECT_TRUE(receiver.payloads[1] == large) << "the blast arrives whole";
  EXPECT_EQ(receiver.payloads[2], "after");
}

TEST(BlastOutbox, TwoBlastsInARowKeepTheirOrderAndIds) {
  BlastOutbox outbox;
  Receiver receiver;
  const std::string first = Pattern(kChunk + 1);
  const std::string second = Pattern(3 * kChunk);
  auto now = Add(outbox, first);
  auto more = Add(outbox, second);
  now.insert(now.end(), more.begin(), more.end());
  ASSERT_EQ(now.size(), 5u);  // 2 + 3 chunks, within the window
  EXPECT_NE(ParseBlastChunk(now[0].payload)->blast, ParseBlastChunk(now[2].payload)->blast);
  receiver.Take(now);
  ASSERT_EQ(receiver.payloads.size(), 2u);
  EXPECT_TRUE(receiver.payloads[0] == first);
  EXPECT_TRUE(receiver.payloads[1] == second);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(Ack(outbox).empty());
  EXPECT_TRUE(outbox.idle());
  EXPECT_TRUE(Ack(outbox).empty()) << "an extra ack is ignored";
}

TEST(BlastOutbox, AChunkHeaderTooShortIsNotAChunk) {
  EXPECT_FALSE(ParseBlastChunk("short"));
  std::string first_of_one(16, '\0');
  first_of_one[15] = 1;  // index 0 of 1
  EXPECT_TRUE(ParseBlastChunk(first_of_one));
  EXPECT_TRUE(IsBlastAck(EncodeBlastAck(7, 3)));
  EXPECT_FALSE(IsBlastAck("short"));
  std::string past_its_count(16, '\0');
  past_its_count[11] = 2;  // index 2
  past_its_count[15] = 2;  // of 2
  EXPECT_FALSE(ParseBlastChunk(past_its_count));
}

}  // namespace
}  // namespace tern::ipc
