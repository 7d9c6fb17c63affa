#include "tern/balancer/link_budget.hpp"

#include <gtest/gtest.h>

namespace tern::balancer {
namespace {

using Millis = std::chrono::milliseconds;

TEST(LinkBudgetTest, NothingClosesWhileWithinTheBudget) {
  LinkBudget budget(3, Millis(1000));
  for (std::uint64_t node = 1; node <= 3; ++node) budget.OnOpened(node, Millis(0));
  EXPECT_TRUE(budget.Tick(Millis(100000)).empty());
  EXPECT_EQ(budget.open(), 3u);
}

TEST(LinkBudgetTest, ClosesIdleLinksLeastRecentlyUsedFirstDownToTheBudget) {
  LinkBudget budget(2, Millis(1000));
  for (std::uint64_t node = 1; node <= 5; ++node) budget.OnOpened(node, Millis(node * 100));
  budget.OnUse(1, Millis(5000));  // 1 is busy again
  budget.OnUse(4, Millis(5500));  // 4 too, but not idle long enough yet at 6000
  auto close = budget.Tick(Millis(6000));
  EXPECT_EQ(close, (std::vector<std::uint64_t>{2, 3, 5}));
  EXPECT_EQ(budget.open(), 2u);
  EXPECT_TRUE(budget.Tick(Millis(60000)).empty());
  budget.OnClosed(2);  // the caller's close comes back: harmless
  EXPECT_EQ(budget.open(), 2u);
}

TEST(LinkBudgetTest, RecentlyUsedLinksStayEvenOverTheBudget) {
  LinkBudget budget(1, Millis(1000));
  budget.OnOpened(1, Millis(0));
  budget.OnOpened(2, Millis(0));
  budget.OnUse(1, Millis(900));
  budget.OnUse(2, Millis(950));
  EXPECT_TRUE(budget.Tick(Millis(1000)).empty());  // over budget, but nothing idle
  EXPECT_EQ(budget.Tick(Millis(1920)), (std::vector<std::uint64_t>{1}));
}

TEST(LinkBudgetTest, HeldLinksAreNeverClosed) {
  LinkBudget budget(0, Millis(1000));
  budget.Hold(7);  // a migration starts before its link is up
  budget.OnOpened(7, Millis(0));
  budget.OnOpened(8, Millis(0));
  EXPECT_EQ(budget.Tick(Millis(5000)), (std::vector<std::uint64_t>{8}));
  EXPECT_TRUE(budget.Tick(Millis(9000)).empty());
  budget.Release(7);
  EXPECT_EQ(budget.Tick(Millis(9000)), (std::vector<std::uint64_t>{7}));
  budget.Release(7);  // unbalanced release: ignored
  EXPECT_EQ(budget.open(), 0u);
}

TEST(LinkBudgetTest, UseOfAnUnknownLinkCountsItAsOpen) {
  LinkBudget budget(8, Millis(1000));
  budget.OnUse(3, Millis(10));
  EXPECT_EQ(budget.open(), 1u);
}

}  // namespace
}  // namespace tern::balancer
