// BacklogHold: when the agent holds its jobs' requests back for a backlogged link to another
// node, when it lets them go again, and when it gives up on a link that does not drain.
#include "backlog_hold.hpp"

#include <gtest/gtest.h>

#include <map>

namespace tern::ipc {
namespace {

using namespace std::chrono_literals;
using Clock = BacklogHold::Clock;

constexpr std::size_t kMiB = 1u << 20;

class BacklogHoldTest : public ::testing::Test {
 protected:
  // The links' backlogs, by node; every node in it has a link.
  std::map<std::uint64_t, std::size_t> backlog_;
  BacklogHold hold_{[this](std::uint64_t node) { return backlog_.at(node); }};
  const Clock::time_point t0_ = Clock::now();

  bool HoldNow(Clock::time_point now) { return hold_.HoldNow(KeysOf(backlog_), now); }
  BacklogHold::Verdict Check(Clock::time_point now) { return hold_.Check(KeysOf(backlog_), now); }
  // Holds at t0 with node 1 over the limit (node 2 idle), then stays there.
  void HoldForNodeOne() {
    backlog_ = {{1, 20 * kMiB}, {2, 0}};
    ASSERT_TRUE(HoldNow(t0_));
  }
};

TEST_F(BacklogHoldTest, HoldsOnlyWhenALinkHasMoreThanSixteenMiBWaiting) {
  backlog_ = {{1, 16 * kMiB}, {2, 3 * kMiB}};
  EXPECT_FALSE(HoldNow(t0_)) << "16 MiB is not more than 16 MiB";
  EXPECT_FALSE(hold_.holding());
  backlog_[1] = 16 * kMiB + 1;
  EXPECT_TRUE(HoldNow(t0_));
  EXPECT_TRUE(hold_.holding());
  // Other jobs that become readable meanwhile are held too, whatever the backlogs say.
  backlog_[1] = 0;
  EXPECT_TRUE(HoldNow(t0_ + 1ms));
}

TEST_F(BacklogHoldTest, ResumesOnlyOnceEveryLinkIsAtOrUnderFourMiB) {
  backlog_ = {{1, 20 * kMiB}, {2, 17 * kMiB}};
  ASSERT_TRUE(HoldNow(t0_));
  backlog_[1] = 10 * kMiB;  // under the hold limit, not drained
  backlog_[2] = 2 * kMiB;
  EXPECT_FALSE(Check(t0_ + 1ms).resume);
  backlog_[1] = 4 * kMiB;
  backlog_[2] = 4 * kMiB + 1;
  EXPECT_FALSE(Check(t0_ + 2ms).resume) << "node 2 has not drained";
  EXPECT_TRUE(hold_.holding());
  backlog_[2] = 4 * kMiB;
  const auto verdict = Check(t0_ + 3ms);
  EXPECT_TRUE(verdict.resume);
  EXPECT_TRUE(verdict.newly_stuck.empty());
  EXPECT_FALSE(hold_.holding());
  EXPECT_FALSE(HoldNow(t0_ + 4ms));
}

TEST_F(BacklogHoldTest, ALinkThatDoesNotDrainForTwoSecondsBecomesStuckAndHoldsNoOneBack) {
  HoldForNodeOne();
  backlog_[2] = 30 * kMiB;  // node 2 fills later in the hold: the same two seconds apply
  const auto before = Check(t0_ + 2s - 1ms);
  EXPECT_FALSE(before.resume);
  EXPECT_TRUE(before.newly_stuck.empty());
  EXPECT_FALSE(hold_.stuck(1));

  const auto verdict = Check(t0_ + 2s);
  EXPECT_TRUE(verdict.resume);
  EXPECT_EQ(verdict.newly_stuck, (std::vector<std::uint64_t>{1, 2}));
  EXPECT_TRUE(hold_.stuck(1));
  EXPECT_TRUE(hold_.stuck(2));
  EXPECT_FALSE(hold_.holding());

  // Still full, but stuck: jobs are read again, and the stuck links are reported once.
  EXPECT_FALSE(HoldNow(t0_ + 3s));
  EXPECT_TRUE(Check(t0_ + 3s).newly_stuck.empty());
}

TEST_F(BacklogHoldTest, OnlyTheLinksStillOverFourMiBBecomeStuck) {
  HoldForNodeOne();
  backlog_[2] = 4 * kMiB;
  const auto verdict = Check(t0_ + 2s);
  EXPECT_TRUE(verdict.resume);
  EXPECT_EQ(verdict.newly_stuck, (std::vector<std::uint64_t>{1}));
  EXPECT_FALSE(hold_.stuck(2));
  // Node 2 still holds jobs back.
  backlog_[2] = 17 * kMiB;
  EXPECT_TRUE(HoldNow(t0_ + 3s));
}

TEST_F(BacklogHoldTest, AStuckLinkThatDrainsHoldsJobsBackAgain) {
  HoldForNodeOne();
  ASSERT_EQ(Check(t0_ + 2s).newly_stuck, (std::vector<std::uint64_t>{1}));
  backlog_[1] = 4 * kMiB + 1;
  EXPECT_FALSE(HoldNow(t0_ + 3s));
  backlog_[1] = 40 * kMiB;
  EXPECT_FALSE(HoldNow(t0_ + 4s)) << "not drained yet: still stuck";
  EXPECT_TRUE(hold_.stuck(1));

  backlog_[1] = 4 * kMiB;
  EXPECT_FALSE(HoldNow(t0_ + 5s));
  EXPECT_FALSE(hold_.stuck(1));
  backlog_[1] = 17 * kMiB;
  const auto t1 = t0_ + 6s;
  EXPECT_TRUE(HoldNow(t1));
  // A new hold gets its own two seconds.
  EXPECT_FALSE(Check(t1 + 1s).resume);
  EXPECT_EQ(Check(t1 + 2s).newly_stuck, (std::vector<std::uint64_t>{1}));
}

TEST_F(BacklogHoldTest, AClosedLinkIsNoLongerStuck) {
  HoldForNodeOne();
  ASSERT_TRUE(Check(t0_ + 2s).resume);
  ASSERT_TRUE(hold_.stuck(1));
  hold_.LinkClosed(1);
  EXPECT_FALSE(hold_.stuck(1));
  EXPECT_TRUE(HoldNow(t0_ + 3s)) << "the new link's backlog counts at once";
}

TEST(BacklogHold, WithoutABacklogCallbackNothingIsEverHeld) {
  BacklogHold hold{BacklogHold::NodeBacklog{}};
  const std::vector<std::uint64_t> nodes{1, 2};
  const auto t0 = Clock::now();
  EXPECT_FALSE(hold.HoldNow(nodes, t0));
  EXPECT_FALSE(hold.holding());
  const auto verdict = hold.Check(nodes, t0 + 3s);
  EXPECT_TRUE(verdict.resume);
  EXPECT_TRUE(verdict.newly_stuck.empty());
}

}  // namespace
}  // namespace tern::ipc
