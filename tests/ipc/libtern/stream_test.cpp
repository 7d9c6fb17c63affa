// Direct streams (docs/ipc.md "Direct streams"): the protocol classes without I/O
// (StreamReorder, StreamSender, the wire), then PortWriter -> PortReader over the fake agent's
// connections, broken again and again, and a plain receiver that never opted in.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <tern/ipc.hpp>
#include <tern/ipc/frame.hpp>
#include <thread>
#include <vector>

#include "direct_connection.hpp"
#include "fake_agent.hpp"
#include "port_fixture.hpp"
#include "stream_reorder.hpp"
#include "stream_rings.hpp"
#include "stream_sender.hpp"
#include "stream_wire.hpp"

namespace tern {
namespace {

using libtern::StreamAck;
using libtern::StreamReorder;
using libtern::StreamSender;
using testing::Eventually;

// What a StreamReorder<int> released, in order.
struct Released {
  std::vector<int> values;
  auto sink() {
    return [this](int value) { values.push_back(value); };
  }
};

TEST(StreamReorder, AWritersMessagesFromAConnectionWaitUntilTheAgentsSayWhereItStands) {
  StreamReorder<int> table;
  Released out;
  table.Offer(7, 11, /*through_agents=*/false, 11, out.sink());
  table.Offer(7, 12, false, 12, out.sink());
  EXPECT_TRUE(out.values.empty()) << "unknown writer: nothing may overtake its agent traffic";
  EXPECT_EQ(table.waiting(), 2u);
  table.Sync(7, 10, out.sink());  // 1..10 went through the agents before the sync
  EXPECT_EQ(out.values, (std::vector<int>{11, 12}));
  EXPECT_EQ(table.progress(7)->received, 12u);
}

TEST(StreamReorder, ANumberedMessageThroughTheAgentsStartsAnUnknownWriter) {
  StreamReorder<int> table;
  Released out;
  table.Offer(3, 6, false, 6, out.sink());
  table.Offer(3, 5, true, 5, out.sink());
  EXPECT_EQ(out.values, (std::vector<int>{5, 6}));
}

TEST(StreamReorder, DuplicatesAreDroppedAndGapsWaitForTheResend) {
  StreamReorder<int> table;
  Released out;
  table.Sync(1, 0, out.sink());
  for (int i : {1, 2, 5, 6}) table.Offer(1, i, false, i, out.sink());
  EXPECT_EQ(out.values, (std::vector<int>{1, 2}));
  EXPECT_EQ(table.progress(1)->received, 2u);
  // The connection broke: 3..6 come again through the agents; 5 and 6 are already here.
  for (int i : {2, 3, 4, 5, 6}) table.Offer(1, i, true, i, out.sink());
  EXPECT_EQ(out.values, (std::vector<int>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(table.dropped(), 3u);
  EXPECT_EQ(table.waiting(), 0u);
  // A later sync for what is already in changes nothing.
  table.Sync(1, 6, out.sink());
  table.Offer(1, 7, false, 7, out.sink());
  EXPECT_EQ(out.values.back(), 7);
}

// A whole frame goes at once only when it is exactly what comes next; otherwise its messages
// are offered one by one (and a frame from before a resend is refused as such).
TEST(StreamReorder, AFrameIsTakenWholeOnlyWhenItIsExactlyNext) {
  StreamReorder<int> table;
  Released out;
  EXPECT_FALSE(table.TakeRun(7, 1, 10)) << "unknown writer";
  table.Sync(7, 0, out.sink());
  EXPECT_FALSE(table.TakeRun(7, 2, 10)) << "a gap before it";
  EXPECT_TRUE(table.TakeRun(7, 1, 10));
  EXPECT_EQ(table.progress(7)->received, 10u);
  EXPECT_FALSE(table.TakeRun(7, 5, 10)) << "overlaps what was released";
  table.Offer(7, 12, /*through_agents=*/false, 12, out.sink());
  EXPECT_FALSE(table.TakeRun(7, 11, 1)) << "something waits: one by one";
  table.Offer(7, 11, false, 11, out.sink());
  EXPECT_EQ(out.values, (std::vector<int>{11, 12}));
  EXPECT_TRUE(table.TakeRun(7, 13, 3));
  table.Offer(7, 15, true, 15, out.sink());
  EXPECT_EQ(table.dropped(), 1u) << "a resend of a message taken in a run is a duplicate";
}

TEST(StreamReorder, WritersAreIndependentAndHandedOutIsTracked) {
  StreamReorder<int> table;
  Released out;
  table.Sync(1, 0, out.sink());
  table.Sync(2, 100, out.sink());
  table.Offer(2, 101, false, 201, out.sink());
  table.Offer(1, 2, false, 2, out.sink());
  table.Offer(1, 1, false, 1, out.sink());
  EXPECT_EQ(out.values, (std::vector<int>{201, 1, 2}));
  table.HandedOut(1, 1);
  EXPECT_EQ(table.progress(1)->handed, 1u);
  EXPECT_EQ(table.progress(2)->handed, 100u) << "what came before the sync was handed out";
  EXPECT_FALSE(table.progress(3));
}

TEST(StreamSender, PlainUntilWelcomedThenNumberedAndHeldByCredits) {
  StreamSender sender(42);
  EXPECT_EQ(sender.Number(), 1u);
  EXPECT_EQ(sender.Number(), 2u);
  EXPECT_FALSE(sender.numbered());
  EXPECT_FALSE(sender.MaySend(3));
  EXPECT_EQ(sender.Welcomed(4), 2u) << "the sync carries the last sequence given out";
  EXPECT_TRUE(sender.numbered());
  EXPECT_TRUE(sender.MaySend(6));
  EXPECT_FALSE(sender.MaySend(7)) << "at most 4 ahead of what the reader handed out";
  for (int i = 0; i < 4; ++i) sender.Number();
  sender.Sent({3, 2, {"frame 3-4", {}}});
  sender.Sent({5, 2, {"frame 5-6", {}}});
  std::vector<std::string> freed;
  ASSERT_TRUE(sender.Acked({42, 4, 3, 4}, freed));
  EXPECT_EQ(freed, std::vector<std::string>{"frame 3-4"});
  EXPECT_EQ(sender.received_count(), 2u);
  EXPECT_TRUE(sender.MaySend(7));
  EXPECT_FALSE(sender.MaySend(8));
  EXPECT_FALSE(sender.Acked({42, 9, 3, 4}, freed)) << "acknowledges what was never sent";
  EXPECT_FALSE(sender.Acked({41, 4, 3, 4}, freed)) << "another writer's ack";
}

TEST(StreamSender, ABrokenConnectionGivesBackWhatTheReaderMayNotHaveInOrder) {
  StreamSender sender(1);
  sender.Welcomed(100);
  for (int i = 0; i < 6; ++i) sender.Number();
  sender.Sent({1, 2, {"a", {}}});
  sender.Sent({3, 2, {"b", {}}});
  sender.Sent({5, 2, {"c", {}}});
  std::vector<std::string> freed;
  ASSERT_TRUE(sender.Acked({1, 3, 0, 100}, freed));  // 3 received, 4 not: "b" stays
  auto back = sender.Broke();
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].bytes.out, "b");
  EXPECT_EQ(back[1].bytes.out, "c");
  EXPECT_FALSE(sender.direct());
  EXPECT_TRUE(sender.numbered()) << "numbered for good: the reader orders by sequence now";
  EXPECT_TRUE(sender.all_received());
  EXPECT_EQ(sender.Welcomed(10), 6u);
}

TEST(StreamWire, FramesHeadersAndAcksRoundTrip) {
  libtern::StreamFrame frame;
  frame.Start({}, 9, 17);
  frame.Add(5, "hello");
  frame.Add(6, std::vector<Item>{Item::Bytes("a"), Item::OutOfLine("bb")});
  const std::string bytes = frame.Finish().Joined();
  ipc::FrameDecoder decoder;
  ASSERT_TRUE(decoder.Feed(bytes));
  auto whole = decoder.Next();
  ASSERT_TRUE(whole);
  EXPECT_EQ(whole->type, libtern::kDirectStream);
  auto view = libtern::ParseStreamFrame(whole->payload);
  ASSERT_TRUE(view);
  // The same frame as a run, its messages taken one at a time.
  auto run = libtern::ParseStreamRun(whole->payload);
  ASSERT_TRUE(run);
  EXPECT_EQ(run->writer, 9u);
  EXPECT_EQ(run->first, 17u);
  EXPECT_EQ(run->count, 2u);
  std::uint32_t id = 0;
  std::vector<ItemView> taken;
  ASSERT_TRUE(libtern::TakeStreamMessage(run->messages, id, taken));
  EXPECT_EQ(id, 5u);
  ASSERT_EQ(taken.size(), 1u);
  EXPECT_EQ(taken[0].bytes, "hello");
  taken.clear();
  ASSERT_TRUE(libtern::TakeStreamMessage(run->messages, id, taken));
  EXPECT_EQ(id, 6u);
  ASSERT_EQ(taken.size(), 2u);
  EXPECT_EQ(taken[1].kind, ItemKind::kOutOfLine);
  EXPECT_TRUE(run->messages.empty());
  EXPECT_FALSE(libtern::ParseStreamRun(whole->payload + "x")) << "trailing bytes";
  EXPECT_FALSE(libtern::ParseStreamRun(whole->payload.substr(0, whole->payload.size() - 1)));
  EXPECT_EQ(view->writer, 9u);
  EXPECT_EQ(view->first, 17u);
  ASSERT_EQ(view->messages.size(), 2u);
  std::vector<ItemView> items;
  ASSERT_TRUE(libtern::ReadStreamItems(view->messages[1].body, items));
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[1].kind, ItemKind::kOutOfLine);
  EXPECT_EQ(items[1].bytes, "bb");
  EXPECT_FALSE(libtern::ParseStreamFrame(whole->payload + "x")) << "trailing bytes";

