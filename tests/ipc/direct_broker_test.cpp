// DirectBroker without I/O: connections are numbers, time is passed in.
#include <gtest/gtest.h>

#include <tern/ipc/direct_broker.hpp>
#include <tern/ipc/port_router.hpp>

#include "no_regions.hpp"

namespace tern::ipc {
namespace {

using namespace std::chrono_literals;
using Broker = DirectBroker;

class DirectBrokerTest : public ::testing::Test {
 protected:
  DirectBrokerTest()
      : broker([this] {
          DirectToken token{};
          token[0] = static_cast<std::uint8_t>(++made);
          return token;
        }) {}

  DirectToken GrantOk(ObjectId port) {
    auto token = broker.Grant(port, now);
    EXPECT_TRUE(token) << (token ? "" : token.error().message);
    return token ? *token : DirectToken{};
  }

  int made = 0;
  Broker broker;
  Broker::Clock::time_point now = Broker::Clock::now();
  const ObjectId port{1, 5};
};

TEST_F(DirectBrokerTest, PortWhoseReceiverNeverAcceptedIsRefused) {
  EXPECT_FALSE(broker.Grant(port, now));
}

TEST_F(DirectBrokerTest, WaitingAcceptGetsTheConnectionThatPresentsItsToken) {
  broker.Accept("server", 10, 3, port, kWaitForever, now);
  EXPECT_TRUE(broker.TakeActions().empty());
  const DirectToken token = GrantOk(port);
  broker.Arrived(100, 555, token, now + 10ms);
  auto actions = broker.TakeActions();
  ASSERT_EQ(actions.replies.size(), 1u);
  EXPECT_EQ(actions.replies[0].job, "server");
  EXPECT_EQ(actions.replies[0].request, 10u);
  EXPECT_EQ(actions.replies[0].status, JobStatus::kOk);
  EXPECT_EQ(actions.replies[0].connection, 100u);
  const auto records = broker.Records("server");
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].inode, 555u);
  EXPECT_EQ(records[0].role, Broker::Role::kServer);
  EXPECT_EQ(records[0].name, 3u);
  EXPECT_EQ(records[0].port, port);
}

TEST_F(DirectBrokerTest, TokenIsSingleUseAndExpires) {
  broker.Accept("server", 10, 3, port, 0, now);  // marks the port; answers timed_out at once
  ASSERT_EQ(broker.TakeActions().replies.at(0).status, JobStatus::kTimedOut);
  const DirectToken token = GrantOk(port);
  broker.Arrived(1, 11, token, now);
  EXPECT_TRUE(broker.TakeActions().closes.empty());
  EXPECT_EQ(broker.Queued(port), 1u);
  broker.Arrived(2, 12, token, now);  // used already
  EXPECT_EQ(broker.TakeActions().closes, std::vector<std::uint64_t>{2});

  const DirectToken late = GrantOk(port);
  broker.Arrived(3, 13, late, now + Broker::kTokenLife);
  EXPECT_EQ(broker.TakeActions().closes, std::vector<std::uint64_t>{3});

  DirectToken forged{};
  forged[15] = 0xff;
  broker.Arrived(4, 14, forged, now);
  EXPECT_EQ(broker.TakeActions().closes, std::vector<std::uint64_t>{4});
  EXPECT_EQ(broker.Queued(port), 1u);
}

TEST_F(DirectBrokerTest, QueuedConnectionGoesToTheNextAccept) {
  broker.Accept("server", 1, 3, port, 0, now);
  broker.TakeActions();
  broker.Arrived(7, 70, GrantOk(port), now);
  broker.Accept("server", 2, 3, port, 1000, now);
  auto actions = broker.TakeActions();
  ASSERT_EQ(actions.replies.size(), 1u);
  EXPECT_EQ(actions.replies[0].request, 2u);
  EXPECT_EQ(actions.replies[0].connection, 7u);
  EXPECT_EQ(broker.Queued(port), 0u);
}

TEST_F(DirectBrokerTest, AtMost64QueuedCountingTokensOut) {
  broker.Accept("server", 1, 3, port, 0, now);
  broker.TakeActions();
  std::vector<DirectToken> tokens;
  for (std::size_t i = 0; i < Broker::kMaxQueued; ++i) tokens.push_back(GrantOk(port));
  EXPECT_FALSE(broker.Grant(port, now));
  for (std::size_t i = 0; i < tokens.size(); ++i) broker.Arrived(i + 1, i + 1, tokens[i], now);
  EXPECT_TRUE(broker.TakeActions().closes.empty());
  EXPECT_EQ(broker.Queued(port), Broker::kMaxQueued);
  EXPECT_FALSE(broker.Grant(port, now));
}

