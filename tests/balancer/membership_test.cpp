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
  options.redial_every = milliseconds(2000);
  return options;
}

MemberState StateOf(const MembershipView& view, std::uint64_t id) {
  for (const auto& member : view.Members()) {
    if (member.node_id == id) return member.state;
  }
  ADD_FAILURE() << "no member " << id;
  return MemberState::kDead;
}

int Count(const MembershipView::Actions& actions, bool connects) {
  int n = 0;
  for (const auto& action : actions) {
    n += std::holds_alternative<ConnectAction>(action) == connects;
  }
  return n;
}

TEST(MembershipTest, AliveThenSuspectThenDeadExactlyAtTheThresholds) {
  MembershipView view(Options());
  auto actions = view.OnPeerUp({2, "node2", "10.0.0.2:7071", ""}, milliseconds(0));
  EXPECT_EQ(StateOf(view, 2), MemberState::kAlive);
  EXPECT_EQ(Count(actions, false), 1);
  view.Tick(milliseconds(2999));
  EXPECT_EQ(StateOf(view, 2), MemberState::kAlive);
  view.Tick(milliseconds(3000));
  EXPECT_EQ(StateOf(view, 2), MemberState::kSuspect);
  view.Tick(milliseconds(9999));
  EXPECT_EQ(StateOf(view, 2), MemberState::kSuspect);
  actions = view.Tick(milliseconds(10000));
  EXPECT_EQ(StateOf(view, 2), MemberState::kDead);
  ASSERT_EQ(Count(actions, false), 1);
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
  EXPECT_EQ(Count(actions, true), 1);  // redial the lost peer
}

TEST(MembershipTest, GossipDiscoversANodeAndDialsItOnceInAWhile) {
  MembershipView view(Options());
  MemberInfo three{3, "node3", "10.0.0.3:7071", "", MemberState::kAlive, milliseconds(0)};
  auto actions = view.OnGossip({three}, milliseconds(100));
  ASSERT_EQ(Count(actions, true), 1);
  EXPECT_EQ(std::get<ConnectAction>(actions[0]).address, "10.0.0.3:7071");
  EXPECT_EQ(StateOf(view, 3), MemberState::kSuspect);  // heard of, not heard from
  EXPECT_EQ(Count(view.OnGossip({three}, milliseconds(200)), true), 0);
  EXPECT_EQ(Count(view.Tick(milliseconds(1000)), true), 0);
  EXPECT_EQ(Count(view.Tick(milliseconds(2100)), true), 1);
  view.OnPeerUp({3, "node3", "10.0.0.3:7071", ""}, milliseconds(2200));
  EXPECT_EQ(StateOf(view, 3), MemberState::kAlive);
  EXPECT_EQ(Count(view.Tick(milliseconds(5000)), true), 0);  // linked: never dialled
}

TEST(MembershipTest, SelfIsAlwaysAliveAndNeverDialled) {
  MembershipView view(Options());
  view.OnPeerDown(1, milliseconds(0));
  view.OnGossip({{1, "node1", "10.0.0.1:7071", "", MemberState::kDead, milliseconds(0)}},
                milliseconds(0));
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

}  // namespace
}  // namespace tern::balancer