  const std::string header = libtern::EncodeStreamHeader({3, 4});
  auto decoded = libtern::DecodeStreamHeader(ItemKind::kBytes, header);
  ASSERT_TRUE(decoded);
  EXPECT_EQ(decoded->sequence, 4u);
  EXPECT_FALSE(libtern::DecodeStreamHeader(ItemKind::kOutOfLine, header));
  EXPECT_FALSE(libtern::DecodeStreamHeader(ItemKind::kBytes, std::string(24, 'x')));

  std::string ack;
  libtern::AppendStreamAck(ack, {1, 2, 3, 4});
  auto parsed = libtern::ParseStreamAck(std::string_view(ack).substr(ipc::kFrameHeaderSize));
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->credits, 4u);
}

// The shared memory of a same-node stream: the reader's rings, passed as a memfd on the socket
// with the welcome, are the writer's after Attach (both directions), and either side's Revoke
// is the other's end.
// The writer's and reader's per-message paths (AddOne, TakeStreamMessageFast) are shortcuts of
// the general ones: the same bytes on the wire, the same messages read back.
TEST(StreamWire, TheOneItemShortcutsWriteAndReadWhatTheGeneralPathsDo) {
  libtern::StreamFrame general;
  general.Start({}, 9, 17);
  general.Add(5, std::vector<Item>{Item::Bytes("hello")});
  general.Add(6, std::vector<Item>{Item::OutOfLine(std::string(300, 'x'))});
  general.Add(7, std::vector<Item>{Item::Bytes("a"), Item::OutOfLine("bb")});
  general.Add(8, std::vector<Item>{Item::Bytes("")});
  libtern::StreamFrame shortcut;
  shortcut.Start({}, 9, 17);
  shortcut.AddOne(5, ItemKind::kBytes, "hello");
  shortcut.AddOne(6, ItemKind::kOutOfLine, std::string(300, 'x'));
  shortcut.Add(7, std::vector<Item>{Item::Bytes("a"), Item::OutOfLine("bb")});
  shortcut.AddOne(8, ItemKind::kBytes, "");
  EXPECT_EQ(shortcut.size(), general.size());
  const std::string bytes = shortcut.Finish().Joined();
  ASSERT_EQ(bytes, general.Finish().Joined());

  auto run = libtern::ParseStreamRun(std::string_view(bytes).substr(ipc::kFrameHeaderSize));
  ASSERT_TRUE(run);
  std::vector<std::pair<std::uint32_t, std::vector<std::string>>> read;
  std::string_view messages = run->messages;
  for (std::uint32_t i = 0; i < run->count; ++i) {
    std::uint32_t id = 0;
    std::vector<ItemView> items;
    ASSERT_TRUE(libtern::TakeStreamMessageFast(messages, id, items));
    auto& message = read.emplace_back(id, std::vector<std::string>{});
    for (const ItemView& item : items) {
      message.second.push_back(std::to_string(static_cast<int>(item.kind)) + ":" +
                               std::string(item.bytes));
    }
  }
  EXPECT_TRUE(messages.empty());
  const std::vector<std::pair<std::uint32_t, std::vector<std::string>>> want{
      {5, {"1:hello"}}, {6, {"3:" + std::string(300, 'x')}}, {7, {"1:a", "3:bb"}}, {8, {"1:"}}};
  EXPECT_EQ(read, want);
  // A length past the end is not read as a message.
  std::string_view cut = std::string_view(run->messages).substr(0, 13 + 2);
  std::uint32_t id = 0;
  std::vector<ItemView> items;
  EXPECT_FALSE(libtern::TakeStreamMessageFast(cut, id, items));

  // ParseStreamRun's inline check of one-item messages refuses what its general loop refuses:
  // a length past the end, an item that is not data, a count the messages do not make.
  const std::string payload(std::string_view(bytes).substr(ipc::kFrameHeaderSize));
  const std::size_t second = libtern::kStreamFrameFixed + libtern::kOneItemHead + 5;
  std::string long_length = payload;
  long_length[second + 9] = '\x7f';
  EXPECT_FALSE(libtern::ParseStreamRun(long_length));
  std::string right = payload;
  right[second + 8] = static_cast<char>(ItemKind::kPort);
  EXPECT_FALSE(libtern::ParseStreamRun(right));
  std::string fewer = payload;
  fewer[libtern::kStreamFrameFixed - 1] = 3;
  EXPECT_FALSE(libtern::ParseStreamRun(fewer)) << "a message past the count";
  fewer[libtern::kStreamFrameFixed - 1] = 5;
  EXPECT_FALSE(libtern::ParseStreamRun(fewer)) << "a count past the messages";
  ASSERT_TRUE(libtern::ParseStreamRun(payload));
}

