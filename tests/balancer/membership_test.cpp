#include "tern/balancer/membership.hpp"

#include <gtest/gtest.h>

namespace tern::balancer {
namespace {

using std::chrono::milliseconds;

MembershipOptions Options() {
  MembershipOptions options;
  options.self = {1, "node1", "10.0.0.1:7071", "10.0.0.1:7070"};
  options.suspect_after = milliseconds(3000);
  options.dead_after = milliseconds(10000);
  return options;
}

MemberState StateOf(const MembershipView& view, std::uint64_t id) {
  for (const auto& member : view.Members()) {
    if (member.node_id == id) return member.state;
  }
  ADD_FAILURE() << "no member " << id;
  return MemberState::kDead;
}

TEST(MembershipTest, AliveThenSuspectThenDeadExactlyAtTheThresholds) {
  MembershipView view(Options());
  auto actions = view.OnPeerUp({2, "node2", "10.0.0.2:7071", ""}, milliseconds(0));
  EXPECT_EQ(StateOf(view, 2), MemberState::kAlive);
  EXPECT_EQ(static_cast<int>(actions.size()), 1);
  view.Tick(milliseconds(2999));
  EXPECT_EQ(StateOf(view, 2), MemberState::kAlive);
  view.Tick(milliseconds(3000));
  EXPECT_EQ(StateOf(view, 2), MemberState::kSuspect);
  view.Tick(milliseconds(9999));
  EXPECT_EQ(StateOf(view, 2), MemberState::kSuspect);
  actions = view.Tick(milliseconds(10000));
  EXPECT_EQ(StateOf(view, 2), MemberState::kDead);
  ASSERT_EQ(static_cast<int>(actions.size()), 1);
  auto change = std::get<StateChangedAction>(actions[0]);
  EXPECT_EQ(change.from, MemberState::kSuspect);
  EXPECT_EQ(change.to, MemberState::kDead);
}

TEST(MembershipTest, HeartbeatRevivesAndPeerDownSuspectsAtOnce) {
  MembershipView view(Options());
  view.OnPeerUp({2, "node2", "10.0.0.2:7071", ""}, milliseconds(0));
  view.Tick(milliseconds(4000));
  EXPECT_EQ(StateOf(view, 2), MemberState::kSuspect);
  view.OnHeartbeat(2, milliseconds(4100));
  EXPECT_EQ(StateOf(view, 2), MemberState::kAlive);
  auto actions = view.OnPeerDown(2, milliseconds(4200));
  EXPECT_EQ(StateOf(view, 2), MemberState::kSuspect);
  EXPECT_EQ(static_cast<int>(actions.size()), 1);
}

TEST(MembershipTest, GossipEntriesDiscoverANodeAndKeepItAliveWithoutALink) {
  MembershipView view(Options());
  auto actions = view.OnGossipEntry({3, "node3", "10.0.0.3:7071", "10.0.0.3:7070"},
                                    milliseconds(900), false, milliseconds(1000));
  ASSERT_EQ(actions.size(), 1u);
  EXPECT_EQ(std::get<StateChangedAction>(actions[0]).to, MemberState::kAlive);
  auto members = view.Members();
  ASSERT_EQ(members.size(), 2u);
  EXPECT_EQ(members[1].address, "10.0.0.3:7071");
  EXPECT_EQ(members[1].api_address, "10.0.0.3:7070");
  // Entries sampled every second keep it alive however long it goes without a link.
  for (int t = 2000; t <= 20000; t += 1000) {
    view.OnGossipEntry({3, "node3", "", ""}, milliseconds(t - 1500), false, milliseconds(t));
    view.Tick(milliseconds(t));
    EXPECT_EQ(StateOf(view, 3), MemberState::kAlive) << t;
  }
  // An old entry (relayed late) does not make it look fresher than it is.
  view.OnGossipEntry({3, "node3", "", ""}, milliseconds(1000), false, milliseconds(21000));
  view.Tick(milliseconds(21600));
  EXPECT_EQ(StateOf(view, 3), MemberState::kSuspect);  // freshest sample: 18500
  view.Tick(milliseconds(28500));
  EXPECT_EQ(StateOf(view, 3), MemberState::kDead);
}

TEST(MembershipTest, AStaleFirstEntryIsHeardOfNotAlive) {
  MembershipView view(Options());
  view.OnGossipEntry({3, "node3", "10.0.0.3:7071", ""}, milliseconds(0), false, milliseconds(5000));
  EXPECT_EQ(StateOf(view, 3), MemberState::kSuspect);
}

TEST(MembershipTest, ALinkBreakSuspectsAtOnceAndOnlyNewerSignsRevive) {
  MembershipView view(Options());
  view.OnPeerUp({2, "node2", "10.0.0.2:7071", ""}, milliseconds(0));
  view.OnHeartbeat(2, milliseconds(1000));
  view.OnPeerDown(2, milliseconds(1500));
  EXPECT_EQ(StateOf(view, 2), MemberState::kSuspect);
  // A sample from before the break, relayed by gossip, does not revive it...
  view.OnGossipEntry({2, "node2", "", ""}, milliseconds(1200), false, milliseconds(1600));
  EXPECT_EQ(StateOf(view, 2), MemberState::kSuspect);
  // ... one taken after does (the link was closed, the node lives).
  view.OnGossipEntry({2, "node2", "", ""}, milliseconds(2000), false, milliseconds(2100));
  EXPECT_EQ(StateOf(view, 2), MemberState::kAlive);
}

TEST(MembershipTest, DeathNoticeKillsASilentMemberNotAFreshOne) {
  MembershipView view(Options());
  view.OnPeerUp({2, "node2", "10.0.0.2:7071", ""}, milliseconds(0));
  view.OnGossipEntry({2, "node2", "", ""}, milliseconds(0), true, milliseconds(1000));
  EXPECT_EQ(StateOf(view, 2), MemberState::kAlive);  // we heard from it 1 s ago
  view.OnGossipEntry({2, "node2", "", ""}, milliseconds(0), true, milliseconds(3500));
  EXPECT_EQ(StateOf(view, 2), MemberState::kDead);  // before dead_after: the notice spread
  view.Tick(milliseconds(4000));
  EXPECT_EQ(StateOf(view, 2), MemberState::kDead);
  // A newer sample (it was only partitioned) brings it back.
  view.OnGossipEntry({2, "node2", "", ""}, milliseconds(4500), false, milliseconds(4600));
  EXPECT_EQ(StateOf(view, 2), MemberState::kAlive);
}

TEST(MembershipTest, SelfIsAlwaysAlive) {
  MembershipView view(Options());
  view.OnPeerDown(1, milliseconds(0));
  view.OnGossipEntry({1, "node1", "10.0.0.1:7071", ""}, milliseconds(0), true, milliseconds(0));
  auto actions = view.Tick(milliseconds(60000));
  EXPECT_TRUE(actions.empty());
  EXPECT_EQ(StateOf(view, 1), MemberState::kAlive);
  EXPECT_EQ(view.Members().size(), 1u);
}

TEST(MembershipTest, UnknownNodesInEventsAreIgnored) {
  MembershipView view(Options());
  EXPECT_TRUE(view.OnHeartbeat(99, milliseconds(0)).empty());
  EXPECT_TRUE(view.OnPeerDown(99, milliseconds(0)).empty());
  EXPECT_EQ(view.Members().size(), 1u);
}

TEST(MembershipTest, GossipOnlyNewsGetsAGraceBeforeSuspectNotBeforeDead) {
  auto options = Options();
  options.gossip_grace = milliseconds(4000);
  MembershipView view(options);
  view.OnGossipEntry({3, "node3", "10.0.0.3:7071", ""}, milliseconds(1000), false,
                     milliseconds(1000));
  view.Tick(milliseconds(7999));
  EXPECT_EQ(StateOf(view, 3), MemberState::kAlive);  // 7 s: news may just be late
  view.Tick(milliseconds(8000));
  EXPECT_EQ(StateOf(view, 3), MemberState::kSuspect);
  view.Tick(milliseconds(11000));
  EXPECT_EQ(StateOf(view, 3), MemberState::kDead);
  // A member heard directly (a frame on a link) gets no grace.
  view.OnPeerUp({2, "node2", "10.0.0.2:7071", ""}, milliseconds(20000));
  view.Tick(milliseconds(23000));
  EXPECT_EQ(StateOf(view, 2), MemberState::kSuspect);
  // ... until its link closes by agreement: then its news comes by gossip, with the grace.
  view.OnHeartbeat(2, milliseconds(24000));
  view.OnLinkIdleClosed(2);
  view.Tick(milliseconds(30999));
  EXPECT_EQ(StateOf(view, 2), MemberState::kAlive);
}

// Dead members are dialled again one at a time, in turn by node id, so that a node that comes
// back knowing nobody is found (docs/balancer.md, "Finding the cluster again").
TEST(MembershipTest, TheDeadAreNamedForADialInTurn) {
  MembershipView view(Options());
  EXPECT_FALSE(view.NextDeadToDial(0)) << "no member yet";
  for (std::uint64_t id : {2, 3, 4}) {
    const std::string name = "node" + std::to_string(id);
    view.OnPeerUp({id, name, "10.0.0." + std::to_string(id) + ":7071", ""}, milliseconds(0));
  }
  view.OnPeerUp({5, "node5", "", ""}, milliseconds(0));  // nothing to dial it at
  EXPECT_FALSE(view.NextDeadToDial(0)) << "nobody is dead";
  view.OnHeartbeat(3, milliseconds(9000));
  view.Tick(milliseconds(10000));
  ASSERT_EQ(StateOf(view, 2), MemberState::kDead);
  ASSERT_EQ(StateOf(view, 3), MemberState::kAlive);
  ASSERT_EQ(StateOf(view, 4), MemberState::kDead);
  ASSERT_EQ(StateOf(view, 5), MemberState::kDead);
  auto first = view.NextDeadToDial(0);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->node_id, 2u);
  EXPECT_EQ(first->address, "10.0.0.2:7071");
  auto second = view.NextDeadToDial(first->node_id);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->node_id, 4u) << "the alive one and the one without an address are skipped";
  auto again = view.NextDeadToDial(second->node_id);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->node_id, 2u) << "round again from the first";
  // Back: a link up revives it, and it is no longer named.
  view.OnPeerUp({2, "node2", "10.0.0.2:7071", ""}, milliseconds(11000));
  auto only = view.NextDeadToDial(4);
  ASSERT_TRUE(only);
  EXPECT_EQ(only->node_id, 4u);
}

}  // namespace
}  // namespace tern::balancer
