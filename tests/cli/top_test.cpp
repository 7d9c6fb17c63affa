#include "tern/cli/top.hpp"

#include <gtest/gtest.h>

namespace tern::cli {
namespace {

using nlohmann::json;

TEST(TopModelTest, ShowsNodesWithLoadBarsJobsAndAMigrationAsItHappens) {
  TopModel model;
  model.SetNodes(json::array(
      {{{"name", "node1"},
        {"state", "alive"},
        {"load", 1.0},
        {"capacity", 2.0},
        {"demand", 1.0},
        {"jobs", 1},
        {"mem_used_bytes", 1 << 20},
        {"mem_limit_bytes", 1 << 30}},
       {{"name", "node2"}, {"state", "alive"}, {"capacity", 2.0}, {"demand", 0.0}, {"jobs", 0}}}));
  model.SetJobs(json::array(
      {{{"id", "node1.1"}, {"name", "spin"}, {"node", "node1"}, {"state", "running"}}}));
  std::string screen = model.Render(80, 40, "12:00:00");
  EXPECT_NE(screen.find("2 nodes, 1 jobs running"), std::string::npos) << screen;
  EXPECT_NE(screen.find("[########........]"), std::string::npos) << "half of 2 CPUs\n" << screen;
  EXPECT_NE(screen.find("node1.1"), std::string::npos);

  model.OnEvent({{"type", "migration"},
                 {"event", "started"},
                 {"id", "m"},
                 {"job", "node1.1"},
                 {"from", "node1"},
                 {"to", "node2"},
                 {"mode", "precopy"},
                 {"time", "2026-12-04T12:00:01.000Z"}});
  screen = model.Render(80, 40, "12:00:01");
  EXPECT_NE(screen.find("node1 -> node2  moving"), std::string::npos) << screen;
  model.OnEvent({{"type", "migration"},
                 {"event", "moved"},
                 {"id", "m"},
                 {"job", "node1.1"},
                 {"from", "node1"},
                 {"to", "node2"},
                 {"freeze_ms", 42},
                 {"total_ms", 800},
                 {"bytes", 3 << 20},
                 {"time", "2026-12-04T12:00:02.000Z"}});
  // The source then reports the job ended there: the running copy stays.
  model.OnEvent(
      {{"type", "job"}, {"id", "node1.1"}, {"name", "spin"}, {"node", "node1"}, {"state", "lost"}});
  screen = model.Render(80, 40, "12:00:02");
  EXPECT_NE(screen.find("moved: freeze 42 ms, total 800 ms, 3.0M"), std::string::npos) << screen;
  EXPECT_NE(screen.find("node1.1       spin          node2"), std::string::npos) << screen;
}

TEST(TopModelTest, FitsTheScreenItIsGiven) {
  TopModel model;
  json jobs = json::array();
  for (int i = 0; i < 100; ++i) {
    jobs.push_back({{"id", "node1." + std::to_string(i)}, {"node", "node1"}, {"state", "running"}});
  }
  model.SetJobs(jobs);
  const std::string screen = model.Render(60, 24, "12:00:00");
  std::size_t lines = 0;
  for (char c : screen) lines += c == '\n' ? 1 : 0;
  EXPECT_LE(lines, 24u);
  EXPECT_NE(screen.find("more"), std::string::npos) << "says jobs were left out";
  for (std::size_t start = 0, end; (end = screen.find('\n', start)) != std::string::npos;
       start = end + 1) {
    EXPECT_LE(end - start, 60u);
  }
}

TEST(TopModelTest, IgnoresMalformedInput) {
  TopModel model;
  model.SetNodes(json("nope"));
  model.SetJobs(json::object());
  model.OnEvent(json::array());
  model.OnEvent({{"type", "migration"}, {"event", 5}});
  EXPECT_NE(model.Render(80, 24, "x").find("0 nodes"), std::string::npos);
}

}  // namespace
}  // namespace tern::cli