TEST(StreamRings, TheMemfdPassedWithTheWelcomeMapsTheSameRingsOnTheOtherSide) {
  int ends[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends), 0);
  UniqueFd reader_end(ends[0]);
  libtern::DirectConnection writer_end{UniqueFd(ends[1])};
  auto made = libtern::StreamRings::Create();
  ASSERT_TRUE(made) << made.error().message;
  auto& [reader, memfd] = *made;
  std::string welcome;
  libtern::AppendStreamAck(welcome, {0, 0, 0, 64});
  ASSERT_EQ(libtern::SendWithFd(reader_end.get(), welcome, memfd.get()), 0);
  memfd.Reset();
  ASSERT_TRUE(writer_end.ReadAvailable());
  auto frame = writer_end.Next();
  ASSERT_TRUE(frame);
  EXPECT_EQ(frame->type, libtern::kDirectStreamAck);
  UniqueFd passed = writer_end.TakePassedFd();
  ASSERT_TRUE(passed.valid()) << "the memfd came with the welcome";
  EXPECT_FALSE(writer_end.TakePassedFd().valid()) << "taken once";
  auto writer = libtern::StreamRings::Attach(std::move(passed));
  ASSERT_TRUE(writer) << writer.error().message;

  // Frames one way, acks the other, across the ring's end.
  const std::string big(libtern::StreamRings::kFrameRing - 100, 'f');
  ASSERT_TRUE(libtern::StreamRings::WriteWhole((*writer)->frames(), big));
  EXPECT_FALSE(libtern::StreamRings::WriteWhole((*writer)->frames(), std::string(200, 'x')))
      << "does not fit: nothing written";
  EXPECT_TRUE(reader->frames().ArmForData()) << "nothing is visible before Publish";
  EXPECT_TRUE((*writer)->frames().Publish()) << "the reader was armed: ring its bell";
  EXPECT_FALSE(reader->frames().ArmForData()) << "data there: no sleep";
  std::string out(big.size(), '\0');
  bool rang = false;
  EXPECT_EQ(libtern::StreamRings::CopyOut(reader->frames(), out.data(), out.size(), rang),
            big.size());
  EXPECT_EQ(out, big);
  EXPECT_FALSE(rang);
  const std::string wraps = std::string(150, 'a') + std::string(150, 'b');
  ASSERT_TRUE(libtern::StreamRings::WriteWhole((*writer)->frames(), wraps));
  EXPECT_FALSE((*writer)->frames().Publish());
  std::string back(400, '\0');
  EXPECT_EQ(libtern::StreamRings::CopyOut(reader->frames(), back.data(), back.size(), rang), 300u);
  EXPECT_EQ(back.substr(0, 300), wraps) << "copied across the wrap";
  ASSERT_TRUE(libtern::StreamRings::WriteWhole(reader->acks(), "ack"));
  EXPECT_FALSE(reader->acks().Publish());
  EXPECT_EQ((*writer)->acks().Available(), 3u);

  reader->Revoke();
  EXPECT_TRUE((*writer)->Revoked());
  EXPECT_FALSE(libtern::StreamRings::WriteWhole((*writer)->frames(), "x"));
}

