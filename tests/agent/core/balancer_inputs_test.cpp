#include "balancer_inputs.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace tern::agent {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

NodeView Node(const std::string& name, const std::string& state = "alive") {
  NodeView view;
  view.name = name;
  view.id = std::hash<std::string>{}(name);
  view.state = state;
  view.last_seen_ms = 300;
  view.age_ms = 1200;
  balancer::LoadVector load;
  load.node_name = name;
  load.cpus = 4;
  load.mem_total_bytes = 8ull << 30;
  view.load = load;
  return view;
}

TEST(ToNodeStateTest, MeasuredFiguresAreTakenAsTheyAre) {
  NodeView view = Node("node2");
  view.load->capacity = 0.5;
  view.load->speed = 1.5;
  view.load->demand = 3;
  view.load->mem_limit_bytes = 1ull << 30;
  view.load->mem_used_bytes = 900ull << 20;
  view.load->draining = true;
  const auto state = ToNodeState(view);
  EXPECT_EQ(state.name, "node2");
  EXPECT_EQ(state.id, view.id);
  EXPECT_TRUE(state.alive);
  EXPECT_TRUE(state.draining);
  EXPECT_FALSE(state.self);
  EXPECT_DOUBLE_EQ(state.capacity, 0.5);
  EXPECT_DOUBLE_EQ(state.speed, 1.5);
  EXPECT_DOUBLE_EQ(state.demand, 3);
  EXPECT_EQ(state.mem_limit_bytes, 1ull << 30);
  EXPECT_EQ(state.mem_used_bytes, 900ull << 20);
  EXPECT_EQ(state.age, milliseconds(1200)) << "the age of its load figures";
}

TEST(ToNodeStateTest, UnmeasuredFiguresFallBackToWhatTheNodeSends) {
  NodeView view = Node("node1");
  view.self = true;
  balancer::JobLoad busy;
  busy.job_id = "a";
  busy.cpu_share = 0.9;
  busy.rss_bytes = 100 << 20;
  balancer::JobLoad wanting;
  wanting.job_id = "b";
  wanting.cpu_share = 0.5;
  wanting.runnable = 2;  // wants more than it gets: runnable counts, not the share
  wanting.rss_bytes = 50 << 20;
  view.load->jobs = {busy, wanting};
  const auto state = ToNodeState(view);
  EXPECT_TRUE(state.self);
  EXPECT_DOUBLE_EQ(state.capacity, 4) << "cpus x speed 1";
  EXPECT_DOUBLE_EQ(state.speed, 1);
  EXPECT_DOUBLE_EQ(state.demand, 2.9);
  EXPECT_EQ(state.mem_limit_bytes, 8ull << 30) << "MemTotal";
  EXPECT_EQ(state.mem_used_bytes, 150ull << 20) << "the jobs' RSS";
  view.load->cpus = 0;
  EXPECT_DOUBLE_EQ(ToNodeState(view).capacity, 1) << "never a capacity of 0";
}

TEST(ToNodeStateTest, NodesNotAliveOrWithoutLoadAreNotAlive) {
  EXPECT_FALSE(ToNodeState(Node("n", "suspect")).alive);
  EXPECT_FALSE(ToNodeState(Node("n", "dead")).alive);
  NodeView unknown = Node("n");
  unknown.load.reset();
  EXPECT_FALSE(ToNodeState(unknown).alive) << "nothing is known about it";
  EXPECT_EQ(ToNodeState(unknown).age, milliseconds(300)) << "no figures: its last sign of life";
  unknown.last_seen_ms = -5;
  EXPECT_EQ(ToNodeState(unknown).age, milliseconds(0));
}

nlohmann::json Moved(double bytes, double freeze_ms, double dump_ms, double transfer_ms) {
  return {{"event", "moved"},
          {"bytes", bytes},
          {"freeze_ms", freeze_ms},
          {"total_ms", 5000},
          {"phases_ms", {{"dump", dump_ms}, {"transfer_and_restore", transfer_ms}}}};
}

TEST(MigrationCostEstimatorTest, DefaultsUntilAMoveThenRunningMeans) {
  MigrationCostEstimator estimator;
  const balancer::MigrationCosts defaults;
  EXPECT_EQ(estimator.costs().samples, 0);
  EXPECT_DOUBLE_EQ(estimator.costs().bytes_per_s, defaults.bytes_per_s);
  EXPECT_DOUBLE_EQ(estimator.costs().freeze_s, defaults.freeze_s);
  // 100 MB in 0.25 s of dump and 0.25 s of transfer: 200 MB/s; freeze 80 ms.
  estimator.OnMoved(Moved(100e6, 80, 250, 250));
  EXPECT_EQ(estimator.costs().samples, 1);
  EXPECT_DOUBLE_EQ(estimator.costs().bytes_per_s, 200e6);
  EXPECT_DOUBLE_EQ(estimator.costs().freeze_s, 0.08);
  // 100 MB in 1 s: the mean of 200 and 100 MB/s; freeze mean of 80 and 120 ms.
  estimator.OnMoved(Moved(100e6, 120, 500, 500));
  EXPECT_DOUBLE_EQ(estimator.costs().bytes_per_s, 150e6);
  EXPECT_NEAR(estimator.costs().freeze_s, 0.1, 1e-12);
}

