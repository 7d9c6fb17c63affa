#include "tern/agent/migration_history.hpp"

#include <gtest/gtest.h>

namespace tern::agent {
namespace {

using nlohmann::json;

json Started(const std::string& id, const std::string& job, const std::string& to) {
  return {{"type", "migration"},
          {"event", "started"},
          {"id", id},
          {"job", job},
          {"from", "node1"},
          {"to", to},
          {"mode", "precopy"},
          {"time", "2026-12-04T10:00:00.000Z"}};
}

json Moved(const std::string& id, const std::string& job, double freeze, double total,
           std::uint64_t bytes) {
  return {{"type", "migration"},
          {"event", "moved"},
          {"id", id},
          {"job", job},
          {"from", "node1"},
          {"to", "node2"},
          {"mode", "precopy"},
          {"freeze_ms", freeze},
          {"total_ms", total},
          {"bytes", bytes},
          {"phases_ms", {{"dump", 30}}},
          {"time", "2026-12-04T10:00:01.000Z"}};
}

TEST(MigrationHistoryTest, AMoveHasItsFiguresAndTheBalancersReason) {
  MigrationHistory history;
  history.OnEvent({{"type", "balancer"},
                   {"action", "migrate"},
                   {"job", "node1.1"},
                   {"to", "node2"},
                   {"kind", "balance"},
                   {"reason", "node1 demand 3.0 of 1.0 CPU"}});
  history.OnEvent(Started("m1", "node1.1", "node2"));
  EXPECT_EQ(history.running(), 1u);
  EXPECT_EQ(history.Recent(10)[0]["outcome"], "running");
  history.OnEvent(Moved("m1", "node1.1", 40, 900, 5000));
  const json recent = history.Recent(10);
  ASSERT_EQ(recent.size(), 1u);
  EXPECT_EQ(recent[0]["outcome"], "moved");
  EXPECT_EQ(recent[0]["kind"], "balance");
  EXPECT_EQ(recent[0]["reason"], "node1 demand 3.0 of 1.0 CPU");
  EXPECT_EQ(recent[0]["freeze_ms"], 40.0);
  EXPECT_EQ(recent[0]["total_ms"], 900.0);
  EXPECT_EQ(recent[0]["bytes"], 5000u);
  EXPECT_EQ(recent[0]["phases_ms"]["dump"], 30);
  EXPECT_EQ(recent[0]["started_at"], "2026-12-04T10:00:00.000Z");
  EXPECT_EQ(recent[0]["ended_at"], "2026-12-04T10:00:01.000Z");
  EXPECT_EQ(history.running(), 0u);
  EXPECT_EQ(history.bytes_moved(), 5000u);
  EXPECT_EQ(history.freeze().count, 1u);
  EXPECT_EQ(history.freeze().buckets[2], 1u) << "40 ms falls in the 50 ms bucket";
  EXPECT_EQ(history.total().buckets[6], 1u) << "900 ms falls in the 1 s bucket";
  EXPECT_EQ((history.outcomes().at({"moved", "precopy"})), 1u);
}

TEST(MigrationHistoryTest, AUsersMoveIsManualAndAFailureKeepsItsError) {
  MigrationHistory history;
  // A balancer action for another destination is not this move's reason.
  history.OnEvent({{"type", "balancer"},
                   {"action", "migrate"},
                   {"job", "node1.2"},
                   {"to", "node3"},
                   {"kind", "drain"},
                   {"reason", "draining"}});
  history.OnEvent(Started("m2", "node1.2", "node2"));
  history.OnEvent({{"type", "migration"},
                   {"event", "failed"},
                   {"id", "m2"},
                   {"job", "node1.2"},
                   {"to", "node2"},
                   {"error", "criu dump failed"},
                   {"time", "t2"}});
  const json recent = history.Recent(10);
  ASSERT_EQ(recent.size(), 1u);
  EXPECT_EQ(recent[0]["kind"], "manual");
  EXPECT_EQ(recent[0]["outcome"], "failed");
  EXPECT_EQ(recent[0]["error"], "criu dump failed");
  EXPECT_EQ((history.outcomes().at({"failed", "precopy"})), 1u);
  EXPECT_EQ(history.freeze().count, 0u) << "a failed move has no freeze time";
}

TEST(MigrationHistoryTest, KeepsTheNewestAndIgnoresMalformedEvents) {
  MigrationHistory history;
  history.OnEvent(json::array());
  history.OnEvent({{"type", "migration"}, {"event", "moved"}});  // no id
  history.OnEvent({{"type", "migration"}, {"event", "moved"}, {"id", 5}, {"freeze_ms", "x"}});
  for (std::size_t i = 0; i < MigrationHistory::kKeep + 5; ++i) {
    history.OnEvent(Started("m" + std::to_string(i), "node1.1", "node2"));
  }
  const json recent = history.Recent(1000);
  ASSERT_EQ(recent.size(), MigrationHistory::kKeep);
  EXPECT_EQ(recent[0]["id"], "m" + std::to_string(MigrationHistory::kKeep + 4)) << "newest first";
  // A move whose start fell off the history is still counted.
  history.OnEvent(Moved("m0", "node1.1", 10, 20, 1));
  EXPECT_EQ(history.freeze().count, 1u);
  EXPECT_EQ(history.Recent(1)[0]["kind"], "unknown");
}

}  // namespace
}  // namespace tern::agent