// Frames through shared memory are half the window only while the reader runs on another CPU
// than the writer (both at once: the writer fills one while the reader hands out the last); the
// whole window while they share one CPU or the reader has not said where it runs.
TEST(StreamRings, FramesAreHalfTheWindowOnlyWhileTheReaderRunsOnAnotherCpu) {
  EXPECT_EQ(libtern::RingFrameMessages(1000, std::nullopt, 0), 1000u) << "an older reader";
  EXPECT_EQ(libtern::RingFrameMessages(1000, 0u, 0), 1000u) << "one CPU: they take turns";
  EXPECT_EQ(libtern::RingFrameMessages(1000, 1u, 0), 500u) << "two CPUs at once";
  EXPECT_EQ(libtern::RingFrameMessages(1000, 1u, -1), 1000u) << "the writer's CPU unknown";
  EXPECT_EQ(libtern::RingFrameMessages(1, 1u, 0), 1u) << "never an empty frame";
}

// A memfd that is not the rings' layout (another size, unsealed) is refused.
TEST(StreamRings, AMemfdOfAnotherShapeIsRefused) {
  UniqueFd other(::memfd_create("not-rings", MFD_CLOEXEC));
  ASSERT_TRUE(other.valid());
  ASSERT_EQ(::ftruncate(other.get(), 1 << 20), 0);
  EXPECT_FALSE(libtern::StreamRings::Attach(std::move(other)));
}

