// RPC: call / RpcServer through the fake agent's ports: replies, acks, kept replies, repeats.
#include <gtest/gtest.h>

#include <future>
#include <tern/ipc.hpp>

#include "fake_agent.hpp"
#include "port_fixture.hpp"
#include "rpc_format.hpp"

namespace tern {
namespace {

using testing::Eventually;
using testing::FakeAgent;

struct RpcFixture : testing::PortFixture {
  // These tests are about the agent path: refuse direct calls as an older agent does.
  void AgentPathOnly() {
    agent.set_script([](const ipc::JobRequest& request) -> std::optional<FakeAgent::Answer> {
      if (request.op == ipc::JobOp::kDirectOpen || request.op == ipc::JobOp::kDirectAccept) {
        return FakeAgent::Answer{JobStatus::kBadRequest, "unknown op"};
      }
      return std::nullopt;
    });
  }

  static std::vector<Item> Echo(const RpcRequest& request) {
    return {Item::Bytes("echo:" + std::string(request.bytes()))};
  }
};

TEST_F(RpcFixture, ExplicitAckFreesTheKeptReply) {
  AgentPathOnly();
  RpcServer server(channel, port, Echo, {.threads = 1, .ack = RpcAck::kExplicit});
  auto reply = channel.call(send_right, "one", {.timeout = Timeout(2000)});
  ASSERT_TRUE(reply) << reply.error().ToString();
  EXPECT_EQ(*reply, "echo:one");
  EXPECT_TRUE(Eventually([&] { return server.kept_replies() == 0; }));
  EXPECT_EQ(agent.sent_with_id(libtern::kRpcAckId), 1);
  EXPECT_EQ(server.handled(), 1u);

  // A lost ack leaves the reply kept; the client's next request frees it all the same.
  agent.set_drop([](const Message& m) { return m.id == libtern::kRpcAckId; });
  ASSERT_TRUE(channel.call(send_right, "two", {.timeout = Timeout(2000)}));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(server.kept_replies(), 1u);
  agent.set_drop(nullptr);
  ASSERT_TRUE(channel.call(send_right, "three", {.timeout = Timeout(2000)}));
  EXPECT_TRUE(Eventually([&] { return server.kept_replies() == 0; }));
  EXPECT_EQ(server.handled(), 3u);
  EXPECT_EQ(server.last_error(), "");
}

TEST_F(RpcFixture, ImplicitAckKeepsTheReplyUntilTheNextRequest) {
  std::atomic<RpcServer*> server_seen{nullptr};
  std::atomic<int> kept_during_second{-1};
  RpcServer server(channel, port,
                   [&](const RpcRequest& request) {
                     if (request.bytes() == "second") {
                       kept_during_second = static_cast<int>(server_seen.load()->kept_replies());
                     }
                     return Echo(request);
                   },
                   {.threads = 1, .ack = RpcAck::kImplicit});
  server_seen = &server;
  ASSERT_TRUE(channel.call(send_right, "first", {.timeout = Timeout(2000)}));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(server.kept_replies(), 1u);
  EXPECT_EQ(agent.sent_with_id(libtern::kRpcAckId), 0);
  ASSERT_TRUE(channel.call(send_right, "second", {.timeout = Timeout(2000)}));
  // While the second request ran, the first reply was already dropped.
  EXPECT_EQ(kept_during_second.load(), 0);
  EXPECT_EQ(server.kept_replies(), 1u);

  // Each client (a thread) has its own kept reply.
  auto other = std::async(std::launch::async, [&] {
    return channel.call(send_right, "other", {.timeout = Timeout(2000)});
  });
  auto other_reply = other.get();
  ASSERT_TRUE(other_reply);
  EXPECT_EQ(*other_reply, "echo:other");
  EXPECT_EQ(server.kept_replies(), 2u);
}

TEST_F(RpcFixture, AKeptReplyNobodyAcknowledgesExpires) {
  RpcServer server(channel, port, Echo,
                   {.threads = 1, .ack = RpcAck::kImplicit, .keep_replies_for = Timeout(50)});
  ASSERT_TRUE(channel.call(send_right, "gone after this", {.timeout = Timeout(2000)}));
  EXPECT_EQ(server.kept_replies(), 1u) << "kept for a repeat until acknowledged";
  std::this_thread::sleep_for(std::chrono::milliseconds(120));
  // Another client's request: the first client's old reply is dropped, the new one kept.
  auto other = std::async(std::launch::async, [&] {
    return channel.call(send_right, "other", {.timeout = Timeout(2000)});
  });
  ASSERT_TRUE(other.get());
  EXPECT_EQ(server.kept_replies(), 1u);
}

TEST_F(RpcFixture, RepeatedRequestIsAnsweredFromTheKeptReply) {
  // Lose the first reply: the client times out and sends the same (client, sequence) again.
  std::atomic<int> replies_dropped{0};
  agent.set_drop([&](const Message& m) {
    return m.id == libtern::kRpcReplyId && replies_dropped.fetch_add(1) == 0;
  });
  RpcServer server(channel, port, Echo, {.threads = 2, .ack = RpcAck::kImplicit});
  auto reply = channel.call(send_right, "once", {.timeout = Timeout(200), .attempts = 3});
  ASSERT_TRUE(reply) << reply.error().ToString();
  EXPECT_EQ(*reply, "echo:once");
  EXPECT_EQ(server.handled(), 1u);
  EXPECT_EQ(agent.sent_with_id(libtern::kRpcRequestId), 2);
  EXPECT_EQ(agent.sent_with_id(libtern::kRpcReplyId), 2);
}

TEST_F(RpcFixture, RepeatWhileRunningIsNotRunAgain) {
  RpcServer server(channel, port,
                   [](const RpcRequest& request) {
                     std::this_thread::sleep_for(std::chrono::milliseconds(400));
                     return Echo(request);
                   },
                   {.threads = 2, .ack = RpcAck::kExplicit});
  auto reply = channel.call(send_right, "slow", {.timeout = Timeout(150), .attempts = 5});
  ASSERT_TRUE(reply) << reply.error().ToString();
  EXPECT_EQ(*reply, "echo:slow");
  EXPECT_GE(agent.sent_with_id(libtern::kRpcRequestId), 2);
  EXPECT_EQ(server.handled(), 1u);
}

TEST_F(RpcFixture, ACallWhoseReplyIsLostIsAnsweredFromTheKeptReplyWithoutATimeout) {
  // The reply right died with the server's agent (a send-once right is not journalled): the
  // call, which waits for good, must ask again by itself, and the handler must not run twice.
  std::atomic<int> replies_dropped{0};
  agent.set_drop([&](const Message& m) {
    return m.id == libtern::kRpcReplyId && replies_dropped.fetch_add(1) == 0;
  });
  RpcServer server(channel, port, Echo, {.threads = 1, .ack = RpcAck::kImplicit});
  auto reply = channel.call(send_right, "lost");
  ASSERT_TRUE(reply) << reply.error().ToString();
  EXPECT_EQ(*reply, "echo:lost");
  EXPECT_EQ(server.handled(), 1u);
  EXPECT_EQ(agent.sent_with_id(libtern::kRpcRequestId), 2);
}

TEST_F(RpcFixture, ALongCallAsksAgainWhileItRunsAndRunsOnce) {
  RpcServer server(channel, port,
                   [](const RpcRequest& request) {
                     if (request.bytes() == "long") {
                       std::this_thread::sleep_for(std::chrono::milliseconds(2600));
                     }
                     return Echo(request);
                   },
                   {.threads = 2, .ack = RpcAck::kImplicit});
  auto reply = channel.call(send_right, "long");
  ASSERT_TRUE(reply) << reply.error().ToString();
  EXPECT_EQ(*reply, "echo:long");
  EXPECT_EQ(server.handled(), 1u);
  EXPECT_EQ(agent.sent_with_id(libtern::kRpcRequestId), 2) << "one repeat, after 2 s";
  // The next call skips the reply its repeat may have left behind.
  auto next = channel.call(send_right, "next", {.timeout = Timeout(2000)});
  ASSERT_TRUE(next) << next.error().ToString();
  EXPECT_EQ(*next, "echo:next");
  EXPECT_EQ(server.handled(), 2u);
}

TEST_F(RpcFixture, CallTimesOutWithoutAServer) {
  auto reply = channel.call(send_right, "anyone?", {.timeout = Timeout(50), .attempts = 2});
  ASSERT_FALSE(reply);
  EXPECT_EQ(reply.status(), JobStatus::kTimedOut);
}

TEST_F(RpcFixture, HandlerFailureReachesTheClient) {
  RpcServer server(channel, port, [](const RpcRequest&) -> std::vector<Item> {
    throw std::runtime_error("no such account");
  });
  auto reply = channel.call(send_right, "x", {.timeout = Timeout(2000)});
  ASSERT_FALSE(reply);
  EXPECT_EQ(reply.error().message, "RPC handler failed: no such account");
}

// Highest number of handler calls running at once with `threads` server threads.
int MaxConcurrency(Channel& channel, std::uint32_t port, std::uint32_t send_right, int threads) {
  testing::Concurrency concurrency;
  RpcServer server(channel, port, concurrency.EchoAfter(std::chrono::milliseconds(60)),
                   {.threads = threads});
  std::vector<std::future<bool>> clients;
  for (int i = 0; i < 4; ++i) {
    clients.push_back(std::async(std::launch::async, [&, i] {
      auto reply = channel.call(send_right, std::to_string(i), {.timeout = Timeout(5000)});
      return reply && *reply == std::to_string(i);
    }));
  }
  for (auto& client : clients) EXPECT_TRUE(client.get());
  return concurrency.peak();
}

TEST_F(RpcFixture, OneThreadServesOneRequestAtATime) {
  EXPECT_EQ(MaxConcurrency(channel, port, send_right, 1), 1);
}

TEST_F(RpcFixture, ManyThreadsServeConcurrently) {
  EXPECT_GE(MaxConcurrency(channel, port, send_right, 4), 2);
}

}  // namespace
}  // namespace tern
