#include "tern/agent/event_bus.hpp"

#include <gtest/gtest.h>

namespace tern::agent {
namespace {

TEST(EventBusTest, RecentKeepsTheNewestEventsInOrder) {
  EventBus bus("node1");
  for (int i = 1; i <= 1100; ++i) {
    bus.Publish(i % 2 == 0 ? "balancer" : "job", {{"n", i}});
  }
  auto all = bus.Recent(0, "", 5000);
  ASSERT_EQ(all.size(), EventBus::kRecent) << "a bounded ring";
  EXPECT_EQ(all.front()["n"], 101);
  EXPECT_EQ(all.back()["n"], 1100);
  EXPECT_EQ(all.back()["seq"], 1100);
  EXPECT_EQ(all.back()["node"], "node1");
  EXPECT_EQ(all.back()["type"], "balancer");
  EXPECT_TRUE(all.back().contains("time"));

  auto newest = bus.Recent(0, "", 3);
  ASSERT_EQ(newest.size(), 3u);
  EXPECT_EQ(newest[0]["n"], 1098) << "the newest ones, oldest first";

  auto since = bus.Recent(1095, "", 1000);
  ASSERT_EQ(since.size(), 5u);
  EXPECT_EQ(since[0]["seq"], 1096);

  auto balancer = bus.Recent(1090, "balancer", 1000);
  ASSERT_EQ(balancer.size(), 5u);
  for (const auto& event : balancer) EXPECT_EQ(event["type"], "balancer");
  EXPECT_TRUE(bus.Recent(1100, "", 10).empty());
}

}  // namespace
}  // namespace tern::agent
