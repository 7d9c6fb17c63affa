// Plain sends direct (docs/ipc.md "Plain sends direct"): Channel::send of data to a port a
// PortReader reads goes over the connection the fake agent grants, keeps each sender's order
// across broken connections and messages through the agents, loses nothing when the sender
// stops sending before a break (the keeper resends), and leaves a plain receiver's messages as
// they were.
#include "direct_send.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <tern/ipc.hpp>
#include <thread>

#include "fake_agent.hpp"
#include "port_fixture.hpp"

namespace tern {
namespace {

using testing::Eventually;

struct DirectSendFixture : testing::LargeQueuePortFixture {
  // Opts the reader in (its first wait) and sends until a message went direct: the stream's
  // connection is welcomed and its sync is in. Returns the messages sent, ids from `first`.
  std::uint32_t SendUntilDirect(PortReader& reader, std::uint32_t first) {
    MessageView message;
    EXPECT_EQ(reader.next(message, Timeout(20)).status(), JobStatus::kTimedOut);
    EXPECT_TRUE(Eventually([&] { return agent.requests_with_op(ipc::JobOp::kDirectAccept) >= 1; }));
    const std::uint64_t before = libtern::DirectSendsReceived();
    std::uint32_t id = first;
    std::atomic<bool> stop{false};
    // The reader has to run for the welcome and the acks: on another thread meanwhile.
    std::vector<std::string> seen;  // the reading thread's until it is joined
    std::atomic<std::size_t> seen_count{0};
    std::thread reading([&] {
      MessageView view;
      while (!stop) {
        if (reader.next(view, Timeout(10))) {
          seen.emplace_back(view.bytes());
          ++seen_count;
        }
      }
    });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (libtern::DirectSendsReceived() == before &&
           std::chrono::steady_clock::now() < deadline) {
      EXPECT_TRUE(channel.send(BytesMessage(send_right, "w" + std::to_string(id), id)));
      ++id;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // Until the reader has every message so far.
    EXPECT_TRUE(Eventually([&] { return seen_count == id - first; }));
    stop = true;
    reading.join();
    EXPECT_GT(libtern::DirectSendsReceived(), before) << "no message went direct";
    for (std::uint32_t i = first; i < id; ++i) {
      EXPECT_EQ(seen.at(i - first), "w" + std::to_string(i)) << "in order, each once";
    }
    return id - first;
  }
};

// Sends from another thread while every connection is broken again and again: each message
// arrives once, in order, most of them direct, none with the stream header left in.
TEST_F(DirectSendFixture, PlainSendsGoDirectAndSurviveBrokenConnectionsInOrder) {
  constexpr std::uint32_t kCount = 60000;
  PortReader reader(channel, port, {.direct = true});
  const std::uint32_t first = SendUntilDirect(reader, 0);
  const std::uint64_t direct_before = libtern::DirectSendsReceived();
  std::atomic<bool> done{false};
  std::thread sender([&] {
    for (std::uint32_t i = first; i < kCount; ++i) {
      auto sent = channel.send(BytesMessage(send_right, "m" + std::to_string(i), i),
                               FullPolicy::kWait, kForever);
      ASSERT_TRUE(sent) << i << ": " << sent.error().ToString();
    }
    done = true;
  });
  std::atomic<int> breaks{0};
  std::thread breaker([&] {
    // Each connection lives at least 5 ms, and until a message was received on it or 200 ms
    // passed: at a fixed pace a slow machine (ASan at -O0, a loaded CI) breaks each one before it
    // carries anything (StreamFixture's breaker says how that was seen).
    while (!done) {
      const std::uint64_t seen = libtern::DirectSendsReceived();
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      while (!done && libtern::DirectSendsReceived() == seen &&
             std::chrono::steady_clock::now() < give_up) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      agent.BreakDirectConnections();
      ++breaks;
    }
  });
  MessageView message;
  for (std::uint32_t i = first; i < kCount; ++i) {
    auto next = reader.next(message, std::chrono::seconds(10));
    ASSERT_TRUE(next) << i << ": " << next.error().ToString();
    ASSERT_EQ(message.id, i);
    ASSERT_EQ(message.bytes(), "m" + std::to_string(i));
    ASSERT_EQ(message.items.size(), 1u) << "the stream header is stripped";
  }
  sender.join();
  breaker.join();
  EXPECT_GT(libtern::DirectSendsReceived() - direct_before, 0u);
  EXPECT_GT(reader.handed_shared(), 0u) << "the fake agent's connections are Unix socket pairs: "
                                           "the frames go through the shared-memory rings";
  EXPECT_GE(breaks.load(), 3) << "the sends ended before the connections broke three times";
  EXPECT_EQ(reader.next(message, Timeout(50)).status(), JobStatus::kTimedOut) << "nothing more";
}

// A sender that sends and then does nothing more: the connection breaks before the reader has
// read any of it (the reader's job frozen for a move, say). The keeper sends what the reader
// lacks through the agents; the reader gets every message once, in order.
TEST_F(DirectSendFixture, ASenderThatStopsLosesNothingWhenTheConnectionBreaks) {
  PortReader reader(channel, port, {.direct = true});
  const std::uint32_t first = SendUntilDirect(reader, 0);
  constexpr std::uint32_t kMore = 30;  // fewer than fill the socket's buffer: kFail takes them
  for (std::uint32_t i = first; i < first + kMore; ++i) {
    ASSERT_TRUE(channel.send(BytesMessage(send_right, "s" + std::to_string(i), i)));
  }
  const int batches = agent.requests_with_op(ipc::JobOp::kSendBatch);
  agent.BreakDirectConnections();
  // Nothing acknowledged: the keeper sends the lot again through the agents.
  EXPECT_TRUE(Eventually([&] { return agent.requests_with_op(ipc::JobOp::kSendBatch) > batches; }));
  MessageView message;
  for (std::uint32_t i = first; i < first + kMore; ++i) {
    auto next = reader.next(message, std::chrono::seconds(5));
    ASSERT_TRUE(next) << i << ": " << next.error().ToString();
    ASSERT_EQ(message.id, i);
    ASSERT_EQ(message.bytes(), "s" + std::to_string(i));
  }
  EXPECT_EQ(reader.next(message, Timeout(100)).status(), JobStatus::kTimedOut) << "nothing more";
}

// A message through the agents (it carries a right) between direct ones keeps its place.
TEST_F(DirectSendFixture, AMessageCarryingARightKeepsItsPlaceAmongDirectOnes) {
  PortReader reader(channel, port, {.direct = true});
  const std::uint32_t first = SendUntilDirect(reader, 0);
  auto other = channel.port_allocate();
  ASSERT_TRUE(other);
  std::thread sender([&] {
    const auto send = [&](Message message) {
      auto sent = channel.send(message, FullPolicy::kWait, kForever);
      ASSERT_TRUE(sent) << message.id << ": " << sent.error().ToString();
    };
    for (std::uint32_t round = 0; round < 5; ++round) {
      const std::uint32_t base = first + round * 100;
      for (std::uint32_t i = base; i < base + 50; ++i) {
        send(BytesMessage(send_right, "d" + std::to_string(i), i));
      }
      send(MessageBuilder(send_right)
               .id(base + 50)
               .bytes("r" + std::to_string(base + 50))
               .port(*other, Disposition::kMakeSend)
               .build());
      for (std::uint32_t i = base + 51; i < base + 100; ++i) {
        send(BytesMessage(send_right, "d" + std::to_string(i), i));
      }
    }
  });
  MessageView message;
  for (std::uint32_t i = first; i < first + 500; ++i) {
    auto next = reader.next(message, std::chrono::seconds(5));
    ASSERT_TRUE(next) << i << ": " << next.error().ToString();
    ASSERT_EQ(message.id, i);
    if ((i - first) % 100 == 50) {
      ASSERT_EQ(message.items.size(), 2u) << "the right came with it";
      EXPECT_EQ(message.items[0].bytes, "r" + std::to_string(i));
    } else {
      ASSERT_EQ(message.bytes(), "d" + std::to_string(i));
    }
  }
  sender.join();
}

// A full window refuses a kFail send as a full queue does, and what was accepted arrives.
TEST_F(DirectSendFixture, AFullWindowRefusesAFailingSendAndLosesNothing) {
  ASSERT_NO_FATAL_FAILURE(UsePort(8));
  PortReader reader(channel, port, {.direct = true});
  const std::uint32_t first = SendUntilDirect(reader, 0);
  std::uint32_t id = first;
  for (; id < first + 1000; ++id) {
    auto sent = channel.send(BytesMessage(send_right, "f" + std::to_string(id), id));
    if (!sent) {
      EXPECT_EQ(sent.status(), JobStatus::kQueueFull) << sent.error().ToString();
      break;
    }
  }
  EXPECT_LT(id, first + 1000) << "the reader took nothing, yet the window never filled";
  EXPECT_GE(id - first, 8u) << "fewer than the queue limit went";
  MessageView message;
  for (std::uint32_t i = first; i < id; ++i) {
    auto next = reader.next(message, std::chrono::seconds(5));
    ASSERT_TRUE(next) << i << ": " << next.error().ToString();
    ASSERT_EQ(message.id, i);
  }
  EXPECT_EQ(reader.next(message, Timeout(100)).status(), JobStatus::kTimedOut) << "nothing more";
}

// A receiver that reads with receive never opts in: the messages come through the agents as
// they were sent (no header, no sync).
TEST_F(DirectSendFixture, AReceiverThatNeverOptedInGetsThePlainMessages) {
  for (std::uint32_t i = 0; i < 50; ++i) {
    ASSERT_TRUE(channel.send(BytesMessage(send_right, "p" + std::to_string(i), i)));
  }
  ExpectPlainMessages(50, "p");
}

}  // namespace
}  // namespace tern