// The fake agent fails a train at once on a full queue (it does not model kWait).
using StreamFixture = testing::LargeQueuePortFixture;

// A writer on another thread streams numbered messages while every connection is broken again
// and again (as revocation and moves do): the reader sees each exactly once, in order, and
// most of them came direct.
TEST_F(StreamFixture, AStreamGoesDirectAndSurvivesBrokenConnectionsInOrderWithoutDuplicates) {
  // The writer goes on past kAtLeast until the connections broke three times (a same-node
  // stream through shared memory can end 200000 messages before its third break), then sends
  // "end" with the next number.
  constexpr std::uint32_t kAtLeast = 200000;
  constexpr std::uint32_t kAtMost = 5000000;
  std::atomic<std::uint32_t> total{0};
  PortReader reader(channel, port, {.direct = true});
  MessageView message;
  // The reader opts in on its first wait: from then on the port takes connections.
  ASSERT_EQ(reader.next(message, Timeout(20)).status(), JobStatus::kTimedOut);
  ASSERT_TRUE(Eventually([&] { return agent.requests_with_op(ipc::JobOp::kDirectAccept) >= 1; }));
  std::atomic<bool> done{false};
  std::atomic<int> breaks{0};
  std::thread writer_thread([&] {
    PortWriter writer(channel, send_right, {.train_messages = 64, .direct = true});
    std::uint32_t i = 0;
    for (; i < kAtMost && (i < kAtLeast || breaks < 3); ++i) {
      auto written = writer.write("m" + std::to_string(i), i);
      ASSERT_TRUE(written) << i << ": " << written.error().ToString();
    }
    total = i;
    auto written = writer.write("end", i);
    ASSERT_TRUE(written) << written.error().ToString();
    auto flushed = writer.flush();
    ASSERT_TRUE(flushed) << flushed.error().ToString();
    EXPECT_EQ(writer.accepted(), i + 1);
    done = true;
  });
  // What the reader had taken direct, as the reading thread last looked (PortReader is not
  // shared between threads).
  std::atomic<std::uint64_t> direct_seen{0};
  std::thread breaker([&] {
    // Each connection lives at least 5 ms, and until a message came direct or 200 ms passed.
    // Broken at a fixed pace, on a slow machine (ASan at -O0 on a loaded CI) each was broken
    // before it carried anything: 0 of 60000 direct in 292 breaks, then, with the rings' longer
    // welcome, 0 of 200000 in 247 breaks of 5 ms each.
    std::size_t broken_through = 0;
    while (!done) {
      if (agent.direct_ends_made() == broken_through) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      const std::uint64_t seen = direct_seen.load();
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      while (!done && direct_seen.load() == seen && std::chrono::steady_clock::now() < give_up) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      broken_through = agent.direct_ends_made();
      agent.BreakDirectConnections();
      ++breaks;
    }
  });
  for (std::uint32_t i = 0;; ++i) {
    if (i % 64 == 0) direct_seen = reader.handed_direct();
    auto next = reader.next(message, std::chrono::seconds(10));
    ASSERT_TRUE(next) << i << ": " << next.error().ToString();
    ASSERT_EQ(message.id, i);
    if (message.bytes() == "end") break;
    ASSERT_EQ(message.bytes(), "m" + std::to_string(i));
    ASSERT_EQ(message.items.size(), 1u) << "the stream header is stripped";
    ASSERT_EQ(message.destination, port);
  }
  writer_thread.join();
  breaker.join();
  EXPECT_GT(reader.handed_direct(), 0u);
  EXPECT_GT(reader.handed_shared(), 0u) << "the fake agent's connections are Unix socket pairs";
  EXPECT_GE(breaks.load(), 3) << "the stream ended before the connections broke three times";
  EXPECT_EQ(reader.next(message, Timeout(50)).status(), JobStatus::kTimedOut) << "nothing more";
  std::printf("%d breaks, %llu of %u direct (%llu shared), %llu duplicates dropped\n",
              breaks.load(), static_cast<unsigned long long>(reader.handed_direct()), total.load(),
              static_cast<unsigned long long>(reader.handed_shared()),
              static_cast<unsigned long long>(reader.dropped_duplicates()));
}