TEST_F(DirectBrokerTest, AcceptTimesOut) {
  broker.Accept("server", 4, 3, port, 500, now);
  ASSERT_TRUE(broker.NextDeadline());
  EXPECT_EQ(*broker.NextDeadline(), now + 500ms);
  broker.Tick(now + 499ms);
  EXPECT_TRUE(broker.TakeActions().empty());
  broker.Tick(now + 500ms);
  auto actions = broker.TakeActions();
  ASSERT_EQ(actions.replies.size(), 1u);
  EXPECT_EQ(actions.replies[0].status, JobStatus::kTimedOut);
  // The port still accepts: the next ask gets a token.
  EXPECT_TRUE(broker.Grant(port, now));
}

TEST_F(DirectBrokerTest, ReceiveRightGoneStopsAccepting) {
  broker.Accept("server", 1, 3, port, 0, now);
  broker.TakeActions();
  broker.Arrived(9, 90, GrantOk(port), now);
  const DirectToken unused = GrantOk(port);
  broker.Accept("server", 2, 3, port, 0, now);  // takes connection 9: a record
  broker.Accept("server", 3, 3, port, kWaitForever, now);
  broker.Arrived(10, 100, GrantOk(port), now);  // goes to request 3: a second record
  broker.Accept("server", 4, 3, port, kWaitForever, now);
  broker.TakeActions();
  broker.CheckRights("server", [](Broker::Role, std::uint32_t, ObjectId) { return true; });
  EXPECT_TRUE(broker.TakeActions().empty());

  broker.CheckRights("server", [](Broker::Role, std::uint32_t, ObjectId) { return false; });
  auto actions = broker.TakeActions();
  ASSERT_EQ(actions.revokes.size(), 2u);
  EXPECT_EQ(actions.revokes[0].inode, 90u);
  EXPECT_EQ(actions.revokes[1].inode, 100u);
  ASSERT_EQ(actions.replies.size(), 1u);  // the waiting accept
  EXPECT_EQ(actions.replies[0].request, 4u);
  EXPECT_EQ(actions.replies[0].status, JobStatus::kInvalidName);
  EXPECT_TRUE(broker.Records("server").empty());
  EXPECT_FALSE(broker.Grant(port, now));
  broker.Arrived(11, 110, unused, now);  // its port stopped accepting
  EXPECT_EQ(broker.TakeActions().closes, std::vector<std::uint64_t>{11});
}

TEST_F(DirectBrokerTest, ClientAskConnectsOrTimesOut) {
  const auto ask = broker.StartAsk("client", 20, 6, port, now);
  EXPECT_TRUE(broker.AskPending(ask));
  broker.AskConnected(ask, 30, 300);
  auto actions = broker.TakeActions();
  ASSERT_EQ(actions.replies.size(), 1u);
  EXPECT_EQ(actions.replies[0].status, JobStatus::kOk);
  EXPECT_EQ(actions.replies[0].connection, 30u);
  ASSERT_EQ(broker.Records("client").size(), 1u);
  EXPECT_EQ(broker.Records("client")[0].role, Broker::Role::kClient);

  const auto slow = broker.StartAsk("client", 21, 6, port, now);
  broker.Tick(now + Broker::kAskDeadline);
  actions = broker.TakeActions();
  ASSERT_EQ(actions.replies.size(), 1u);
  EXPECT_EQ(actions.replies[0].status, JobStatus::kUnavailable);
  EXPECT_FALSE(broker.AskPending(slow));
  broker.AskConnected(slow, 31, 310);  // too late: closed, no second answer
  actions = broker.TakeActions();
  EXPECT_TRUE(actions.replies.empty());
  EXPECT_EQ(actions.closes, std::vector<std::uint64_t>{31});

  const auto refused = broker.StartAsk("client", 22, 6, port, now);
  broker.AskRefused(refused, "no");
  actions = broker.TakeActions();
  ASSERT_EQ(actions.replies.size(), 1u);
  EXPECT_EQ(actions.replies[0].status, JobStatus::kUnavailable);
  EXPECT_EQ(actions.replies[0].why, "no");
}

TEST_F(DirectBrokerTest, RevokesOnlyRecordsWhoseRightIsGone) {
  broker.AskConnected(broker.StartAsk("client", 1, 6, port, now), 1, 11);
  broker.AskConnected(broker.StartAsk("client", 2, 8, ObjectId{1, 9}, now), 2, 22);
  broker.TakeActions();
  broker.CheckRights("client", [](Broker::Role role, std::uint32_t name, ObjectId) {
    return role == Broker::Role::kClient && name == 8;
  });
  auto actions = broker.TakeActions();
  ASSERT_EQ(actions.revokes.size(), 1u);
  EXPECT_EQ(actions.revokes[0].job, "client");
  EXPECT_EQ(actions.revokes[0].inode, 11u);
  ASSERT_EQ(broker.Records("client").size(), 1u);
  EXPECT_EQ(broker.Records("client")[0].inode, 22u);
}

