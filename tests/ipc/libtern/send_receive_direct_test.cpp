// send_receive over a direct connection (docs/ipc.md "send_receive direct"): a data message
// whose reply is a send-once right to the port it then receives on goes job to job once the
// receiving RpcServer accepts connections; everything else, and every failure, goes through the
// (fake) agent without loss or a second execution.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <stdexcept>
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

constexpr std::uint32_t kId = 42;

struct SendReceiveFixture : testing::PortFixture {
  std::uint32_t inbox = 0;  // the client's own port: replies come here

  void SetUp() override {
    testing::PortFixture::SetUp();
    auto allocated = channel.port_allocate();
    ASSERT_TRUE(allocated);
    inbox = *allocated;
  }

  Message Request(std::string text) const {
    return MessageBuilder(send_right).id(kId).bytes(std::move(text)).reply(inbox).build();
  }

  IpcResult<Message> Exchange(std::string text) const {
    return channel.send_receive(Request(std::move(text)), inbox, Timeout(3000));
  }

  static std::vector<Item> Echo(const RpcRequest& request) {
    return {Item::Bytes("echo:" + std::string(request.bytes()))};
  }

  void WaitForAccept() {
    ASSERT_TRUE(Eventually([&] { return agent.requests_with_op(JobOp::kDirectAccept) >= 1; }));
  }
};

// What the receiver's handler saw and what the sender got back, whichever path it took.
void ExpectEcho(const IpcResult<Message>& reply, std::string_view text, std::uint32_t inbox) {
  ASSERT_TRUE(reply) << reply.error().ToString();
  EXPECT_EQ(FirstBytes(*reply), "echo:" + std::string(text));
  EXPECT_EQ(reply->id, kId) << "the reply carries the request's id";
  EXPECT_EQ(reply->destination, inbox);
  EXPECT_EQ(reply->reply, 0u);
}

TEST_F(SendReceiveFixture, GoesDirectAfterTheFirstTwoMessages) {
  std::atomic<int> wrong_id{0};
  RpcServer server(channel, port,
                   [&](const RpcRequest& request) {
                     if (request.message.id != kId) ++wrong_id;
                     return Echo(request);
                   },
                   {.threads = 1, .ack = RpcAck::kExplicit});
  WaitForAccept();
  for (int i = 0; i < 12; ++i) {
    const std::string text = "m" + std::to_string(i);
    ExpectEcho(Exchange(text), text, inbox);
  }
  // The first went plain (request and reply through the agent); the second, after a send
  // through the agent on that name, in the RPC format (so that it cannot overtake it); the
  // rest on the connection.
  EXPECT_EQ(agent.sent_with_id(kId), 2);
  EXPECT_EQ(agent.sent_with_id(libtern::kRpcRequestId), 1);
  EXPECT_EQ(agent.requests_with_op(JobOp::kDirectOpen), 1);
  EXPECT_EQ(server.handled(), 12u);
  EXPECT_EQ(server.handled_direct(), 10u);
  EXPECT_EQ(wrong_id.load(), 0) << "the handler sees the sender's message id on every path";
  EXPECT_TRUE(Eventually([&] { return server.kept_replies() == 0; })) << "acks went direct";
  EXPECT_EQ(server.last_error(), "");
}

TEST_F(SendReceiveFixture, AMessageCarryingARightGoesThroughTheAgent) {
  RpcServer server(channel, port, Echo, {.threads = 1});
  WaitForAccept();
  ExpectEcho(Exchange("a"), "a", inbox);
  ExpectEcho(Exchange("b"), "b", inbox);
  ExpectEcho(Exchange("c"), "c", inbox);
  ASSERT_EQ(server.handled_direct(), 1u);
  const int through_agent = agent.sent_with_id(kId);
  for (int i = 0; i < 3; ++i) {
    Message message = Request("right");
    message.items.push_back(Item::Port(send_right, Disposition::kCopySend));
    auto reply = channel.send_receive(message, inbox, Timeout(3000));
    ExpectEcho(reply, "right", inbox);
  }
  EXPECT_EQ(agent.sent_with_id(kId), through_agent + 6) << "3 requests and 3 replies";
  EXPECT_EQ(server.handled_direct(), 1u);
  // A send through the agent (the right-carrying message) is never overtaken: the next data
  // message goes in the RPC format through the agent, then direct again.
  ExpectEcho(Exchange("d"), "d", inbox);
  ExpectEcho(Exchange("e"), "e", inbox);
  EXPECT_EQ(server.handled_direct(), 2u);
}