// Large messages go direct too: a caller's bytes are copied into the frame (it may reuse its
// buffer once write() returns), a Message's items are kept by reference; each arrives whole.
// Through the rings (the default on a Unix socket) some are larger than the frame ring and go
// in pieces; without them (shared_memory false) on the socket.
void LargeMessagesArriveWhole(Channel& channel, std::uint32_t port, std::uint32_t send_right,
                              bool shared_memory) {
  PortReader reader(channel, port, {.direct = true, .shared_memory = shared_memory});
  MessageView message;
  ASSERT_EQ(reader.next(message, Timeout(20)).status(), JobStatus::kTimedOut);
  const auto pattern = [](std::size_t size, char seed) {
    std::string bytes(size, '\0');
    for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>(seed + i * 7);
    return bytes;
  };
  constexpr std::uint32_t kCount = 40;
  std::thread writer_thread([&] {
    PortWriter writer(channel, send_right, {.direct = true});
    for (std::uint32_t i = 0; i < kCount; ++i) {
      if (i % 2 == 0) {
        std::string buffer = pattern(200 << 10, static_cast<char>(i));
        ASSERT_TRUE(writer.write(buffer, i));
        buffer.assign(buffer.size(), 'x');  // the caller's buffer is its own again
      } else {
        const std::size_t size = i % 10 == 1 ? (6u << 20) : (300u << 10);
        ASSERT_TRUE(writer.write(
            MessageBuilder(0).id(i).out_of_line(pattern(size, static_cast<char>(i))).build()));
      }
    }
    auto done = writer.flush();
    ASSERT_TRUE(done) << done.error().ToString();
    EXPECT_EQ(writer.accepted(), kCount);
  });
  for (std::uint32_t i = 0; i < kCount; ++i) {
    auto next = reader.next(message, Timeout(5000));
    ASSERT_TRUE(next) << i << ": " << next.error().ToString();
    ASSERT_EQ(message.id, i);
    const std::size_t size = i % 2 == 0 ? (200u << 10) : i % 10 == 1 ? (6u << 20) : (300u << 10);
    ASSERT_TRUE(message.bytes() == pattern(size, static_cast<char>(i)))
        << "message " << i << " damaged";
  }
  writer_thread.join();
  EXPECT_GT(reader.handed_direct(), 0u);
  if (shared_memory) {
    EXPECT_GT(reader.handed_shared(), 0u);
  } else {
    EXPECT_EQ(reader.handed_shared(), 0u);
  }
}