TEST_F(DirectBrokerTest, SuspendShutsEverythingAndRefusesUntilResume) {
  broker.Accept("server", 1, 3, port, 0, now);
  broker.Arrived(5, 50, GrantOk(port), now);    // queued
  broker.Accept("server", 2, 3, port, 0, now);  // record 50
  broker.Arrived(6, 60, GrantOk(port), now);    // queued
  const DirectToken out = GrantOk(port);        // handed out, unused
  broker.Accept("other", 3, 4, ObjectId{1, 6}, kWaitForever, now);
  broker.TakeActions();
  const auto ask = broker.StartAsk("server", 4, 7, ObjectId{2, 1}, now);

  broker.Suspend("server");
  EXPECT_TRUE(broker.Suspended("server"));
  auto actions = broker.TakeActions();
  ASSERT_EQ(actions.revokes.size(), 1u);
  EXPECT_EQ(actions.revokes[0].inode, 50u);
  EXPECT_EQ(actions.closes, std::vector<std::uint64_t>{6});
  EXPECT_FALSE(broker.Grant(port, now));
  broker.Arrived(8, 80, out, now);
  EXPECT_EQ(broker.TakeActions().closes, std::vector<std::uint64_t>{8});
  broker.AskConnected(ask, 9, 90);  // the moving job gets no new connection
  actions = broker.TakeActions();
  EXPECT_EQ(actions.closes, std::vector<std::uint64_t>{9});
  ASSERT_EQ(actions.replies.size(), 1u);
  EXPECT_EQ(actions.replies[0].status, JobStatus::kUnavailable);
  EXPECT_TRUE(broker.Grant(ObjectId{1, 6}, now));  // other jobs are untouched

  broker.Resume("server");
  EXPECT_TRUE(broker.Grant(port, now));
}

TEST_F(DirectBrokerTest, SuspendAnswersWaitingAccepts) {
  broker.Accept("server", 1, 3, port, kWaitForever, now);
  broker.Suspend("server");
  auto actions = broker.TakeActions();
  ASSERT_EQ(actions.replies.size(), 1u);
  EXPECT_EQ(actions.replies[0].status, JobStatus::kTimedOut);
}

TEST_F(DirectBrokerTest, JobGoneDropsItsState) {
  broker.Accept("server", 1, 3, port, kWaitForever, now);
  broker.AskConnected(broker.StartAsk("server", 2, 6, ObjectId{2, 2}, now), 1, 11);
  const auto ask = broker.StartAsk("server", 3, 6, ObjectId{2, 2}, now);
  broker.TakeActions();
  broker.JobGone("server");
  auto actions = broker.TakeActions();
  EXPECT_TRUE(actions.replies.empty());  // no channel to answer on
  EXPECT_TRUE(actions.revokes.empty());  // its sockets died with it
  EXPECT_TRUE(broker.Records("server").empty());
  EXPECT_FALSE(broker.Grant(port, now));
  EXPECT_FALSE(broker.AskPending(ask));
  EXPECT_FALSE(broker.NextDeadline());
}

// The router's queries the agent's broker relies on: which right a name is, and who holds a
// port's receive right.
using test_support::NoRegions;

std::uint32_t Ask(PortRouter& router, const std::string& job, JobOp op, std::uint32_t value) {
  WireWriter body;
  body.U32(value);
  EXPECT_TRUE(router.JobRequest(job, EncodeJobRequest(1, op, body.out())));
  auto actions = router.TakeActions();
  EXPECT_EQ(actions.replies.size(), 1u);
  if (actions.replies.empty()) return 0;
  auto reply = DecodeJobReply(actions.replies[0].Whole());
  if (!reply || reply->status != JobStatus::kOk || reply->body.size() < 4) return 0;
  return *WireReader(reply->body).U32();
}

TEST(DirectRouterQueriesTest, NamesTheRightsPortAndItsReceiver) {
  NoRegions regions;
  PortRouter router(7, regions);
  router.JobAttached("server");
  const std::uint32_t receive = Ask(router, "server", JobOp::kPortAllocate, 0);
  const std::uint32_t send = Ask(router, "server", JobOp::kMakeSend, receive);
  ASSERT_NE(receive, 0u);
  ASSERT_NE(send, 0u);
  const auto port = router.ReceiveRightPort("server", receive);
  ASSERT_TRUE(port);
  EXPECT_EQ(port->home, 7u);
  EXPECT_EQ(router.SendRightTarget("server", send), port);
  EXPECT_FALSE(router.SendRightTarget("server", receive));  // a receive right is no send right
  EXPECT_FALSE(router.ReceiveRightPort("server", send));
  EXPECT_FALSE(router.SendRightTarget("server", 999));
  EXPECT_FALSE(router.SendRightTarget("other", send));  // names are per job
  const auto receiver = router.ReceiverOf(*port);
  ASSERT_TRUE(receiver);
  EXPECT_EQ(receiver->node, 7u);
  EXPECT_EQ(receiver->job, "server");

  // The port dies with its receive right. The send right may still name it (it turns into a
  // dead name when the router learns of the death): the home's answer is what tells.
  Ask(router, "server", JobOp::kDeallocate, receive);
  EXPECT_FALSE(router.ReceiveRightPort("server", receive));
  EXPECT_FALSE(router.ReceiverOf(*port));
}

}  // namespace
}  // namespace tern::ipc
