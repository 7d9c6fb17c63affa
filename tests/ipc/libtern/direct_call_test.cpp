// Direct calls (docs/ipc.md "Direct calls"): call / RpcServer over a connection between the two
// jobs that the (fake) agent sets up, and every way back to the agent path.
#include <gtest/gtest.h>

#include <future>
#include <tern/ipc.hpp>

#include "direct_wire.hpp"
#include "fake_agent.hpp"
#include "port_fixture.hpp"
#include "rpc_format.hpp"

namespace tern {
namespace {

using ipc::JobOp;
using testing::Eventually;
using testing::FakeAgent;

struct DirectFixture : testing::PortFixture {
  // Requests that came through the agents.
  int agent_requests() { return agent.sent_with_id(libtern::kRpcRequestId); }

  // The server asked for direct calls, and this thread's first call (always through the
  // agents) is done: later calls may go direct.
  void WarmUp(RpcServer& server) {
    ASSERT_TRUE(Eventually([&] { return agent.requests_with_op(JobOp::kDirectAccept) >= 1; }));
    auto reply = channel.call(send_right, "warm", {.timeout = Timeout(2000)});
    ASSERT_TRUE(reply) << reply.error().ToString();
    (void)server;
  }

  static std::vector<Item> Echo(const RpcRequest& request) {
    return {Item::Bytes("echo:" + std::string(request.bytes()))};
  }
};

TEST_F(DirectFixture, CallsGoDirectAfterTheFirst) {
  RpcServer server(channel, port, Echo, {.threads = 1, .ack = RpcAck::kExplicit});
  WarmUp(server);
  EXPECT_EQ(agent_requests(), 1);
  const int send_receives = agent.requests_with_op(JobOp::kSendReceive);
  for (int i = 0; i < 20; ++i) {
    auto reply = channel.call(send_right, "n" + std::to_string(i), {.timeout = Timeout(2000)});
    ASSERT_TRUE(reply) << reply.error().ToString();
    EXPECT_EQ(*reply, "echo:n" + std::to_string(i));
  }
  EXPECT_EQ(agent.requests_with_op(JobOp::kSendReceive), send_receives) << "the agent saw a call";
  EXPECT_EQ(agent_requests(), 1);
  EXPECT_EQ(agent.requests_with_op(JobOp::kDirectOpen), 1);
  EXPECT_EQ(server.handled(), 21u);
  // Explicit acks went over the connection (only the first call's through the agents) and
  // freed the kept replies.
  EXPECT_TRUE(Eventually([&] { return server.kept_replies() == 0; }));
  EXPECT_EQ(agent.sent_with_id(libtern::kRpcAckId), 1);
  EXPECT_EQ(server.last_error(), "");

  // stop() joins the acceptor and the direct workers within about stop_poll.
  const auto before = std::chrono::steady_clock::now();
  server.stop();
  EXPECT_LT(std::chrono::steady_clock::now() - before, std::chrono::milliseconds(1000));
}

TEST_F(DirectFixture, ASendThroughTheAgentsSendsTheNextCallThroughThemToo) {
  RpcServer server(channel, port, Echo, {.threads = 1});
  WarmUp(server);
  ASSERT_TRUE(channel.call(send_right, "direct", {.timeout = Timeout(2000)}));
  ASSERT_EQ(agent_requests(), 1);
  // The call must not overtake the message sent before it.
  ASSERT_TRUE(channel.send(BytesMessage(send_right, "plain", 7)));
  ASSERT_TRUE(channel.call(send_right, "after a send", {.timeout = Timeout(2000)}));
  EXPECT_EQ(agent_requests(), 2);
  // Then direct again.
  ASSERT_TRUE(channel.call(send_right, "direct again", {.timeout = Timeout(2000)}));
  EXPECT_EQ(agent_requests(), 2);
}

TEST_F(DirectFixture, AConnectionBrokenMidCallStillGetsTheReplyOnce) {
  std::atomic<int> ran{0};
  RpcServer server(channel, port,
                   [&](const RpcRequest& request) {
                     if (request.bytes() == "break") {
                       ++ran;
                       agent.BreakDirectConnections();
                       // The client repeats the request through the agents while this runs.
                       EXPECT_TRUE(Eventually([&] { return agent_requests() == 2; }));
                     }
                     return Echo(request);
                   },
                   {.threads = 1, .ack = RpcAck::kExplicit});
  WarmUp(server);
  ASSERT_TRUE(channel.call(send_right, "direct", {.timeout = Timeout(2000)}));
  ASSERT_EQ(agent_requests(), 1);
  auto reply = channel.call(send_right, "break", {.timeout = Timeout(3000)});
  ASSERT_TRUE(reply) << reply.error().ToString();
  EXPECT_EQ(*reply, "echo:break");
  EXPECT_EQ(ran.load(), 1);
  EXPECT_EQ(agent_requests(), 2);
  EXPECT_EQ(server.handled(), 3u);
  EXPECT_TRUE(Eventually([&] { return server.kept_replies() == 0; }));
  // The next call opens a new connection.
  ASSERT_TRUE(channel.call(send_right, "reconnected", {.timeout = Timeout(2000)}));
  EXPECT_EQ(agent.requests_with_op(JobOp::kDirectOpen), 2);
  EXPECT_EQ(agent_requests(), 2);
}

TEST_F(DirectFixture, AOneThreadServerRunsOneHandlerAtATimeOverBothPaths) {
  testing::Concurrency concurrency;
  RpcServer server(channel, port, concurrency.EchoAfter(std::chrono::milliseconds(10)),
                   {.threads = 1});
  ASSERT_TRUE(Eventually([&] { return agent.requests_with_op(JobOp::kDirectAccept) >= 1; }));
  constexpr int kCalls = 8;
  std::vector<std::future<bool>> clients;
  for (int c = 0; c < 4; ++c) {
    clients.push_back(std::async(std::launch::async, [&, c] {
      bool ok = true;
      for (int i = 0; i < kCalls; ++i) {
        const std::string text = std::to_string(c) + ":" + std::to_string(i);
        std::vector<Item> items;
        items.push_back(Item::Bytes(text));
        // Odd clients carry a right: their calls always go through the agents.
        if (c % 2 == 1) items.push_back(Item::Port(send_right, Disposition::kCopySend));
        auto reply = channel.call(send_right, std::move(items), {.timeout = Timeout(5000)});
        ok = ok && reply && FirstBytes(*reply) == text;
      }
      return ok;
    }));
  }
  for (auto& client : clients) EXPECT_TRUE(client.get());
  EXPECT_EQ(concurrency.peak(), 1);
  // The even clients' calls after their first went direct.
  EXPECT_EQ(agent_requests(), 4 * kCalls - 2 * (kCalls - 1));
}

TEST_F(DirectFixture, AReplyWithARightComesThroughTheAgents) {
  RpcServer server(channel, port,
                   [&](const RpcRequest& request) -> std::vector<Item> {
                     if (request.bytes() != "right") return Echo(request);
                     return {Item::Bytes("here"), Item::Port(send_right, Disposition::kCopySend)};
                   },
                   {.threads = 1, .ack = RpcAck::kExplicit});
  WarmUp(server);
  auto reply = channel.call(send_right, "right", {.timeout = Timeout(2000)});
  ASSERT_TRUE(reply) << reply.error().ToString();
  EXPECT_EQ(*reply, "here");
  std::vector<Item> items;
  items.push_back(Item::Bytes("right"));
  auto whole = channel.call(send_right, std::move(items), {.timeout = Timeout(2000)});
  ASSERT_TRUE(whole) << whole.error().ToString();
  ASSERT_EQ(whole->items.size(), 2u);
  EXPECT_EQ(FirstBytes(*whole), "here");
  EXPECT_EQ(whole->items[1].kind, ItemKind::kPort);
  EXPECT_EQ(whole->items[1].name, send_right);
  EXPECT_EQ(server.handled(), 3u) << "each repeat was answered from the kept reply";
  EXPECT_EQ(agent_requests(), 3) << "direct requests, each repeated through the agents";
  EXPECT_TRUE(Eventually([&] { return server.kept_replies() == 0; }));
  // The connection is still good.
  ASSERT_TRUE(channel.call(send_right, "plain", {.timeout = Timeout(2000)}));
  EXPECT_EQ(agent_requests(), 3);
  EXPECT_EQ(agent.requests_with_op(JobOp::kDirectOpen), 1);
}

TEST_F(DirectFixture, AnAgentWithoutDirectCallsServesEverythingThroughTheAgents) {
  agent.set_script([](const ipc::JobRequest& request) -> std::optional<FakeAgent::Answer> {
    if (request.op == JobOp::kDirectOpen || request.op == JobOp::kDirectAccept) {
      return FakeAgent::Answer{JobStatus::kBadRequest, "unknown op"};
    }
    return std::nullopt;
  });
  RpcServer server(channel, port, Echo, {.threads = 2});
  for (int i = 0; i < 20; ++i) {
    auto reply = channel.call(send_right, std::to_string(i), {.timeout = Timeout(2000)});
    ASSERT_TRUE(reply) << reply.error().ToString();
    EXPECT_EQ(*reply, "echo:" + std::to_string(i));
  }
  EXPECT_EQ(agent_requests(), 20);
  EXPECT_EQ(agent.requests_with_op(JobOp::kDirectOpen), 1) << "refused: asked again after 1 s";
  EXPECT_TRUE(Eventually([&] { return agent.requests_with_op(JobOp::kDirectAccept) >= 1; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(150));  // past one stop_poll
  EXPECT_EQ(agent.requests_with_op(JobOp::kDirectAccept), 1) << "the acceptor gave up quietly";
  EXPECT_EQ(server.last_error(), "");
}

TEST_F(DirectFixture, ADirectCallTimesOutAndItsLateAnswerIsSkipped) {
  RpcServer server(channel, port,
                   [](const RpcRequest& request) {
                     if (request.bytes().starts_with("slow")) {
                       std::this_thread::sleep_for(std::chrono::milliseconds(300));
                     }
                     return Echo(request);
                   },
                   {.threads = 2, .ack = RpcAck::kImplicit});
  WarmUp(server);
  auto late = channel.call(send_right, "slow", {.timeout = Timeout(50)});
  ASSERT_FALSE(late);
  EXPECT_EQ(late.status(), JobStatus::kTimedOut);
  auto next = channel.call(send_right, "next", {.timeout = Timeout(2000)});
  ASSERT_TRUE(next) << next.error().ToString();
  EXPECT_EQ(*next, "echo:next");

  // Attempts repeat on the connection; the running request is not run twice.
  auto retried = channel.call(send_right, "slow again", {.timeout = Timeout(100), .attempts = 6});
  ASSERT_TRUE(retried) << retried.error().ToString();
  EXPECT_EQ(*retried, "echo:slow again");
  EXPECT_EQ(server.handled(), 4u);
  EXPECT_EQ(agent_requests(), 1);
}

// The frames' codec: what a server and a client of another build must agree on.
std::shared_ptr<const std::string> PayloadOf(ipc::WireWriter& writer) {
  std::string whole = writer.out();
  // A data-sharing writer left large items out: put them back in place.
  std::string joined;
  ipc::ForEachPiece(
      whole, writer.shared(), [&](std::string_view piece) { joined += piece; },
      [&](const ipc::SharedSpan& span) { joined += span.bytes; });
  return std::make_shared<const std::string>(joined.substr(ipc::kFrameHeaderSize));
}

TEST(DirectWire, FramesRoundTripWithLargeItemsInPlace) {
  std::vector<Item> items;
  items.push_back(Item::Bytes("small"));
  items.push_back(Item::OutOfLine(std::string(100'000, 'x')));
  ipc::WireWriter call(/*share_data=*/true);
  libtern::WriteDirectCall(call, libtern::DirectCallKind::kRequest, 7, 9, items);
  EXPECT_EQ(call.shared().size(), 1u) << "the large item is written from where it is";
  auto parsed = libtern::ParseDirectCall(PayloadOf(call));
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(parsed->client, 7u);
  EXPECT_EQ(parsed->sequence, 9u);
  ASSERT_EQ(parsed->items.size(), 2u);
  EXPECT_EQ(parsed->items[1].kind, ItemKind::kOutOfLine);
  EXPECT_EQ(parsed->items[1].bytes().size(), 100'000u);

  ipc::WireWriter answer(/*share_data=*/true);
  libtern::WriteDirectAnswer(answer, libtern::DirectOutcome::kCallThroughAgents, 1, 7, 9, {});
  auto got = libtern::ParseDirectAnswer(PayloadOf(answer));
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(got->outcome, libtern::DirectOutcome::kCallThroughAgents);
  EXPECT_EQ(got->flags, 1);
}

TEST(DirectWire, MalformedFramesAreRejected) {
  const auto parse = [](std::string payload) {
    return static_cast<bool>(
        libtern::ParseDirectCall(std::make_shared<const std::string>(std::move(payload))));
  };
  ipc::WireWriter good;
  good.U8(1);
  good.U64(1);
  good.U64(2);
  good.U32(1);
  good.U8(1);
  good.Bytes("x");
  EXPECT_TRUE(parse(good.out()));
  EXPECT_FALSE(parse(good.out() + "z")) << "trailing bytes";
  EXPECT_FALSE(parse(good.out().substr(0, good.out().size() - 1))) << "cut short";
  std::string port_item = good.out();
  port_item[21] = static_cast<char>(ItemKind::kPort);
  EXPECT_FALSE(parse(port_item)) << "a right on a direct connection";
  std::string bad_kind = good.out();
  bad_kind[0] = 3;
  EXPECT_FALSE(parse(bad_kind));
  std::string many = good.out();
  many[20] = 100;  // count 100 with one item's bytes
  EXPECT_FALSE(parse(many));
}

}  // namespace
}  // namespace tern