TEST_F(StreamFixture, LargeMessagesGoDirectAndArriveWhole) {
  LargeMessagesArriveWhole(channel, port, send_right, /*shared_memory=*/true);
}

TEST_F(StreamFixture, LargeMessagesGoDirectOnTheSocketWithoutSharedMemory) {
  LargeMessagesArriveWhole(channel, port, send_right, /*shared_memory=*/false);
}

// Small messages (the writer's one-item shortcut) and messages larger than the frame ring
// (which go through it in pieces, waiting for room) interleaved through the rings: each
// arrives whole and in order, most through shared memory.
TEST_F(StreamFixture, SmallAndLargerThanTheRingMessagesInterleavedArriveWholeInOrder) {
  PortReader reader(channel, port, {.direct = true});
  MessageView message;
  ASSERT_EQ(reader.next(message, Timeout(20)).status(), JobStatus::kTimedOut);
  const auto size_of = [](std::uint32_t i) -> std::size_t {
    if (i % 400 == 399) return 6u << 20;
    return i % 3 == 0 ? 20 : (16u << 10);
  };
  const auto pattern = [](std::size_t size, std::uint32_t seed) {
    std::string bytes(size, '\0');
    for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>(seed * 13 + i * 7);
    return bytes;
  };
  constexpr std::uint32_t kCount = 2000;
  std::thread writer_thread([&] {
    PortWriter writer(channel, send_right, {.direct = true});
    for (std::uint32_t i = 0; i < kCount; ++i) {
      auto written = writer.write(pattern(size_of(i), i), i);
      ASSERT_TRUE(written) << i << ": " << written.error().ToString();
    }
    auto done = writer.flush();
    ASSERT_TRUE(done) << done.error().ToString();
    EXPECT_EQ(writer.accepted(), kCount);
  });
  for (std::uint32_t i = 0; i < kCount; ++i) {
    auto next = reader.next(message, Timeout(10000));
    ASSERT_TRUE(next) << i << ": " << next.error().ToString();
    ASSERT_EQ(message.id, i);
    ASSERT_TRUE(message.bytes() == pattern(size_of(i), i)) << "message " << i << " damaged";
  }
  writer_thread.join();
  EXPECT_GT(reader.handed_shared(), kCount / 2);
  EXPECT_EQ(reader.next(message, Timeout(50)).status(), JobStatus::kTimedOut) << "nothing more";
}

// A receiver that never read with a PortReader never accepts: the writer's messages arrive
// through the agents exactly as written (no header, no sync).
TEST_F(StreamFixture, AReceiverThatNeverOptedInGetsThePlainMessages) {
  {
    PortWriter writer(channel, send_right, {.train_messages = 4, .direct = true});
    for (std::uint32_t i = 0; i < 100; ++i) ASSERT_TRUE(writer.write("p" + std::to_string(i), i));
    ASSERT_TRUE(writer.flush());
    EXPECT_EQ(writer.accepted(), 100u);
    EXPECT_EQ(writer.accepted_direct(), 0u);
  }
  ExpectPlainMessages(100, "p");
}

}  // namespace
}  // namespace tern