TEST(MigrationCostEstimatorTest, SmallMovesTellTheFreezeNotTheRate) {
  MigrationCostEstimator estimator;
  estimator.OnMoved(Moved(300e3, 60, 40, 30));  // 300 kB in 70 ms is fixed costs, not a rate
  EXPECT_EQ(estimator.costs().samples, 1);
  EXPECT_DOUBLE_EQ(estimator.costs().freeze_s, 0.06);
  EXPECT_DOUBLE_EQ(estimator.costs().bytes_per_s, balancer::MigrationCosts{}.bytes_per_s);
}

TEST(MigrationCostEstimatorTest, NonsenseIsIgnored) {
  MigrationCostEstimator estimator;
  estimator.OnMoved(nlohmann::json::array());
  estimator.OnMoved({{"bytes", "many"}, {"freeze_ms", 10}});
  estimator.OnMoved(Moved(-1, 10, 1, 1));
  estimator.OnMoved(Moved(100e6, std::numeric_limits<double>::infinity(), 1, 1));
  estimator.OnMoved(Moved(100e6, 10, 0, 0) /* no time: total_ms (5 s) stands in */);
  EXPECT_EQ(estimator.costs().samples, 1);
  EXPECT_DOUBLE_EQ(estimator.costs().bytes_per_s, 20e6);
  EXPECT_TRUE(std::isfinite(estimator.costs().freeze_s));
}

TEST(CpuShareMeterTest, ShareIsCpuSecondsOverWallSeconds) {
  CpuShareMeter meter;
  EXPECT_DOUBLE_EQ(meter.Update("j", 10, milliseconds(0)), 0) << "nothing to compare yet";
  EXPECT_DOUBLE_EQ(meter.Update("j", 13, milliseconds(2000)), 1.5);
  EXPECT_DOUBLE_EQ(meter.Update("j", 13.1, milliseconds(2500)), 1.5) << "too soon: last share";
  EXPECT_DOUBLE_EQ(meter.Update("j", 13, milliseconds(4000)), 0) << "a reset counter is not < 0";
  meter.KeepOnly({});
  EXPECT_DOUBLE_EQ(meter.Update("j", 20, milliseconds(6000)), 0) << "forgotten";
}

TEST(SkipNotesTest, AReasonIsToldWhenItChangesNotEveryInterval) {
  SkipNotes notes(seconds(60));
  EXPECT_TRUE(notes.ShouldTell("j", "pinned", seconds(0)));
  EXPECT_FALSE(notes.ShouldTell("j", "pinned", seconds(3)));
  EXPECT_FALSE(notes.ShouldTell("j", "pinned", seconds(300)));
  EXPECT_TRUE(notes.ShouldTell("j", "the job holds a terminal", seconds(303)));
  EXPECT_TRUE(notes.ShouldTell("k", "pinned", seconds(303))) << "per job";
  // Only the figures changed: told again after a minute, not every interval.
  EXPECT_TRUE(notes.ShouldTell("m", "gain 1.2 s < 2 x cost 0.8 s", seconds(0)));
  EXPECT_FALSE(notes.ShouldTell("m", "gain 1.5 s < 2 x cost 0.8 s", seconds(3)));
  EXPECT_TRUE(notes.ShouldTell("m", "gain 9.5 s < 2 x cost 8 s", seconds(61)));
  notes.KeepOnly({"k"});
  EXPECT_TRUE(notes.ShouldTell("j", "the job holds a terminal", seconds(304))) << "forgotten";
  EXPECT_FALSE(notes.ShouldTell("k", "pinned", seconds(304)));
}

TEST(SkipNotesTest, WordsReplaceNumbers) {
  EXPECT_EQ(SkipNotes::Words("node1 demand 3.0 of 0.5 CPU, age 40 s."),
            "node# demand # of # CPU, age # s.");
}

TEST(MigrateEventTest, CarriesTheDecisionAndItsReason) {
  balancer::MigrateDecision decision;
  decision.job = "node1.4";
  decision.to = 7;
  decision.to_name = "node3";
  decision.kind = "memory";
  decision.postcopy = true;
  decision.reason = "node1 memory 95% of 1 GiB";
  const auto event = MigrateEvent(decision);
  EXPECT_EQ(event["action"], "migrate");
  EXPECT_EQ(event["job"], "node1.4");
  EXPECT_EQ(event["to"], "node3");
  EXPECT_EQ(event["kind"], "memory");
  EXPECT_EQ(event["mode"], "postcopy");
  EXPECT_EQ(event["reason"], "node1 memory 95% of 1 GiB");
}

}  // namespace
}  // namespace tern::agent
