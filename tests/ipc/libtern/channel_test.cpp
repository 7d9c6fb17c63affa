// Channel: the no-channel error, request/reply, out-of-order replies, statuses, a closed
// channel.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <tern/ipc.h>

#include <cstdlib>
#include <future>
#include <tern/ipc.hpp>

#include "fake_agent.hpp"

namespace tern {
namespace {

using testing::FakeAgent;

std::string U32(std::uint32_t v) {
  ipc::WireWriter writer;
  writer.U32(v);
  return writer.Take();
}

// The default channel is made once per process: each case runs in a child of its own.
void ExpectDefaultChannelFails(const char* value, const std::string& message) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        if (value == nullptr) {
          ::unsetenv("TERN_IPC_FD");
        } else {
          ::setenv("TERN_IPC_FD", value, 1);
        }
        Channel channel;
        auto port = channel.port_allocate();
        auto lookup = channel.name_lookup("x");
        const bool ok = !channel.connected() && !port && !lookup &&
                        port.status() == JobStatus::kUnavailable &&
                        port.error().message == message && lookup.error().message == message;
        std::exit(ok ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(Channel, NoChannelFailsClearly) {
  ExpectDefaultChannelFails(nullptr, "not running under tern: TERN_IPC_FD is not set");
  ExpectDefaultChannelFails("abc",
                            "not running under tern: TERN_IPC_FD=\"abc\" is not a file "
                            "descriptor number");
  ExpectDefaultChannelFails("987", "not running under tern: TERN_IPC_FD=987 is not an open socket");
}

// Issue 14: the agent's per-job limits reach the job as their own status, with the message.
TEST(Channel, OverQuotaIsItsOwnStatusWithTheAgentsReason) {
  FakeAgent agent;
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  auto port = channel.port_allocate(100000);
  ASSERT_FALSE(port);
  EXPECT_EQ(port.status(), JobStatus::kOverQuota);
  EXPECT_EQ(static_cast<int>(port.status()), TERN_OVER_QUOTA);
  EXPECT_NE(port.error().ToString().find("over_quota: "), std::string::npos)
      << port.error().ToString();
  EXPECT_NE(port.error().ToString().find("max_queue_limit"), std::string::npos);
  EXPECT_TRUE(channel.port_allocate(65536));
}

TEST(Channel, RoundTripThroughAPort) {
  FakeAgent agent;
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  ASSERT_TRUE(channel.connected());
  auto port = channel.port_allocate(4);
  ASSERT_TRUE(port) << port.error().ToString();
  auto send_right = channel.make_send(*port);
  ASSERT_TRUE(send_right) << send_right.error().ToString();
  auto sent = channel.send(MessageBuilder(*send_right).id(42).bytes("hello").build());
  ASSERT_TRUE(sent) << sent.error().ToString();
  auto status = channel.port_status(*port);
  ASSERT_TRUE(status);
  EXPECT_EQ(status->queued, 1u);
  EXPECT_EQ(status->limit, 4u);
  auto message = channel.receive(*port, Timeout(1000));
  ASSERT_TRUE(message) << message.error().ToString();
  EXPECT_EQ(message->id, 42u);
  EXPECT_EQ(message->destination, *port);
  EXPECT_EQ(FirstBytes(*message), "hello");
  auto empty = channel.receive(*port, Timeout(20));
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.status(), JobStatus::kTimedOut);
}

TEST(Channel, OutOfOrderRepliesReachTheirThreads) {
  FakeAgent agent;
  std::mutex mu;
  std::vector<std::pair<std::uint32_t, std::string>> held;
  std::promise<void> both_held;
  agent.set_script([&](const ipc::JobRequest& request) -> std::optional<FakeAgent::Answer> {
    if (request.op != ipc::JobOp::kNameLookup) return std::nullopt;
    ipc::WireReader reader(request.body);
    std::lock_guard lock(mu);
    held.emplace_back(request.id, reader.Bytes().value_or(""));
    if (held.size() == 2) both_held.set_value();
    return FakeAgent::Answer{.hold = true};
  });
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  auto a = std::async(std::launch::async, [&] { return channel.name_lookup("a"); });
  auto b = std::async(std::launch::async, [&] { return channel.name_lookup("b"); });
  ASSERT_EQ(both_held.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
  // Answer the later request first; each answer names the string it was asked for.
  for (auto it = held.rbegin(); it != held.rend(); ++it) {
    agent.Reply(it->first, {ipc::JobStatus::kOk, U32(it->second == "a" ? 1 : 2)});
  }
  auto got_a = a.get();
  auto got_b = b.get();
  ASSERT_TRUE(got_a && got_b);
  EXPECT_EQ(*got_a, 1u);
  EXPECT_EQ(*got_b, 2u);
}

TEST(Channel, ManyThreadsManyRequests) {
  FakeAgent agent;
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  std::vector<std::future<bool>> results;
  for (int t = 0; t < 8; ++t) {
    results.push_back(std::async(std::launch::async, [&] {
      for (int i = 0; i < 200; ++i) {
        auto port = channel.port_allocate();
        if (!port) return false;
        auto status = channel.port_status(*port);
        if (!status || status->queued != 0) return false;
      }
      return true;
    }));
  }
  for (auto& result : results) EXPECT_TRUE(result.get());
}

TEST(Channel, ErrorStatusesAreMapped) {
  FakeAgent agent;
  agent.set_script([](const ipc::JobRequest& request) -> std::optional<FakeAgent::Answer> {
    switch (request.op) {
      case ipc::JobOp::kSend:
        return FakeAgent::Answer{ipc::JobStatus::kQueueFull, "the queue of port 7 is full"};
      case ipc::JobOp::kOpCancel:
        return FakeAgent::Answer{ipc::JobStatus::kAlreadyMatched, "matched"};
      default:
        return std::nullopt;
    }
  });
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  auto sent = channel.send(BytesMessage(7, "x"));
  ASSERT_FALSE(sent);
  EXPECT_EQ(sent.status(), JobStatus::kQueueFull);
  EXPECT_EQ(sent.error().message, "the queue of port 7 is full");
  EXPECT_EQ(sent.error().ToString(), "queue_full: the queue of port 7 is full");
  auto cancelled = channel.cancel(3);
  ASSERT_FALSE(cancelled);
  EXPECT_EQ(cancelled.status(), JobStatus::kAlreadyMatched);
  auto lookup = channel.name_lookup("nobody");
  ASSERT_FALSE(lookup);
  EXPECT_EQ(lookup.status(), JobStatus::kNotFound);
  auto bad = channel.make_send(12345);
  EXPECT_EQ(bad.status(), JobStatus::kInvalidName);
}

TEST(Channel, LinkOperationsDecodeTheirResults) {
  FakeAgent agent;
  agent.set_script([](const ipc::JobRequest& request) -> std::optional<FakeAgent::Answer> {
    ipc::WireWriter writer;
    switch (request.op) {
      case ipc::JobOp::kLinkCreate:
        writer.U32(5);
        writer.U32(6);
        break;
      case ipc::JobOp::kLinkSend: {
        ipc::WireReader reader(request.body);
        auto end = reader.U32();
        auto message = reader.ReadMessage();
        if (end != 5u || !message || FirstBytes(*message) != "over") {
          return FakeAgent::Answer{ipc::JobStatus::kBadRequest, "bad link_send"};
        }
        writer.U32(77);
        break;
      }
      case ipc::JobOp::kLinkReceive:
        writer.U32(78);
        break;
      case ipc::JobOp::kOpPoll:
        writer.U8(0);
        break;
      case ipc::JobOp::kOpWait: {
        // libtern's handle stands for the agent's: the wait asks for the receive's.
        ipc::WireReader reader(request.body);
        if (reader.U32() != 78u) return FakeAgent::Answer{ipc::JobStatus::kBadRequest, "handle"};
        ipc::OpResult result;
        result.is_receive = true;
        result.end = 6;
        result.message = BytesMessage(6, "over");
        writer.WriteOpResult(result);
        break;
      }
      default:
        return std::nullopt;
    }
    return FakeAgent::Answer{ipc::JobStatus::kOk, writer.Take()};
  });
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  auto ends = channel.link_create();
  ASSERT_TRUE(ends);
  EXPECT_EQ(ends->first, 5u);
  EXPECT_EQ(ends->second, 6u);
  auto send = channel.link_send(5, BytesMessage(0, "over"));
  ASSERT_TRUE(send) << send.error().ToString();
  auto receive = channel.link_receive(6);
  ASSERT_TRUE(receive);
  auto polled = channel.poll(*receive);
  ASSERT_TRUE(polled);
  EXPECT_FALSE(polled->has_value());
  auto done = channel.wait(*receive, Timeout(100));
  ASSERT_TRUE(done);
  EXPECT_TRUE(done->is_receive);
  EXPECT_EQ(done->end, 6u);
  EXPECT_EQ(FirstBytes(done->message), "over");
}

TEST(Channel, ClosedChannelFailsEveryWaiterAndLaterCalls) {
  FakeAgent agent;
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  auto port = channel.port_allocate();
  ASSERT_TRUE(port);
  std::vector<std::future<IpcResult<Message>>> waiters;
  for (int i = 0; i < 3; ++i) {
    waiters.push_back(std::async(std::launch::async, [&] { return channel.receive(*port); }));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  agent.Close();
  for (auto& waiter : waiters) {
    ASSERT_EQ(waiter.wait_for(std::chrono::seconds(5)), std::future_status::ready);
    auto result = waiter.get();
    ASSERT_FALSE(result);
    EXPECT_EQ(result.status(), JobStatus::kUnavailable);
    EXPECT_EQ(result.error().message, "the agent closed the IPC channel");
  }
  EXPECT_FALSE(channel.connected());
  EXPECT_EQ(channel.port_allocate().status(), JobStatus::kUnavailable);
}

TEST(Channel, AFdNumberIsNotAChannel) {
  Channel channel = Channel::FromFd(-1);
  EXPECT_FALSE(channel.connected());
  EXPECT_EQ(channel.port_allocate().status(), JobStatus::kUnavailable);
}

TEST(Channel, APortWriterStreamsInOrderAndAPortReaderReadsInPlace) {
  FakeAgent agent;
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  auto port = channel.port_allocate(10000);
  ASSERT_TRUE(port) << port.error().ToString();
  auto send = channel.make_send(*port);
  ASSERT_TRUE(send);
  {
    // Small trains and a window of 2: many trains, never more than 2 unanswered.
    PortWriter writer(channel, *send, {.window = 2, .train_bytes = 1 << 10, .train_messages = 50});
    for (std::uint32_t i = 0; i < 5000; ++i) {
      ASSERT_TRUE(writer.write("n" + std::to_string(i), i)) << i;
    }
    ASSERT_TRUE(writer.write(MessageBuilder(0).id(5000).bytes("a").out_of_line("bb").build()));
    EXPECT_FALSE(writer.write(MessageBuilder(0).port(*send, Disposition::kCopySend).build()))
        << "rights do not go in a stream";
    auto flushed = writer.flush();
    ASSERT_TRUE(flushed) << flushed.error().ToString();
    EXPECT_EQ(writer.written(), 5001u);
    EXPECT_EQ(writer.accepted(), 5001u);
  }
  PortReader reader(channel, *port, 64);
  MessageView message;
  for (std::uint32_t i = 0; i < 5000; ++i) {
    auto next = reader.next(message, std::chrono::seconds(2));
    ASSERT_TRUE(next) << i << ": " << next.error().ToString();
    ASSERT_EQ(message.id, i);
    ASSERT_EQ(message.bytes(), "n" + std::to_string(i));
    EXPECT_EQ(message.destination, *port);
  }
  ASSERT_TRUE(reader.next(message, std::chrono::seconds(2)));
  ASSERT_EQ(message.items.size(), 2u);
  EXPECT_EQ(message.items[1].kind, ItemKind::kOutOfLine);
  EXPECT_EQ(message.ToMessage().items[1].bytes(), "bb");
  EXPECT_EQ(reader.buffered(), 0u);
  EXPECT_EQ(reader.next(message, std::chrono::milliseconds(0)).status(), JobStatus::kTimedOut);

  // A refused train ends the stream: later writes and the flush return the refusal.
  PortWriter refused(channel, 4242, {.train_messages = 1});
  EXPECT_EQ(refused.write("x").status(), JobStatus::kOk) << "on its way, not answered yet";
  EXPECT_EQ(refused.flush().status(), JobStatus::kInvalidName);
  EXPECT_EQ(refused.write("y").status(), JobStatus::kInvalidName);
  EXPECT_EQ(refused.accepted(), 0u);
}

// Large data leave libtern from the caller's buffer (written in pieces, not joined into one
// frame) and arrive whole, in order, among small messages, through every sending path.
TEST(Channel, LargeMessagesArriveWholeThroughEverySendingPath) {
  FakeAgent agent;
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  auto port = channel.port_allocate(100);
  ASSERT_TRUE(port) << port.error().ToString();
  auto send = channel.make_send(*port);
  ASSERT_TRUE(send);
  const auto pattern = [](std::size_t size, char seed) {
    std::string bytes(size, '\0');
    for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>(seed + i * 13);
    return bytes;
  };
  const std::string big = pattern(3 << 20, 1);
  const std::string ool = pattern(200 << 10, 2);
  ASSERT_TRUE(channel.send(MessageBuilder(*send).id(1).bytes(big).out_of_line(ool).build()));
  {
    PortWriter writer(channel, *send, {.window = 2});
    ASSERT_TRUE(writer.write("small", 2));
    ASSERT_TRUE(writer.write(std::string_view(big), 3));  // written from `big` itself
    ASSERT_TRUE(writer.write("small again", 4));
    ASSERT_TRUE(writer.flush());
    EXPECT_EQ(writer.accepted(), 3u);
  }
  auto first = channel.receive(*port, std::chrono::seconds(2));
  ASSERT_TRUE(first) << first.error().ToString();
  ASSERT_EQ(first->items.size(), 2u);
  EXPECT_TRUE(first->items[0].bytes() == big);
  EXPECT_TRUE(first->items[1].bytes() == ool);
  PortReader reader(channel, *port);
  MessageView message;
  const std::vector<std::pair<std::uint32_t, std::string_view>> expected = {
      {2, "small"}, {3, big}, {4, "small again"}};
  for (const auto& [id, bytes] : expected) {
    ASSERT_TRUE(reader.next(message, std::chrono::seconds(2)));
    EXPECT_EQ(message.id, id);
    EXPECT_TRUE(message.bytes() == bytes) << "message " << id;
  }
}

}  // namespace
}  // namespace tern