TEST_F(SendReceiveFixture, AConnectionBrokenMidMessageGetsTheReplyOnce) {
  std::atomic<int> ran{0};
  RpcServer server(
      channel, port,
      [&](const RpcRequest& request) {
        if (request.bytes() == "break") {
          ++ran;
          agent.BreakDirectConnections();
          // The sender repeats it through the agent while this runs.
          EXPECT_TRUE(Eventually([&] { return agent.sent_with_id(libtern::kRpcRequestId) == 2; }));
        }
        return Echo(request);
      },
      {.threads = 1, .ack = RpcAck::kExplicit});
  WaitForAccept();
  ExpectEcho(Exchange("a"), "a", inbox);
  ExpectEcho(Exchange("b"), "b", inbox);
  ExpectEcho(Exchange("c"), "c", inbox);
  ASSERT_EQ(server.handled_direct(), 1u);
  ExpectEcho(Exchange("break"), "break", inbox);
  EXPECT_EQ(ran.load(), 1) << "the repeat was answered, not run again";
  EXPECT_EQ(server.handled(), 4u);
  // The next one opens a new connection.
  ExpectEcho(Exchange("again"), "again", inbox);
  EXPECT_EQ(agent.requests_with_op(JobOp::kDirectOpen), 2);
  EXPECT_EQ(server.handled_direct(), 3u);
}

TEST_F(SendReceiveFixture, APlainReceiverGetsPlainMessages) {
  // A receiver that is not an RpcServer takes no direct traffic: every message reaches it as
  // sent, through the agent.
  auto served = std::async(std::launch::async, [&] {
    for (int i = 0; i < 5; ++i) {
      auto message = channel.receive(port, Timeout(3000));
      if (!message || message->id != kId || message->reply == 0) return false;
      auto sent = channel.send(MessageBuilder(message->reply, message->reply_disposition)
                                   .id(kId)
                                   .bytes("echo:" + std::string(FirstBytes(*message)))
                                   .build());
      if (!sent) return false;
    }
    return true;
  });
  for (int i = 0; i < 5; ++i) {
    const std::string text = "p" + std::to_string(i);
    ExpectEcho(Exchange(text), text, inbox);
  }
  EXPECT_TRUE(served.get());
  EXPECT_EQ(agent.sent_with_id(libtern::kRpcRequestId), 0);
  EXPECT_EQ(agent.requests_with_op(JobOp::kDirectOpen), 1) << "refused: asked again after 1 s";
}

TEST_F(SendReceiveFixture, TheServerAsksForDirectCallsBeforeItServesAnything) {
  // A client asks for a connection as soon as it has its first answer: the agent must have read
  // the server's direct_accept by then, or it refuses and keeps the client off for a second.
  for (int round = 0; round < 5; ++round) {
    const std::size_t before = agent.ops_in_order().size();
    RpcServer server(channel, port, Echo, {.threads = 1});
    ASSERT_TRUE(Eventually([&] {
      const auto ops = agent.ops_in_order();
      return std::count(ops.begin() + static_cast<std::ptrdiff_t>(before), ops.end(),
                        JobOp::kReceive) >= 1;
    }));
    const auto ops = agent.ops_in_order();
    const auto from = ops.begin() + static_cast<std::ptrdiff_t>(before);
    const auto accept = std::find(from, ops.end(), JobOp::kDirectAccept);
    const auto receive = std::find(from, ops.end(), JobOp::kReceive);
    EXPECT_LT(accept - from, receive - from) << "round " << round;
    server.stop();
  }
}

TEST_F(SendReceiveFixture, AHandlerFailureIsTheReplyOnEitherPath) {
  RpcServer server(channel, port,
                   [](const RpcRequest& request) -> std::vector<Item> {
                     if (request.bytes() == "fail") throw std::runtime_error("no such thing");
                     return Echo(request);
                   },
                   {.threads = 1});
  WaitForAccept();
  for (int i = 0; i < 3; ++i) {
    auto reply = Exchange("fail");
    ASSERT_TRUE(reply) << reply.error().ToString();
    EXPECT_EQ(FirstBytes(*reply), "no such thing") << "exchange " << i;
    EXPECT_EQ(reply->id, kId);
  }
  EXPECT_EQ(server.handled_direct(), 1u) << "the third went direct";
}

TEST(SendReceiveWire, AMessageFrameAndAHeaderCarryTheMessageId) {
  std::vector<Item> items;
  items.push_back(Item::Bytes("x"));
  ipc::WireWriter frame;
  libtern::WriteDirectCall(frame, libtern::DirectCallKind::kMessage, 7, 9, items, 0xabcd0123);
  auto parsed = libtern::ParseDirectCall(
      std::make_shared<const std::string>(frame.out().substr(ipc::kFrameHeaderSize)));
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(parsed->kind, libtern::DirectCallKind::kMessage);
  EXPECT_EQ(parsed->message_id, 0xabcd0123u);
  ASSERT_EQ(parsed->items.size(), 1u);
  EXPECT_EQ(parsed->items[0].bytes(), "x");

  Message request;
  request.id = libtern::kRpcRequestId;
  request.items.push_back(libtern::EncodeRpcHeader({libtern::kRpcCarriesId, 7, 9, 0x11223344}));
  EXPECT_EQ(request.items[0].bytes().size(), libtern::kRpcHeaderWithIdSize);
  auto header = libtern::DecodeRpcHeader(request);
  ASSERT_TRUE(header);
  EXPECT_EQ(header->message_id, 0x11223344u);
  // A header whose flag promises an id it does not hold is not an RPC header.
  request.items[0] = Item::Bytes(std::string(request.items[0].bytes().substr(0, 18)));
  EXPECT_FALSE(libtern::DecodeRpcHeader(request));
}

}  // namespace
}  // namespace tern
