#include "tern/balancer/gossip.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <deque>
#include <limits>
#include <map>
#include <random>

namespace tern::balancer {
namespace {

using std::chrono::milliseconds;
using Millis = milliseconds;

LoadVector Vector(std::uint64_t node, std::uint64_t seq, double demand = 0) {
  LoadVector v;
  v.node_id = node;
  v.node_name = "n" + std::to_string(node);
  v.seq = seq;
  v.capacity = 1;
  v.demand = demand;
  return v;
}

GossipOptions Options(std::uint64_t self) {
  GossipOptions options;
  options.self_id = self;
  return options;
}

TEST(GossipTest, HigherSeqWinsAndAFresherCopyRefreshesTheAge) {
  Gossip gossip(Options(1));
  EXPECT_TRUE(gossip.OnReceive(2, {{Vector(2, 5, 0.5), Millis(100)}}, Millis(1000)).empty());
  gossip.OnReceive(3, {{Vector(2, 4, 9.0), Millis(0)}}, Millis(1000));  // late gossip
  EXPECT_EQ(gossip.Get(2, Millis(1000))->load.demand, 0.5);
  gossip.OnReceive(3, {{Vector(2, 5, 0.5), Millis(10)}}, Millis(2000));  // same sample, fresher
  EXPECT_EQ(gossip.Get(2, Millis(2000))->age, Millis(10));
  gossip.OnReceive(3, {{Vector(2, 5, 0.5), Millis(5000)}}, Millis(2000));  // staler copy
  EXPECT_EQ(gossip.Get(2, Millis(2000))->age, Millis(10));
  gossip.OnReceive(3, {{Vector(2, 6, 1.5), Millis(0)}}, Millis(2000));
  EXPECT_EQ(gossip.Get(2, Millis(2000))->load.demand, 1.5);
  EXPECT_FALSE(gossip.Get(4, Millis(2000)).has_value());
}

TEST(GossipTest, EntriesExpireAfterMaxAge) {
  auto options = Options(1);
  options.max_age = Millis(30000);
  Gossip gossip(options);
  gossip.OnReceive(2, {{Vector(2, 1), Millis(1000)}, {Vector(3, 1), Millis(20000)}}, Millis(0));
  EXPECT_EQ(gossip.View(Millis(5000)).size(), 2u);
  EXPECT_EQ(gossip.View(Millis(15000)).size(), 1u);  // node 3's entry is 35 s old
  std::mt19937_64 rng(1);
  gossip.Tick(Millis(40000), {2}, rng);
  EXPECT_EQ(gossip.size(), 0u);
  // An entry already older than max_age teaches nothing.
  gossip.OnReceive(2, {{Vector(4, 1), Millis(31000)}}, Millis(40000));
  EXPECT_EQ(gossip.size(), 0u);
}

// The expiry sweep runs late (at most max_age / 8 after an entry expires); until it does, an
// expired entry must act as if it were gone: a lower seq is taken again, a death is not news.
TEST(GossipTest, AnExpiredEntryAwaitingTheSweepCountsAsGone) {
  auto options = Options(1);
  options.max_age = Millis(30000);
  Gossip gossip(options);
  gossip.OnReceive(2, {{Vector(2, 9, 0.5)}, {Vector(3, 4, 0.5)}}, Millis(0));
  // 31 s later, no Tick in between: both are expired but may still be held.
  gossip.OnNodeDead(3, Millis(31000));
  EXPECT_FALSE(gossip.Get(3, Millis(31000)).has_value());
  // Node 2 restarted (its seq begins again): the restarted node's sample is taken.
  gossip.OnReceive(4, {{Vector(2, 1, 1.5), Millis(0)}}, Millis(31000));
  ASSERT_TRUE(gossip.Get(2, Millis(31000)).has_value());
  EXPECT_EQ(gossip.Get(2, Millis(31000))->load.demand, 1.5);
  EXPECT_FALSE(gossip.Get(2, Millis(31000))->dead);
  const auto view = gossip.View(Millis(31000));
  ASSERT_EQ(view.size(), 1u);
  EXPECT_EQ(view[0].load.node_id, 2u);
  std::mt19937_64 rng(1);
  auto sends = gossip.Tick(Millis(31000), {4}, rng);
  ASSERT_EQ(sends.size(), 1u);
  ASSERT_EQ(sends[0].entries.size(), 1u);  // node 3's dead entry is not news: it had expired
  EXPECT_EQ(sends[0].entries[0].load.node_id, 2u);
  gossip.Tick(Millis(40000), {4}, rng);  // past the sweep's slack: node 3's entry is gone
  EXPECT_EQ(gossip.size(), 1u);
}

// Expired entries leave room that new ones take (tern-sim's views turn over every max_age): the
// view, the windows and the balancer's sample hold exactly the live entries, through the turnover.
TEST(GossipTest, ViewsTurnOverThroughExpiryAndStayExact) {
  auto options = Options(1);
  options.window = 4;
  options.max_age = Millis(30000);
  Gossip gossip(options);
  std::mt19937_64 rng(1);
  std::map<std::uint64_t, Millis> born;  // what the view must hold: node -> sampled at
  for (int second = 0; second < 120; ++second) {
    const Millis now(1000 * second);
    // Two new nodes a second, sampled 0-9 s before; some known ones again, fresher.
    for (std::uint64_t k = 0; k < 2; ++k) {
      const std::uint64_t node = 2 + 2 * static_cast<std::uint64_t>(second) + k;
      const Millis age(1000 * ((second + static_cast<int>(k)) % 10));
      gossip.OnReceive(node, {{Vector(node, 1), age}}, now);
      born[node] = now - age;
    }
    if (second >= 5) {
      const std::uint64_t again = 2 + 2 * static_cast<std::uint64_t>(second - 5);
      gossip.OnReceive(again, {{Vector(again, 1), Millis(0)}}, now);
      if (now - born[again] <= options.max_age) born[again] = now;
    }
    gossip.Tick(now, {2}, rng);
    std::erase_if(born, [&](const auto& item) { return now - item.second > options.max_age; });
    const auto view = gossip.View(now);
    ASSERT_EQ(view.size(), born.size()) << "at " << second << " s";
    for (const auto& entry : view) {
      ASSERT_EQ(now - entry.age, born.at(entry.load.node_id)) << "node " << entry.load.node_id;
    }
    // The sample: the freshest, freshest first (ties by node id, the highest first).
    std::vector<std::pair<Millis, std::uint64_t>> expected;
    for (const auto& [node, at] : born) expected.emplace_back(at, node);
    std::sort(expected.begin(), expected.end(), std::greater<>());
    expected.resize(std::min<std::size_t>(expected.size(), 6));
    const auto freshest = gossip.Freshest(now, 6);
    ASSERT_EQ(freshest.size(), expected.size());
    for (std::size_t k = 0; k < expected.size(); ++k) {
      EXPECT_EQ(freshest[k].load.node_id, expected[k].second) << "at " << second << " s";
    }
  }
  // Past max_age and the sweep's slack with no news: nothing is held.
  gossip.Tick(Millis(120000 + 40000), {2}, rng);
  EXPECT_EQ(gossip.size(), 0u);
  EXPECT_TRUE(gossip.View(Millis(160000)).empty());
}

TEST(GossipTest, WindowIsBoundedOwnEntryFirstThenDeathNewsThenFreshest) {
  auto options = Options(1);
  options.window = 4;
  Gossip gossip(options);
  gossip.SetLocal(Vector(1, 7), Millis(10000));
  for (std::uint64_t node = 2; node <= 10; ++node) {
    gossip.OnReceive(node, {{Vector(node, 1), Millis(100 * node)}}, Millis(10000));
  }
  gossip.OnNodeDead(9, Millis(10000));
  std::mt19937_64 rng(1);
  auto sends = gossip.Tick(Millis(10000), {5}, rng);
  ASSERT_EQ(sends.size(), 1u);
  EXPECT_EQ(sends[0].to, 5u);
  const auto& window = sends[0].entries;
  ASSERT_EQ(window.size(), 4u);
  EXPECT_EQ(window[0].load.node_id, 1u);
  EXPECT_EQ(window[1].load.node_id, 9u);
  EXPECT_TRUE(window[1].dead);
  EXPECT_EQ(window[2].load.node_id, 2u);  // the freshest others; not 5, the receiver
  EXPECT_EQ(window[3].load.node_id, 3u);
  // The view tells the dead node apart; Freshest (the balancer's sample) leaves it out.
  EXPECT_TRUE(gossip.Get(9, Millis(10000))->dead);
  for (const auto& entry : gossip.Freshest(Millis(10000), 100)) EXPECT_NE(entry.load.node_id, 9u);
  auto view = gossip.View(Millis(10000));
  ASSERT_EQ(view.size(), 10u);
  EXPECT_EQ(view[0].load.node_id, 1u);  // self first, then by id
  EXPECT_EQ(view[1].load.node_id, 2u);
  // Alive again: the notice stops.
  gossip.OnNodeAlive(9, Millis(11000));
  EXPECT_FALSE(gossip.Get(9, Millis(11000))->dead);
}

TEST(GossipTest, ASampleTakenAfterTheDeathWasSeenOverridesIt) {
  Gossip gossip(Options(1));
  gossip.OnReceive(2, {{Vector(3, 4), Millis(0), true}}, Millis(0));
  EXPECT_TRUE(gossip.Get(3, Millis(0))->dead);
  // A copy of a sample taken before the death was seen tells nothing new.
  gossip.OnReceive(2, {{Vector(3, 4), Millis(1000), false}}, Millis(10));
  EXPECT_TRUE(gossip.Get(3, Millis(10))->dead);
  // Nor does a notice about a node whose sample is younger than the death it reports.
  gossip.OnReceive(2, {{Vector(4, 9), Millis(0), false}}, Millis(5000));
  gossip.OnReceive(6, {{Vector(4, 8), Millis(2000), true}}, Millis(5000));
  EXPECT_FALSE(gossip.Get(4, Millis(5000))->dead);
  gossip.OnReceive(3, {{Vector(3, 5), Millis(0), false}}, Millis(20));
  EXPECT_FALSE(gossip.Get(3, Millis(20))->dead);
}

TEST(GossipTest, NonsenseEntriesAreDroppedWithAReason) {
  Gossip gossip(Options(1));
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto with_nan = Vector(2, 1);
  with_nan.demand = nan;
  auto negative = Vector(3, 1);
  negative.capacity = -1;
  auto no_id = Vector(0, 1);
  auto job_inf = Vector(5, 1);
  job_inf.jobs.push_back(JobLoad{.job_id = "j1", .age_s = std::numeric_limits<double>::infinity()});
  auto absurd_mem = Vector(6, 1);
  absurd_mem.mem_limit_bytes = 1 << 20;
  absurd_mem.mem_used_bytes = 10 << 20;
  auto rejected = gossip.OnReceive(7,
                                   {{with_nan, Millis(0)},
                                    {negative, Millis(0)},
                                    {Vector(4, 1), Millis(-5000)},
                                    {no_id, Millis(0)},
                                    {job_inf, Millis(0)},
                                    {absurd_mem, Millis(0)},
                                    {Vector(8, 1), Millis(0)}},
                                   Millis(100));
  ASSERT_EQ(rejected.size(), 6u);
  EXPECT_NE(rejected[0].find("demand is not a number"), std::string::npos) << rejected[0];
  EXPECT_NE(rejected[1].find("capacity is negative"), std::string::npos) << rejected[1];
  EXPECT_NE(rejected[2].find("in the future"), std::string::npos) << rejected[2];
  EXPECT_NE(rejected[3].find("node id 0"), std::string::npos) << rejected[3];
  EXPECT_NE(rejected[4].find("job j1: age_s"), std::string::npos) << rejected[4];
  EXPECT_NE(rejected[5].find("mem_used"), std::string::npos) << rejected[5];
  EXPECT_EQ(gossip.size(), 1u);  // only node 8
  EXPECT_TRUE(gossip.Get(8, Millis(100)).has_value());

  std::vector<GossipEntry> flood(Gossip::kMaxEntries + 1, GossipEntry{Vector(9, 1)});
  rejected = gossip.OnReceive(7, flood, Millis(100));
  ASSERT_EQ(rejected.size(), 1u);
  EXPECT_FALSE(gossip.Get(9, Millis(100)).has_value());
}

TEST(GossipTest, OwnEntryComingBackIsIgnoredSilently) {
  Gossip gossip(Options(1));
  gossip.SetLocal(Vector(1, 3, 0.5), Millis(0));
  EXPECT_TRUE(gossip.OnReceive(2, {{Vector(1, 2, 9.0), Millis(0)}}, Millis(10)).empty());
  EXPECT_EQ(gossip.Get(1, Millis(10))->load.demand, 0.5);
}

// A sender's own vector that its SetLocal found plausible goes out marked checked (receivers
// skip reading it again); the others' entries never are; a later implausible one is not.
TEST(GossipTest, SharedWindowsMarkOnlyAPlausibleOwnVectorChecked) {
  Gossip relay(Options(2)), receiver(Options(1));
  relay.OnReceive(3, {{Vector(3, 4, 0.5), Millis(200)}}, Millis(1000));
  EXPECT_EQ(relay.SetLocal(Vector(2, 7, 0.25), Millis(1000)), "");
  std::mt19937_64 rng(5);
  auto windows = relay.TickShared(Millis(1500), {1}, rng);
  ASSERT_EQ(windows.size(), 1u);
  ASSERT_EQ(windows[0].entries.size(), 2u);
  EXPECT_EQ(windows[0].entries[0].node_id, 2u);
  EXPECT_TRUE(windows[0].entries[0].checked);
  EXPECT_FALSE(windows[0].entries[1].checked);
  EXPECT_TRUE(receiver.OnReceiveShared(2, windows[0].entries, Millis(1600)).empty());
  EXPECT_EQ(receiver.Get(2, Millis(1600))->load.demand, 0.25);
  LoadVector bad = Vector(2, 8);
  bad.demand = -1;
  EXPECT_NE(relay.SetLocal(bad, Millis(2000)), "");
  windows = relay.TickShared(Millis(2500), {1}, rng);
  ASSERT_FALSE(windows[0].entries.empty());
  EXPECT_FALSE(windows[0].entries[0].checked);
  EXPECT_EQ(receiver.OnReceiveShared(2, windows[0].entries, Millis(2600)).size(), 1u);
  EXPECT_EQ(receiver.Get(2, Millis(2600))->load.seq, 7u);  // the implausible seq 8 was dropped
}

// tern-sim's path: windows handed over as shared vectors must teach what the same windows as
// values teach, and an implausible own vector is still dropped (and reported by SetLocal).
TEST(GossipTest, SharedWindowsMergeLikeValueWindows) {
  Gossip relay(Options(2)), by_value(Options(1)), shared(Options(1));
  relay.OnReceive(3, {{Vector(3, 4, 0.5), Millis(200)}, {Vector(4, 9, 1.5), Millis(900)}},
                  Millis(1000));
  LoadVector bad = Vector(2, 7);
  bad.demand = std::nan("");
  EXPECT_NE(relay.SetLocal(bad, Millis(1000)).find("demand"), std::string::npos);
  std::mt19937_64 rng_a(5), rng_b(5);
  auto values = relay.Tick(Millis(1500), {1}, rng_a);
  auto windows = relay.TickShared(Millis(1500), {1}, rng_b);
  ASSERT_EQ(values.size(), 1u);
  ASSERT_EQ(windows.size(), 1u);
  ASSERT_EQ(windows[0].entries.size(), values[0].entries.size());
  EXPECT_EQ(windows[0].entries[0].node_id, 2u);  // the relay's own entry comes first,
  EXPECT_FALSE(windows[0].entries[0].checked);   // not vouched for: receivers check it
  const auto value_rejected = by_value.OnReceive(2, values[0].entries, Millis(1600));
  const auto shared_rejected = shared.OnReceiveShared(2, windows[0].entries, Millis(1600));
  EXPECT_EQ(shared_rejected, value_rejected);
  ASSERT_EQ(shared_rejected.size(), 1u);  // the relay's own vector
  EXPECT_NE(shared_rejected[0].find("entry about node 2"), std::string::npos);
  const auto a = by_value.View(Millis(1600)), b = shared.View(Millis(1600));
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(b[i].load.node_id, a[i].load.node_id);
    EXPECT_EQ(b[i].load.seq, a[i].load.seq);
    EXPECT_EQ(b[i].age, a[i].age);
  }
  EXPECT_EQ(shared.Get(4, Millis(1600))->load.demand, 1.5);
}

GossipOptions Bounded(std::uint64_t self, std::size_t window, std::size_t view_max) {
  auto options = Options(self);
  options.window = window;
  options.view_max = view_max;
  return options;
}

std::vector<std::uint64_t> Ids(const std::vector<Gossip::ViewEntry>& view) {
  std::vector<std::uint64_t> ids;
  for (const auto& entry : view) ids.push_back(entry.load.node_id);
  return ids;
}

TEST(GossipViewMaxTest, AFullViewEvictsTheStalestAndDropsWhatIsStalerStill) {
  Gossip gossip(Bounded(1, 2, 3));
  gossip.SetLocal(Vector(1, 1), Millis(10000));
  const Millis now(10000);
  gossip.OnReceive(2, {{Vector(2, 1), Millis(1000)}}, now);
  gossip.OnReceive(3, {{Vector(3, 1), Millis(3000)}}, now);
  gossip.OnReceive(4, {{Vector(4, 1), Millis(2000)}}, now);
  EXPECT_EQ(Ids(gossip.View(now)), (std::vector<std::uint64_t>{1, 2, 3, 4}));
  // Fresher than the stalest (node 3, 3 s): it goes.
  gossip.OnReceive(5, {{Vector(5, 1), Millis(500)}}, now);
  EXPECT_EQ(Ids(gossip.View(now)), (std::vector<std::uint64_t>{1, 2, 4, 5}));
  // Staler than all held: dropped, nothing evicted.
  gossip.OnReceive(6, {{Vector(6, 1), Millis(2500)}}, now);
  EXPECT_EQ(Ids(gossip.View(now)), (std::vector<std::uint64_t>{1, 2, 4, 5}));
  // A tie with the stalest (node 4, 2 s): the lower node id is the staler.
  gossip.OnReceive(7, {{Vector(7, 1), Millis(2000)}}, now);
  EXPECT_EQ(Ids(gossip.View(now)), (std::vector<std::uint64_t>{1, 2, 5, 7}));
  gossip.OnReceive(3, {{Vector(3, 1), Millis(2000)}}, now);  // ties node 7, lower id: dropped
  EXPECT_EQ(Ids(gossip.View(now)), (std::vector<std::uint64_t>{1, 2, 5, 7}));
  // A known node's newer sample replaces its entry in place: nothing is evicted.
  gossip.OnReceive(7, {{Vector(7, 2), Millis(100)}}, now);
  EXPECT_EQ(Ids(gossip.View(now)), (std::vector<std::uint64_t>{1, 2, 5, 7}));
  EXPECT_EQ(gossip.Get(7, now)->load.seq, 2u);
  EXPECT_EQ(gossip.size(), 4u);  // 3 others and self
  // A bound below the window counts as the window.
  Gossip small(Bounded(1, 4, 2));
  EXPECT_EQ(small.options().view_max, 4u);
}

// Entries of the same time are ordered by node id, whatever its size: the freshness order
// compares ids below 2^32 from the freshest list and larger ones from the entries.
TEST(GossipViewMaxTest, TiesAreOrderedByNodeIdAcrossThe32BitBoundary) {
  const std::uint64_t big = 1ull << 32;
  const std::vector<std::uint64_t> ids{7, big + 5, 0xfffffffe, big - 1, big + 3, 9, big};
  Gossip gossip(Bounded(1, 2, 4));
  const Millis now(10000);
  gossip.SetLocal(Vector(1, 1), now);
  for (auto id : ids) gossip.OnReceive(id, {{Vector(id, 1), Millis(2000)}}, now);
  // The four highest ids are kept, freshest (highest id) first.
  std::vector<std::uint64_t> freshest;
  for (const auto& entry : gossip.Freshest(now, 4)) freshest.push_back(entry.load.node_id);
  EXPECT_EQ(freshest, (std::vector<std::uint64_t>{big + 5, big + 3, big, big - 1}));
  // A tie with the stalest held (big - 1) and a lower id: dropped; a higher one evicts it.
  gossip.OnReceive(0xfffffffe, {{Vector(0xfffffffe, 2), Millis(2000)}}, now);
  gossip.OnReceive(big + 4, {{Vector(big + 4, 1), Millis(2000)}}, now);
  freshest.clear();
  for (const auto& entry : gossip.Freshest(now, 4)) freshest.push_back(entry.load.node_id);
  EXPECT_EQ(freshest, (std::vector<std::uint64_t>{big + 5, big + 4, big + 3, big}));
}

TEST(GossipViewMaxTest, DeathNewsIsNotEvictedWhileItSpreads) {
  auto options = Bounded(1, 2, 2);
  options.dead_news_for = Millis(10000);
  Gossip gossip(options);
  gossip.SetLocal(Vector(1, 1), Millis(0));
  gossip.OnReceive(2, {{Vector(2, 1), Millis(0)}}, Millis(1000));
  gossip.OnReceive(3, {{Vector(3, 1), Millis(0)}}, Millis(1000));
  gossip.OnNodeDead(2, Millis(2000));
  // A notice about a node this agent never heard of, seen long ago: it still gets in, evicting
  // the stalest ordinary entry (node 3), because its news must go on.
  gossip.OnReceive(9, {{Vector(5, 1), Millis(5000), true}, {Vector(4, 1), Millis(0)}},
                   Millis(3000));
  EXPECT_TRUE(gossip.Get(5, Millis(3000))->dead);
  EXPECT_TRUE(gossip.Get(2, Millis(3000))->dead);
  EXPECT_FALSE(gossip.Get(3, Millis(3000)));
  EXPECT_FALSE(gossip.Get(4, Millis(3000)));  // no room: every entry held is news
  // Fresh entries keep coming; the two notices stay and lead every window.
  std::mt19937_64 rng(3);
  for (int second = 4; second < 11; ++second) {
    const Millis now(1000 * second);
    const std::uint64_t node = 10 + static_cast<std::uint64_t>(second);
    gossip.OnReceive(node, {{Vector(node, 1), Millis(0)}}, now);
    ASSERT_LE(gossip.View(now).size(), 3u);
    auto sends = gossip.Tick(now, {99}, rng);
    ASSERT_EQ(sends.size(), 1u);
    ASSERT_EQ(sends[0].entries.size(), 2u);
    EXPECT_EQ(sends[0].entries[0].load.node_id, 1u);  // own entry
    EXPECT_TRUE(sends[0].entries[1].dead) << "at " << second << " s";
    EXPECT_TRUE(gossip.Get(2, now)->dead) << "at " << second << " s";
    EXPECT_TRUE(gossip.Get(5, now)->dead) << "at " << second << " s";
  }
  // Once the news has been spread for dead_news_for, fresher ordinary entries may evict it.
  gossip.Tick(Millis(14000), {99}, rng);
  gossip.OnReceive(30, {{Vector(30, 1), Millis(0)}, {Vector(31, 1), Millis(0)}}, Millis(14000));
  EXPECT_EQ(Ids(gossip.View(Millis(14000))), (std::vector<std::uint64_t>{1, 30, 31}));
}

TEST(GossipViewMaxTest, ABoundedViewIsTheFreshestPartOfAnUnboundedOne) {
  Gossip bounded(Bounded(1, 4, 8)), unbounded(Bounded(1, 4, 0));
  std::mt19937_64 rng(17);
  std::uniform_int_distribution<std::uint64_t> node(2, 60);
  std::uniform_int_distribution<int> age(0, 40000);  // some arrive already expired
  for (int step = 0; step < 2000; ++step) {
    const Millis now(500 * step);
    std::vector<GossipEntry> window;
    for (int k = 0; k < 4; ++k) {
      const auto id = node(rng);
      // A later sample has a higher seq, as an origin numbers them.
      const Millis sample_age(age(rng));
      const auto seq = static_cast<std::uint64_t>((now - sample_age).count() + 100000);
      window.push_back({Vector(id, seq), sample_age});
    }
    bounded.OnReceive(2, window, now);
    unbounded.OnReceive(2, window, now);
    if (step % 7 == 0) {
      bounded.Tick(now, {2}, rng);
      unbounded.Tick(now, {2}, rng);
    }
    const auto view = bounded.View(now);
    ASSERT_LE(view.size(), 8u) << "at step " << step;
    ASSERT_LE(bounded.size(), 8u) << "at step " << step;
    // The 8 freshest of the unbounded view, by (time of the sample, node id).
    auto all = unbounded.View(now);
    std::sort(all.begin(), all.end(), [&](const auto& a, const auto& b) {
      return std::pair{now - a.age, a.load.node_id} > std::pair{now - b.age, b.load.node_id};
    });
    all.resize(std::min<std::size_t>(all.size(), 8));
    std::sort(all.begin(), all.end(),
              [](const auto& a, const auto& b) { return a.load.node_id < b.load.node_id; });
    ASSERT_EQ(Ids(view), Ids(all)) << "at step " << step;
    for (std::size_t k = 0; k < view.size(); ++k) {
      ASSERT_EQ(view[k].age, all[k].age) << "node " << view[k].load.node_id;
      ASSERT_EQ(view[k].load.seq, all[k].load.seq) << "node " << view[k].load.node_id;
    }
    ASSERT_EQ(Ids(bounded.Freshest(now, 4)), Ids(unbounded.Freshest(now, 4)));
  }
}

// Many agents in one process, messages delivered in-process, some lost.
class InMemoryCluster {
 public:
  InMemoryCluster(std::size_t n, GossipOptions base, double loss, std::uint64_t seed)
      : rng_(seed), loss_(loss) {
    for (std::size_t i = 1; i <= n; ++i) {
      auto options = base;
      options.self_id = i;
      agents_.emplace_back(options);
      live_.push_back(i);
    }
    alive_.assign(n + 1, true);
  }

