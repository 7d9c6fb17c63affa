#include "tern/balancer/load_table.hpp"

#include <gtest/gtest.h>

#include <random>
#include <set>

namespace tern::balancer {
namespace {

using std::chrono::milliseconds;

LoadVector Vector(std::uint64_t node, std::uint64_t seq, double load = 0) {
  LoadVector v;
  v.node_id = node;
  v.node_name = "n" + std::to_string(node);
  v.seq = seq;
  v.load1 = load;
  return v;
}

TEST(LoadTableTest, HigherSeqWinsWhateverTheOrder) {
  LoadTable table;
  EXPECT_TRUE(table.Merge(Vector(1, 5, 0.5), milliseconds(10)));
  EXPECT_FALSE(table.Merge(Vector(1, 4, 9.0), milliseconds(20)));  // late gossip
  EXPECT_FALSE(table.Merge(Vector(1, 5, 9.0), milliseconds(30)));  // duplicate
  EXPECT_EQ(table.Get(1)->load1, 0.5);
  EXPECT_TRUE(table.Merge(Vector(1, 6, 1.5), milliseconds(40)));
  EXPECT_EQ(table.Get(1)->load1, 1.5);
  EXPECT_FALSE(table.Get(2).has_value());
}

TEST(LoadTableTest, GossipWindowIsTheFreshestN) {
  LoadTable table;
  for (std::uint64_t node = 1; node <= 5; ++node) {
    table.Merge(Vector(node, 1), milliseconds(node * 10));
  }
  auto window = table.GossipWindow(2, milliseconds(100));
  ASSERT_EQ(window.size(), 2u);
  EXPECT_EQ(window[0].node_id, 5u);
  EXPECT_EQ(window[1].node_id, 4u);
  EXPECT_EQ(table.GossipWindow(10, milliseconds(100)).size(), 5u);
}

TEST(LoadTableTest, ExpireDropsStaleEntries) {
  LoadTable table;
  table.Merge(Vector(1, 1), milliseconds(0));
  table.Merge(Vector(2, 1), milliseconds(900));
  table.Expire(milliseconds(500), milliseconds(1000));
  EXPECT_FALSE(table.Get(1));
  EXPECT_TRUE(table.Get(2));
}

// Simulated (not real) agents: what gossip of small windows to random peers converges to.
TEST(LoadTableTest, GossipSpreadsToEveryNodeInFewRounds) {
  constexpr int kNodes = 20;
  constexpr std::size_t kWindow = 4;
  std::vector<LoadTable> tables(kNodes);
  std::mt19937 random(42);
  int rounds = 0;
  auto everyone_knows_everyone = [&] {
    for (const auto& table : tables) {
      if (table.size() != kNodes) return false;
    }
    return true;
  };
  while (!everyone_knows_everyone() && rounds < 200) {
    ++rounds;
    const milliseconds now(rounds * 1000);
    for (int i = 0; i < kNodes; ++i) {
      tables[i].Merge(Vector(i + 1, rounds), now);
      int peer = std::uniform_int_distribution<int>(0, kNodes - 2)(random);
      if (peer >= i) ++peer;
      for (const auto& entry : tables[i].GossipWindow(kWindow, now)) tables[peer].Merge(entry, now);
    }
  }
  std::printf("gossip: %d simulated agents, window %zu, full view after %d rounds\n", kNodes,
              kWindow, rounds);
  EXPECT_TRUE(everyone_knows_everyone());
  EXPECT_LT(rounds, 100);
}

}  // namespace
}  // namespace tern::balancer
