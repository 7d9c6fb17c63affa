#include "tern/agent/metrics.hpp"

#include <gtest/gtest.h>

#include <set>
#include <sstream>

namespace tern::agent {
namespace {

TEST(MetricsTest, EveryFamilyHasHelpAndTypeOnceAndLabelsAreEscaped) {
  MigrationHistory history;
  history.OnEvent({{"type", "migration"},
                   {"event", "started"},
                   {"id", "m"},
                   {"job", "j"},
                   {"from", "a"},
                   {"to", "b"},
                   {"mode", "precopy"},
                   {"time", "t"}});
  history.OnEvent({{"type", "migration"},
                   {"event", "moved"},
                   {"id", "m"},
                   {"job", "j"},
                   {"freeze_ms", 30.0},
                   {"total_ms", 700.0},
                   {"bytes", 100},
                   {"time", "t"}});
  MetricsInput input;
  input.node = "node\"1";
  balancer::LoadVector load;
  load.load1 = 1.5;
  load.cpus = 2;
  load.capacity = 2;
  input.nodes = {{.name = "node\"1", .alive = true, .load = load},
                 {.name = "node2", .alive = false}};
  input.jobs_by_state = {{"running", 2}, {"exited", 1}};
  input.migrations = &history;
  input.rss_bytes = 1234;
  const std::string text = RenderMetrics(input);

  std::set<std::string> help, type;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("# HELP ", 0) == 0) {
      EXPECT_TRUE(help.insert(line.substr(7, line.find(' ', 7) - 7)).second) << line;
    } else if (line.rfind("# TYPE ", 0) == 0) {
      EXPECT_TRUE(type.insert(line.substr(7, line.find(' ', 7) - 7)).second) << line;
    }
  }
  EXPECT_EQ(help, type);
  EXPECT_NE(text.find("tern_node_up{node=\"node\\\"1\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("tern_node_up{node=\"node2\"} 0\n"), std::string::npos);
  EXPECT_NE(text.find("tern_jobs{node=\"node\\\"1\",state=\"running\"} 2\n"), std::string::npos);
  EXPECT_NE(
      text.find("tern_migrations_total{node=\"node\\\"1\",outcome=\"moved\",mode=\"precopy\"} 1"),
      std::string::npos);
  // Buckets are cumulative: 30 ms is under 0.05 s and every bucket above it.
  EXPECT_NE(text.find("tern_migration_freeze_seconds_bucket{node=\"node\\\"1\",le=\"0.025\"} 0"),
            std::string::npos);
  EXPECT_NE(text.find("tern_migration_freeze_seconds_bucket{node=\"node\\\"1\",le=\"0.05\"} 1"),
            std::string::npos);
  EXPECT_NE(text.find("tern_migration_freeze_seconds_bucket{node=\"node\\\"1\",le=\"+Inf\"} 1"),
            std::string::npos);
  EXPECT_NE(text.find("tern_migration_duration_seconds_sum{node=\"node\\\"1\"} 0.7"),
            std::string::npos);
  EXPECT_NE(text.find("process_resident_memory_bytes{node=\"node\\\"1\"} 1234"), std::string::npos);
}

TEST(MetricsTest, SelfUsageReadsThisProcess) {
  const SelfUsage usage = ReadSelfUsage();
  EXPECT_GT(usage.rss_bytes, 0u);
  EXPECT_GT(usage.start_time_seconds, 1.6e9) << "a Unix time after 2020";
}

}  // namespace
}  // namespace tern::agent