  // One gossip interval: every live agent samples and sends; returns entries sent.
  std::size_t Round(Millis now) {
    ++round_;
    std::size_t sent = 0;
    std::bernoulli_distribution lost(loss_);
    for (auto id : live_) agents_[id - 1].SetLocal(Vector(id, round_, 0.1 * (id % 10)), now);
    for (auto id : live_) {
      for (auto& send : agents_[id - 1].Tick(now, live_, rng_)) {
        sent += send.entries.size();
        if (lost(rng_)) continue;
        if (!Alive(send.to)) continue;
        auto rejected = agents_[send.to - 1].OnReceive(id, send.entries, now);
        EXPECT_TRUE(rejected.empty());
      }
    }
    return sent;
  }

  bool Alive(std::uint64_t id) const { return alive_[id]; }
  void Kill(std::uint64_t id) {
    std::erase(live_, id);
    alive_[id] = false;
  }
  Gossip& agent(std::uint64_t id) { return agents_[id - 1]; }
  const std::vector<std::uint64_t>& live() const { return live_; }

 private:
  std::vector<Gossip> agents_;
  std::vector<std::uint64_t> live_;
  std::vector<bool> alive_;
  std::mt19937_64 rng_;
  double loss_;
  std::uint64_t round_ = 0;
};

TEST(GossipClusterTest, ThousandAgentsLearnFreshLoadAtABoundedCostPerNode) {
  GossipOptions base;  // the defaults: window 16, fanout 1, max_age 30 s
  constexpr std::size_t kNodes = 1000;
  InMemoryCluster cluster(kNodes, base, 0.05, 42);
  Millis now{0};
  std::size_t sent = 0;
  for (int round = 0; round < 15; ++round, now += Millis(1000)) sent = cluster.Round(now);
  // Every agent knows a good sample of the cluster after a few rounds, none of it stale. How
  // much of it one agent sees is bounded by window x fanout x max_age / interval, not by N.
  std::size_t least = kNodes;
  double age_sum = 0;
  std::size_t ages = 0;
  for (auto id : cluster.live()) {
    auto view = cluster.agent(id).View(now);
    least = std::min(least, view.size());
    for (const auto& entry : view) {
      EXPECT_LE(entry.age, base.max_age);
      age_sum += static_cast<double>(entry.age.count());
      ++ages;
    }
  }
  const double mean_age = age_sum / static_cast<double>(ages);
  std::printf("gossip: 1000 agents, 15 rounds: fewest known %zu, mean view %.0f, mean age %.1f s\n",
              least, static_cast<double>(ages) / kNodes, mean_age / 1000);
  EXPECT_GE(least, 40u) << "fewest nodes one agent knows after 15 rounds";
  EXPECT_LT(mean_age, 10000) << "mean age of the views, ms";
  // The bounded window: entries sent per node per round stay window x fanout.
  EXPECT_LE(sent, kNodes * base.window * base.fanout);
}

TEST(GossipClusterTest, BoundedViewsGiveTheBalancerTheSameSample) {
  GossipOptions base;  // window 16
  auto bounded_options = base;
  bounded_options.view_max = 32;
  constexpr std::size_t kNodes = 1000;
  InMemoryCluster bounded(kNodes, bounded_options, 0.05, 42), unbounded(kNodes, base, 0.05, 42);
  Millis now{0};
  for (int round = 0; round < 40; ++round, now += Millis(1000)) {
    bounded.Round(now);
    unbounded.Round(now);
  }
  std::size_t largest = 0, unbounded_mean = 0;
  for (auto id : bounded.live()) {
    largest = std::max(largest, bounded.agent(id).View(now).size());
    unbounded_mean += unbounded.agent(id).View(now).size();
    // What the Balancer decides on: the 16 freshest, the same nodes with the same ages.
    const auto a = bounded.agent(id).Freshest(now, 16), b = unbounded.agent(id).Freshest(now, 16);
    ASSERT_EQ(Ids(a), Ids(b)) << "agent " << id;
    for (std::size_t k = 0; k < a.size(); ++k) ASSERT_EQ(a[k].age, b[k].age);
  }
  std::printf("gossip: 1000 agents, 40 rounds: largest bounded view %zu, mean unbounded %zu\n",
              largest, unbounded_mean / kNodes);
  EXPECT_LE(largest, 33u);                   // 32 others and self
  EXPECT_GT(unbounded_mean / kNodes, 100u);  // the bound did bind
}

// tern-sim's path (vectors it owns, gossiped through SharedLoads that own nothing; windows into
// reused buffers; a full bounded view evicting without a scan) against the agent's (vectors by
// value, through Tick/OnReceive): every view the same, round after round, with loads that change
// or stay (a refreshed age), losses, a node that dies and the news of its death (the scan path).
TEST(GossipClusterTest, PooledSharedWindowsGiveTheSameViewsAsValueWindows) {
  constexpr std::size_t kNodes = 200;
  constexpr std::uint64_t kDead = 77;
  auto options = Bounded(0, 8, 16);
  std::vector<Gossip> by_value, shared;
  for (std::uint64_t id = 1; id <= kNodes; ++id) {
    options.self_id = id;
    by_value.emplace_back(options);
    shared.emplace_back(options);
  }
  std::deque<LoadVector> owned;  // never freed during the test: what a LoadPool guarantees
  std::vector<std::uint64_t> live;
  for (std::uint64_t id = 1; id <= kNodes; ++id) live.push_back(id);
  std::mt19937_64 rng_value(3), rng_shared(3), loss(4);
  std::vector<SharedGossipSend> sends;
  std::size_t evictions_checked = 0, know_dead = 0;
  for (int round = 1; round <= 60; ++round) {
    const Millis now(1000 * round);
    for (auto id : live) {
      // Every third node keeps its figures for a while: the same vector, a younger age.
      if (id % 3 == 0 && round % 4 != 1) {
        by_value[id - 1].RefreshLocal(now);
        shared[id - 1].RefreshLocal(now);
        continue;
      }
      const auto vector = Vector(id, static_cast<std::uint64_t>(round), 0.1 * (id % 7));
      by_value[id - 1].SetLocal(vector, now);
      owned.push_back(vector);
      shared[id - 1].SetLocalShared(SharedLoad(SharedLoad(), &owned.back()), now);
    }
    if (round == 20) live.erase(std::find(live.begin(), live.end(), kDead));
    if (round == 21) {  // membership tells the first three that still hold it
      std::size_t told = 0;
      for (auto id : live) {
        if (told == 3 || !by_value[id - 1].Get(kDead, now)) continue;
        by_value[id - 1].OnNodeDead(kDead, now);
        shared[id - 1].OnNodeDead(kDead, now);
        ++told;
      }
      ASSERT_GT(told, 0u);
    }
    for (auto id : live) {
      auto values = by_value[id - 1].Tick(now, live, rng_value);
      shared[id - 1].TickShared(now, live, rng_shared, sends);
      ASSERT_EQ(sends.size(), values.size());
      for (std::size_t k = 0; k < values.size(); ++k) {
        ASSERT_EQ(sends[k].to, values[k].to);
        ASSERT_EQ(sends[k].entries.size(), values[k].entries.size());
        if (std::bernoulli_distribution(0.05)(loss)) continue;
        const auto to = values[k].to;
        if (std::find(live.begin(), live.end(), to) == live.end()) continue;
        EXPECT_EQ(shared[to - 1].OnReceiveShared(id, sends[k].entries, now),
                  by_value[to - 1].OnReceive(id, values[k].entries, now));
      }
    }
    for (std::uint64_t id = 1; id <= kNodes; ++id) {
      const auto a = by_value[id - 1].View(now), b = shared[id - 1].View(now);
      ASSERT_EQ(Ids(b), Ids(a)) << "agent " << id << ", round " << round;
      for (std::size_t k = 0; k < a.size(); ++k) {
        ASSERT_EQ(b[k].load.seq, a[k].load.seq);
        ASSERT_EQ(b[k].age, a[k].age);
        ASSERT_EQ(b[k].dead, a[k].dead);
        ASSERT_EQ(b[k].load.demand, a[k].load.demand);
      }
      ASSERT_TRUE(shared[id - 1].VectorsMatch());
      if (a.size() == 17) ++evictions_checked;  // a full view: new entries evict
      if (round == 25 && b.size() > 0) {
        const auto entry = shared[id - 1].Get(kDead, now);
        know_dead += entry && entry->dead ? 1 : 0;
      }
    }
  }
  EXPECT_GT(evictions_checked, kNodes);
  EXPECT_GT(know_dead, 0u) << "the death news spread (the eviction scan's case)";
}

TEST(GossipClusterTest, BytesPerNodePerRoundDoNotGrowWithTheCluster) {
  GossipOptions base;
  auto per_node = [&](std::size_t n) {
    InMemoryCluster cluster(n, base, 0.05, 7);
    std::size_t sent = 0;
    Millis now{0};
    for (int round = 0; round < 30; ++round, now += Millis(1000)) {
      auto s = cluster.Round(now);
      if (round >= 20) sent += s;  // steady state
    }
    return static_cast<double>(sent) / 10.0 / static_cast<double>(n);
  };
  const double small = per_node(16);
  const double large = per_node(1000);
  EXPECT_LE(large, static_cast<double>(base.window * base.fanout));
  EXPECT_LE(large, small * 1.1) << "entries per node per round: 16 nodes " << small
                                << ", 1000 nodes " << large;
}

TEST(GossipClusterTest, DeathNewsReachesEveryoneBeforeTheEntriesExpire) {
  GossipOptions base;
  constexpr std::size_t kNodes = 1000;
  InMemoryCluster cluster(kNodes, base, 0.05, 11);
  Millis now{0};
  for (int round = 0; round < 10; ++round, now += Millis(1000)) cluster.Round(now);
  constexpr std::uint64_t kDead = 500;
  // Whoever talked to it last still holds its freshest entry.
  cluster.Kill(kDead);
  const Millis died = now;
  for (int round = 0; round < 10; ++round, now += Millis(1000)) cluster.Round(now);
  // Membership (dead_after 10 s) tells one agent that knows it.
  std::uint64_t witness = 0;
  for (auto id : cluster.live()) {
    if (cluster.agent(id).Get(kDead, now)) {
      witness = id;
      break;
    }
  }
  ASSERT_NE(witness, 0u);
  cluster.agent(witness).OnNodeDead(kDead, now);
  // Its last entry expires max_age after death; before then nobody believes it alive.
  const Millis expiry = died + base.max_age - Millis(1000);
  while (now < expiry) {
    cluster.Round(now);
    now += Millis(1000);
  }
  std::size_t know_dead = 0;
  for (auto id : cluster.live()) {
    auto entry = cluster.agent(id).Get(kDead, now);
    if (!entry) continue;
    EXPECT_TRUE(entry->dead) << "agent " << id << " still sees node " << kDead << " alive";
    ++know_dead;
  }
  std::printf("gossip: death news reached %zu of 1000 agents\n", know_dead);
  EXPECT_GT(know_dead, kNodes / 2) << "agents that heard the news";
}

}  // namespace
}  // namespace tern::balancer

namespace tern::balancer {
namespace {

TEST(IdIndexTest, AgreesWithAMapThroughInsertsAndErases) {
  IdIndex index;
  std::map<std::uint64_t, std::uint32_t> model;
  std::mt19937_64 rng(5);
  for (int op = 0; op < 20000; ++op) {
    const std::uint64_t id = 1 + rng() % 500;
    if (rng() % 3 == 0) {
      index.Erase(id);
      model.erase(id);
    } else {
      const auto value = static_cast<std::uint32_t>(rng());
      index.Insert(id, value);
      model[id] = value;
    }
  }
  ASSERT_EQ(index.size(), model.size());
  for (std::uint64_t id = 1; id <= 500; ++id) {
    auto* found = index.Find(id);
    ASSERT_EQ(found != nullptr, model.contains(id)) << id;
    if (found) {
      EXPECT_EQ(*found, model[id]);
    }
  }
  EXPECT_EQ(index.Find(0), nullptr);
}

}  // namespace
}  // namespace tern::balancer
