#include "tern/balancer/balancer.hpp"

#include <gtest/gtest.h>

#include <map>

namespace tern::balancer {
namespace {

using Millis = std::chrono::milliseconds;
constexpr std::uint64_t kMiB = 1 << 20;

NodeState Node(std::uint64_t id, double capacity, double demand, bool self = false) {
  NodeState node;
  node.id = id;
  node.name = "node" + std::to_string(id);
  node.self = self;
  node.capacity = capacity;
  node.demand = demand;
  return node;
}

LocalJob Job(std::string id, double age_s = 40, std::uint64_t rss = 64 * kMiB) {
  LocalJob job;
  job.id = std::move(id);
  job.runnable = 1;
  job.cpu_share = 0.1;
  job.age_s = age_s;
  job.rss_bytes = rss;
  return job;
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(BalancerTest, PlacesOnTheLeastLoadedFreshNodeAndCountsItsOwnPlacements) {
  Balancer balancer({});
  std::vector<NodeState> view = {Node(1, 0.5, 2, true), Node(2, 0.5, 1), Node(3, 0.5, 0)};
  auto first = balancer.Place(view, Millis(1000));
  EXPECT_EQ(first.node, 3u);
  EXPECT_TRUE(Contains(first.reason, "node3 demand 0.0 of 0.5 CPU")) << first.reason;
  // The same (older) information: the first placement counts against node3.
  for (auto& node : view) node.age += Millis(500);
  EXPECT_EQ(balancer.Place(view, Millis(1500)).node, 2u);
  // Information sampled after the placements replaces them.
  view = {Node(1, 0.5, 2, true), Node(2, 0.5, 1), Node(3, 0.5, 1)};
  EXPECT_NE(balancer.Place(view, Millis(5000)).node, 1u);
}

TEST(BalancerTest, APlacementCountsUntilInformationSampledAfterItArrivesEvenWhileOutOfView) {
  Balancer balancer({});
  auto at = [](NodeState node, Millis age) {
    node.age = age;
    return node;
  };
  const NodeState self = Node(1, 1, 5, true);
  // t=1 s: node2 (sampled at 1 s) is the least loaded.
  auto placed = balancer.Place({self, at(Node(2, 1, 0), Millis(0))}, Millis(1000));
  ASSERT_EQ(placed.node, 2u);
  EXPECT_TRUE(Contains(placed.reason, "node2 demand 0.0 of 1.0 CPU")) << placed.reason;
  // t=2 s, the same sample (1 s old): the first placement counts against node2.
  placed = balancer.Place({self, at(Node(2, 1, 0), Millis(1000))}, Millis(2000));
  ASSERT_EQ(placed.node, 2u);
  EXPECT_TRUE(Contains(placed.reason, "node2 demand 1.0 of 1.0 CPU")) << placed.reason;
  // t=3 s, node2 out of the sample: node3 gets the job, node2's placements are kept.
  placed = balancer.Place({self, at(Node(3, 1, 3), Millis(0))}, Millis(3000));
  ASSERT_EQ(placed.node, 3u);
  // t=4 s, node2 back with its sample of 1 s: both of its placements still count.
  placed = balancer.Place({self, at(Node(2, 1, 0), Millis(3000))}, Millis(4000));
  ASSERT_EQ(placed.node, 2u);
  EXPECT_TRUE(Contains(placed.reason, "node2 demand 2.0 of 1.0 CPU")) << placed.reason;
  // t=5 s, node2 sampled after them (and with the jobs in its own figure): they count no more.
  placed = balancer.Place({self, at(Node(2, 1, 3), Millis(0))}, Millis(5000));
  ASSERT_EQ(placed.node, 2u);
  EXPECT_TRUE(Contains(placed.reason, "node2 demand 3.0 of 1.0 CPU")) << placed.reason;
}

TEST(BalancerTest, PlacesLocallyOnTiesAndSkipsDrainingDeadAndStaleNodes) {
  Balancer balancer({});
  auto stale = Node(5, 4, 0);
  stale.age = Millis(60000);
  auto dead = Node(6, 4, 0);
  dead.alive = false;
  auto draining = Node(7, 4, 0);
  draining.draining = true;
  std::vector<NodeState> view = {Node(1, 1, 0, true), Node(2, 1, 0.1), stale, dead, draining};
  auto placed = balancer.Place(view, Millis(0));
  EXPECT_EQ(placed.node, 1u) << placed.reason;
  EXPECT_TRUE(Contains(placed.reason, "local node on ties")) << placed.reason;
  view[0].draining = true;
  EXPECT_EQ(balancer.Place(view, Millis(0)).node, 2u);
  view.resize(1);
  EXPECT_EQ(balancer.Place(view, Millis(0)).node, 0u);
}

TEST(BalancerTest, KeepsANewJobLocalWhileThisNodeHasAFreeCpuWhenAskedTo) {
  BalancerOptions options;
  options.place_local_when_free = true;
  Balancer balancer(options);
  // Here 1 of 2 CPUs wanted, node2 idle with 4: least-loaded placement would pick node2.
  std::vector<NodeState> view = {Node(1, 2, 1, true), Node(2, 4, 0)};
  auto placed = balancer.Place(view, Millis(0));
  EXPECT_EQ(placed.node, 1u) << placed.reason;
  EXPECT_TRUE(Contains(placed.reason, "free CPU")) << placed.reason;
  // That placement counts here: no free CPU left, so the next job goes to node2.
  EXPECT_EQ(balancer.Place(view, Millis(0)).node, 2u);
  // Without the option, the same view sends the first job away.
  Balancer plain({});
  EXPECT_EQ(plain.Place(view, Millis(0)).node, 2u);
}

TEST(BalancerTest, MovesALongRunningJobOffACrowdedNodeWithItsReason) {
  Balancer balancer({});
  std::vector<NodeState> view = {Node(1, 0.5, 3, true), Node(2, 0.5, 0.5), Node(3, 0.5, 0.1)};
  std::vector<LocalJob> jobs = {Job("a"), Job("b"), Job("c")};
  auto decisions = balancer.Decide(view, jobs, {}, 0, Millis(100000));
  ASSERT_EQ(decisions.migrate.size(), 1u);  // max_outgoing 1
  const auto& move = decisions.migrate[0];
  EXPECT_EQ(move.to, 3u);
  EXPECT_EQ(move.kind, "balance");
  EXPECT_FALSE(move.postcopy);
  EXPECT_TRUE(Contains(move.reason,
                       "node1 demand 3.0 of 0.5 CPU, node3 0.1 of 0.5; job age 40 s, "
                       "64 MiB, est. cost 0.5 s, gain"))
      << move.reason;
}

// tern-sim turns the reasons off: the same placements and moves, without their words.
TEST(BalancerTest, WithoutReasonsTheChoicesAreTheSame) {
  BalancerOptions quiet;
  quiet.reasons = false;
  Balancer with({}), without(quiet);
  std::vector<NodeState> view = {Node(1, 0.5, 3, true), Node(2, 0.5, 0.5), Node(3, 0.5, 0.1)};
  for (int k = 0; k < 3; ++k) {
    const auto a = with.Place(view, Millis(1000 + k)), b = without.Place(view, Millis(1000 + k));
    EXPECT_EQ(b.node, a.node);
    EXPECT_FALSE(a.reason.empty());
    EXPECT_TRUE(b.reason.empty());
  }
  std::vector<LocalJob> jobs = {Job("a"), Job("b"), Job("c")};
  const auto a = with.Decide(view, jobs, {}, 0, Millis(100000));
  const auto b = without.Decide(view, jobs, {}, 0, Millis(100000));
  ASSERT_EQ(a.migrate.size(), 1u);
  ASSERT_EQ(b.migrate.size(), a.migrate.size());
  EXPECT_EQ(b.migrate[0].job, a.migrate[0].job);
  EXPECT_EQ(b.migrate[0].to, a.migrate[0].to);
  EXPECT_EQ(b.migrate[0].kind, a.migrate[0].kind);
  EXPECT_FALSE(a.migrate[0].reason.empty());
  EXPECT_TRUE(b.migrate[0].reason.empty());
}

TEST(BalancerTest, YoungJobsAndSmallGainsStay) {
  Balancer balancer({});
  std::vector<NodeState> view = {Node(1, 0.5, 2, true), Node(2, 0.5, 0)};
  // Too young for min_age.
  EXPECT_TRUE(balancer.Decide(view, {Job("a", 2), Job("b", 3)}, {}, 0, Millis(0)).migrate.empty());
  // Old enough, but 4 GiB at 200 MB/s costs 21 s against ~3 s of gain.
  EXPECT_TRUE(
      balancer.Decide(view, {Job("a", 6, 4096 * kMiB), Job("b", 6, 4096 * kMiB)}, {}, 0, Millis(0))
          .migrate.empty());
  // The measured rate decides: at 10 GB/s the same move pays.
  MigrationCosts fast{10e9, 0.05, 3};
  EXPECT_EQ(
      balancer
          .Decide(view, {Job("a", 6, 4096 * kMiB), Job("b", 6, 4096 * kMiB)}, fast, 0, Millis(0))
          .migrate.size(),
      1u);
}

TEST(BalancerTest, HysteresisNeedsALoadGapAboveImbalance) {
  Balancer balancer({});
  // 3 jobs on one CPU against 2 on another: moving one gives 2 against 3, no better.
  std::vector<NodeState> view = {Node(1, 1, 3, true), Node(2, 1, 2)};
  EXPECT_TRUE(
      balancer.Decide(view, {Job("a"), Job("b"), Job("c")}, {}, 0, Millis(0)).migrate.empty());
}

TEST(BalancerTest, CrowdedJobsPreferFasterNodesButALoneJobStays) {
  Balancer balancer({});
  auto fast = Node(2, 4, 1);  // 2 CPUs of speed 2, one busy
  fast.speed = 2;
  auto plain = Node(3, 2, 0);  // 2 CPUs of speed 1, idle
  std::vector<NodeState> view = {Node(1, 1, 2, true), fast, plain};
  auto decisions = balancer.Decide(view, {Job("a", 100), Job("b", 100)}, {}, 0, Millis(0));
  ASSERT_EQ(decisions.migrate.size(), 1u);
  EXPECT_EQ(decisions.migrate[0].to, 2u);
  EXPECT_TRUE(Contains(decisions.migrate[0].reason, "speed 1.0 here, 2.0 there"))
      << decisions.migrate[0].reason;
  // Alone on its node the job runs at full speed here; moving it for a faster CPU would take
  // that CPU from the jobs placement sends there (tern-sim measured this as a loss).
  view[0].demand = 1;
  EXPECT_TRUE(balancer.Decide(view, {Job("c", 100)}, {}, 0, Millis(0)).migrate.empty());
}

TEST(BalancerTest, PinnedAndRefusedJobsAreSkippedWithTheirReason) {
  Balancer balancer({});
  std::vector<NodeState> view = {Node(1, 0.5, 3, true), Node(2, 0.5, 0)};
  auto pinned = Job("p");
  pinned.pinned = true;
  auto refused = Job("r");
  refused.refused = "uses a device";
  for (int round = 0; round < 5; ++round) {
    auto decisions = balancer.Decide(view, {pinned, refused}, {}, 0, Millis(round * 3000));
    EXPECT_TRUE(decisions.migrate.empty());
    ASSERT_EQ(decisions.skipped.size(), 2u);
    EXPECT_EQ(decisions.skipped[0].reason, "pinned");
    EXPECT_EQ(decisions.skipped[1].reason, "cannot move: uses a device");
  }
}

TEST(BalancerTest, AJobThatJustMovedStays) {
  Balancer balancer({});
  std::vector<NodeState> view = {Node(1, 0.5, 3, true), Node(2, 0.5, 0)};
  balancer.OnJobArrived("a", Millis(10000));
  auto decisions = balancer.Decide(view, {Job("a")}, {}, 0, Millis(20000));
  EXPECT_TRUE(decisions.migrate.empty());
  ASSERT_EQ(decisions.skipped.size(), 1u);
  EXPECT_TRUE(Contains(decisions.skipped[0].reason, "stay_after_move"));
  EXPECT_EQ(balancer.Decide(view, {Job("a")}, {}, 0, Millis(40000)).migrate.size(), 1u);
}

TEST(BalancerTest, AFailedMoveIsNotRetriedSoon) {
  Balancer balancer({});
  std::vector<NodeState> view = {Node(1, 0.5, 3, true), Node(2, 0.5, 0)};
  auto first = balancer.Decide(view, {Job("a")}, {}, 0, Millis(0));
  ASSERT_EQ(first.migrate.size(), 1u);
  balancer.OnMigrationStarted("a", 2, Millis(0));
  // In flight: not decided again, and the budget is used.
  EXPECT_TRUE(balancer.Decide(view, {Job("a"), Job("b")}, {}, 1, Millis(3000)).migrate.empty());
  balancer.OnMigrationEnded("a", false, Millis(5000));
  auto again = balancer.Decide(view, {Job("a")}, {}, 0, Millis(60000));
  EXPECT_TRUE(again.migrate.empty());
  ASSERT_EQ(again.skipped.size(), 1u);
  EXPECT_TRUE(Contains(again.skipped[0].reason, "retry_after_failure"));
  EXPECT_EQ(balancer.Decide(view, {Job("a")}, {}, 0, Millis(125000)).migrate.size(), 1u);
}

TEST(BalancerTest, PlannedMovesCountAtTheDestinationUntilFreshInformation) {
  BalancerOptions options;
  options.max_outgoing = 4;
  Balancer balancer(options);
  // Two idle peers: four moves spread over both rather than herding onto the first.
  std::vector<NodeState> view = {Node(1, 1, 6, true), Node(2, 1, 0), Node(3, 1, 0)};
  std::vector<LocalJob> jobs;
  for (int i = 0; i < 6; ++i) jobs.push_back(Job("j" + std::to_string(i)));
  auto decisions = balancer.Decide(view, jobs, {}, 0, Millis(0));
  std::map<std::uint64_t, int> to;
  for (const auto& move : decisions.migrate) ++to[move.to];
  EXPECT_EQ(to[2], 2);
  EXPECT_EQ(to[3], 2);
  // Three seconds later, the same (older) information: nothing more goes there.
  for (auto& node : view) node.age = Millis(3000);
  jobs.resize(2);
  EXPECT_TRUE(balancer.Decide(view, jobs, {}, 0, Millis(3000)).migrate.empty());
}

TEST(BalancerTest, MemoryUsheringMovesTheBiggestJobsFirstByPostCopy) {
  BalancerOptions options;
  options.max_outgoing = 2;
  Balancer balancer(options);
  auto self = Node(1, 2, 1, true);
  self.mem_limit_bytes = 1024 * kMiB;
  self.mem_used_bytes = 1000 * kMiB;
  auto roomy = Node(2, 1, 0.5);
  roomy.mem_limit_bytes = 4096 * kMiB;
  roomy.mem_used_bytes = 100 * kMiB;
  auto full = Node(3, 1, 0);
  full.mem_limit_bytes = 1024 * kMiB;
  full.mem_used_bytes = 900 * kMiB;
  std::vector<LocalJob> jobs = {Job("small", 1, 50 * kMiB), Job("big", 1, 600 * kMiB),
                                Job("mid", 1, 300 * kMiB)};
  auto decisions = balancer.Decide({self, roomy, full}, jobs, {}, 0, Millis(0));
  // Moving "big" alone brings memory under 90%: one move is enough.
  ASSERT_EQ(decisions.migrate.size(), 1u);
  const auto& move = decisions.migrate[0];
  EXPECT_EQ(move.job, "big");
  EXPECT_EQ(move.to, 2u);
  EXPECT_EQ(move.kind, "memory");
  EXPECT_TRUE(move.postcopy);
  EXPECT_TRUE(Contains(move.reason, "node1 memory 1000 MiB of 1024 MiB (above 90%)"))
      << move.reason;
}

TEST(BalancerTest, ADrainedNodeEmptiesOneMoveAtATime) {
  Balancer balancer({});
  std::map<std::string, std::uint64_t> where = {{"a", 1}, {"b", 1}, {"c", 1}, {"p", 1}};
  Millis now{0};
  for (int round = 0; round < 10; ++round, now += Millis(3000)) {
    auto self = Node(1, 1, 0, true);
    self.draining = true;
    std::vector<LocalJob> jobs;
    for (const auto& [job, node] : where) {
      if (node != 1) continue;
      jobs.push_back(Job(job, 1));  // young and cheap: drain moves whatever the gain
      jobs.back().pinned = job == "p";
    }
    self.demand = static_cast<double>(jobs.size());
    auto decisions = balancer.Decide({self, Node(2, 1, 0), Node(3, 1, 0)}, jobs, {}, 0, now);
    ASSERT_LE(decisions.migrate.size(), 1u);
    for (const auto& move : decisions.migrate) {
      EXPECT_EQ(move.kind, "drain");
      where[move.job] = move.to;
    }
  }
  for (const auto& [job, node] : where) EXPECT_EQ(node == 1, job == "p") << job;
}

TEST(BalancerTest, TalkingJobsAreNotPulledApart) {
  Balancer balancer({});
  // Crowded enough to move one job, but "a" and "b" exchange 100 MB/s here.
  std::vector<NodeState> view = {Node(1, 1, 2, true), Node(2, 1, 0.5)};
  auto a = Job("a", 40);
  a.peer_nodes = {{1, 100e6}};
  auto b = Job("b", 40);
  b.peer_nodes = {{1, 100e6}};
  auto decisions = balancer.Decide(view, {a, b}, {}, 0, Millis(0));
  EXPECT_TRUE(decisions.migrate.empty());
  // Without the talk, one would go.
  a.peer_nodes.clear();
  EXPECT_EQ(balancer.Decide(view, {a, b}, {}, 0, Millis(0)).migrate.size(), 1u);
}

TEST(BalancerTest, TalkingJobsArePulledTogether) {
  Balancer balancer({});
  // "a" runs alone here and talks to a job on node2, which has room.
  std::vector<NodeState> view = {Node(1, 1, 1, true), Node(2, 2, 1)};
  auto a = Job("a", 40);
  a.peer_nodes = {{2, 50e6}};
  auto decisions = balancer.Decide(view, {a}, {}, 0, Millis(0));
  ASSERT_EQ(decisions.migrate.size(), 1u);
  EXPECT_EQ(decisions.migrate[0].kind, "affinity");
  EXPECT_TRUE(Contains(decisions.migrate[0].reason, "from IPC with jobs on node2"))
      << decisions.migrate[0].reason;
  // The peer on node2 does not come the other way.
  auto b = Job("b", 40);
  b.peer_nodes = {{1, 50e6}};
  std::vector<NodeState> there = {Node(1, 1, 1), Node(2, 2, 1, true)};
  EXPECT_TRUE(Balancer({}).Decide(there, {b}, {}, 0, Millis(0)).migrate.empty());
}

TEST(BalancerTest, DisabledDecidesNothing) {
  BalancerOptions options;
  options.enabled = false;
  Balancer balancer(options);
  EXPECT_TRUE(
      balancer
          .Decide({Node(1, 0.5, 3, true), Node(2, 0.5, 0)}, {Job("a"), Job("b")}, {}, 0, Millis(0))
          .migrate.empty());
}

// Six busy jobs on a 0.5-CPU node with two idle 0.5-CPU peers: every agent decides each
// interval on what it sees; moves go out one at a time and stop once balanced.
TEST(BalancerTest, SixBusyJobsSpreadOverThreeNodesAndStop) {
  constexpr int kNodes = 3;
  std::vector<Balancer> balancers(kNodes, Balancer({}));
  std::map<std::string, std::uint64_t> where;
  std::map<std::string, int> moves;
  for (int i = 0; i < 6; ++i) where["job" + std::to_string(i)] = 1;
  Millis now{0};
  int last_move_round = -1;
  for (int round = 0; round < 40; ++round, now += Millis(3000)) {
    std::vector<MigrateDecision> started;
    std::vector<std::uint64_t> from;
    for (std::uint64_t node = 1; node <= kNodes; ++node) {
      std::vector<NodeState> view;
      for (std::uint64_t other = 1; other <= kNodes; ++other) {
        double demand = 0;
        for (const auto& [job, at] : where) demand += at == other ? 1 : 0;
        view.push_back(Node(other, 0.5, demand, other == node));
      }
      std::vector<LocalJob> jobs;
      for (const auto& [job, at] : where) {
        if (at == node) jobs.push_back(Job(job, 40 + 3.0 * round));
      }
      auto decisions = balancers[node - 1].Decide(view, jobs, {}, 0, now);
      ASSERT_LE(decisions.migrate.size(), 1u);
      for (const auto& move : decisions.migrate) {
        started.push_back(move);
        from.push_back(node);
      }
    }
    // The moves complete within the interval.
    for (std::size_t i = 0; i < started.size(); ++i) {
      const auto& move = started[i];
      balancers[from[i] - 1].OnMigrationStarted(move.job, move.to, now);
      balancers[from[i] - 1].OnMigrationEnded(move.job, true, now + Millis(1000));
      balancers[move.to - 1].OnJobArrived(move.job, now + Millis(1000));
      where[move.job] = move.to;
      ++moves[move.job];
      last_move_round = round;
    }
  }
  std::map<std::uint64_t, int> count;
  for (const auto& [job, at] : where) ++count[at];
  EXPECT_EQ(count[1], 2);
  EXPECT_EQ(count[2], 2);
  EXPECT_EQ(count[3], 2);
  for (const auto& [job, n] : moves) EXPECT_LE(n, 2) << job;
  EXPECT_LT(last_move_round, 10) << "still moving";
}

}  // namespace
}  // namespace tern::balancer
