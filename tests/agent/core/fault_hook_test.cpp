#include "fault_hook.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "fault_actions.hpp"

namespace tern::agent {
namespace {

using nlohmann::json;

FaultPlan Plan(const json& body) {
  auto plan = FaultPlan::FromJson(body);
  EXPECT_TRUE(plan) << (plan ? "" : plan.error().message);
  return plan ? *plan : FaultPlan{};
}

TEST(FaultHookTest, OffUnlessTheConfigTurnsItOn) {
  FaultHook hook(false);
  auto armed = hook.Arm(Plan({{"side", "source"}, {"phase", "dumping"}, {"action", "kill"}}));
  ASSERT_FALSE(armed);
  EXPECT_NE(armed.error().message.find("[testing] faults"), std::string::npos);
  EXPECT_FALSE(hook.OnPhase(MoveSide::kSource, "dumping", "node1.1", "m1"));
}

TEST(FaultHookTest, FiresOnceOnTheFirstMatchingPhaseEntry) {
  FaultHook hook(true);
  ASSERT_TRUE(hook.Arm(Plan({{"side", "destination"},
                             {"phase", "restoring"},
                             {"action", "cut"},
                             {"cut_ms", 2000},
                             {"job", "node1.4"}})));
  EXPECT_FALSE(hook.OnPhase(MoveSide::kSource, "restoring", "node1.4", "m1")) << "other side";
  EXPECT_FALSE(hook.OnPhase(MoveSide::kDestination, "checking", "node1.4", "m1")) << "phase";
  EXPECT_FALSE(hook.OnPhase(MoveSide::kDestination, "restoring", "node1.5", "m2")) << "job";
  auto hit = hook.OnPhase(MoveSide::kDestination, "restoring", "node1.4", "m3");
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->plan.action, FaultAction::kCutLinks);
  EXPECT_EQ(hit->plan.lasts_for, std::chrono::milliseconds(2000));
  EXPECT_EQ(hit->migration, "m3");
  EXPECT_TRUE(hook.armed().empty());
  EXPECT_FALSE(hook.OnPhase(MoveSide::kDestination, "restoring", "node1.4", "m4")) << "once";
  EXPECT_EQ(hook.StatusJson()["last_hit"]["migration"], "m3");
}

TEST(FaultHookTest, BadPlansAreRefusedWithTheReason) {
  const std::vector<std::pair<json, std::string>> cases = {
      {json::array(), "JSON object"},
      {{{"side", "source"}, {"phase", "dumping"}}, "\"action\""},
      {{{"side", "middle"}, {"phase", "dumping"}, {"action", "kill"}}, "side must be"},
      {{{"side", "source"}, {"phase", "dumping"}, {"action", "nuke"}}, "action must be"},
      {{{"side", "source"}, {"phase", 3}, {"action", "kill"}}, "wrong type"},
      {{{"side", "source"}, {"phase", ""}, {"action", "kill"}}, "phase is empty"},
      {{{"side", "source"}, {"phase", "x"}, {"action", "cut"}}, "cut_ms between"},
      {{{"side", "source"}, {"phase", "x"}, {"action", "cut"}, {"cut_ms", 600000}},
       "cut_ms between"},
      {{{"side", "source"}, {"phase", "x"}, {"action", "kill"}, {"cut_ms", 5}},
       "for action \"cut\" only"},
      {{{"side", "source"}, {"phase", "x"}, {"action", "kill"}, {"when", 5}}, "unknown field"},
      {{{"side", "source"}, {"phase", "x"}, {"action", "degrade"}, {"loss_pct", 5}},
       "for_ms between"},
      {{{"side", "source"}, {"phase", "x"}, {"action", "degrade"}, {"for_ms", 100}},
       "loss_pct or rate_kbit"},
      {{{"side", "source"},
        {"phase", "x"},
        {"action", "degrade"},
        {"for_ms", 100},
        {"loss_pct", 101}},
       "0 to 100"},
      {{{"side", "source"},
        {"phase", "x"},
        {"action", "degrade"},
        {"for_ms", 100},
        {"loss_pct", -1}},
       "0 to 100"},
      {{{"side", "source"},
        {"phase", "x"},
        {"action", "degrade"},
        {"for_ms", 100},
        {"rate_kbit", 4}},
       "rate_kbit must be"},
      {{{"side", "source"},
        {"phase", "x"},
        {"action", "degrade"},
        {"for_ms", 100},
        {"rate_kbit", 5.5}},
       "wrong type"},
      {{{"side", "source"}, {"phase", "x"}, {"action", "cut"}, {"cut_ms", 100}, {"loss_pct", 5}},
       "for action \"degrade\" only"},
      {{{"side", "source"}, {"phase", "x"}, {"action", "lose"}, {"message", "CommitRequest"}},
       "for_ms between"},
      {{{"side", "source"}, {"phase", "x"}, {"action", "lose"}, {"for_ms", 100}},
       "a lose needs message"},
      {{{"side", "source"},
        {"phase", "x"},
        {"action", "lose"},
        {"for_ms", 100},
        {"message", "everything"}},
       "a lose needs message"},
      {{{"side", "source"}, {"phase", "x"}, {"action", "kill"}, {"message", "CommitRequest"}},
       "for action \"lose\" only"},
      {{{"side", "source"},
        {"phase", "x"},
        {"action", "lose"},
        {"for_ms", 100},
        {"message", "CommitRequest"},
        {"loss_pct", 5}},
       "for action \"degrade\" only"},
  };
  for (const auto& [body, reason] : cases) {
    auto plan = FaultPlan::FromJson(body);
    ASSERT_FALSE(plan) << body.dump();
    EXPECT_NE(plan.error().message.find(reason), std::string::npos)
        << body.dump() << ": " << plan.error().message;
  }
}

TEST(FaultHookTest, PlanRoundTripsThroughJson) {
  const json body = {{"side", "source"}, {"phase", "committing"}, {"action", "kill"}, {"job", "j"}};
  EXPECT_EQ(Plan(body).ToJson(), body);
  const json degrade = {{"side", "destination"}, {"phase", "restoring"}, {"action", "degrade"},
                        {"for_ms", 3000},        {"loss_pct", 10},       {"rate_kbit", 20000}};
  EXPECT_EQ(Plan(degrade).ToJson(), degrade);
  const json lose = {{"side", "source"},
                     {"phase", "committing"},
                     {"action", "lose"},
                     {"for_ms", 30000},
                     {"message", "CommitRequest"}};
  EXPECT_EQ(Plan(lose).ToJson(), lose);
}

TEST(FaultHookTest, ALoseFaultDropsItsKindOfRequestUntilItsTimeIsUp) {
  using std::chrono::milliseconds;
  FaultHook hook(true);
  ASSERT_TRUE(hook.Arm(Plan({{"side", "source"},
                             {"phase", "committing"},
                             {"action", "lose"},
                             {"for_ms", 2000},
                             {"message", "CommitRequest"}})));
  const auto t0 = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  EXPECT_FALSE(hook.Loses("CommitRequest", t0)) << "nothing is lost before the fault fires";
  auto hit = hook.OnPhase(MoveSide::kSource, "committing", "node1.2", "m1");
  ASSERT_TRUE(hit);
  hook.StartLosing(hit->plan, t0);
  EXPECT_TRUE(hook.Loses("CommitRequest", t0));
  EXPECT_TRUE(hook.Loses("CommitRequest", t0 + milliseconds(1999)));
  EXPECT_FALSE(hook.Loses("OutcomeQuery", t0 + milliseconds(10))) << "only its own kind";
  EXPECT_FALSE(hook.Loses("CommitRequest", t0 + milliseconds(2000))) << "over when its time is up";
  FaultPlan kill = Plan({{"side", "source"}, {"phase", "committing"}, {"action", "kill"}});
  hook.StartLosing(kill, t0);
  EXPECT_FALSE(hook.Loses("CommitRequest", t0 + milliseconds(2000)))
      << "another action loses nothing";
}

TEST(FaultHookTest, ADegradeFiresWithItsLossRateAndDuration) {
  FaultHook hook(true);
  ASSERT_TRUE(hook.Arm(Plan({{"side", "source"},
                             {"phase", "transferring"},
                             {"action", "degrade"},
                             {"for_ms", 2500},
                             {"loss_pct", 15}})));
  auto hit = hook.OnPhase(MoveSide::kSource, "transferring", "node1.2", "m1");
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->plan.action, FaultAction::kDegradeLinks);
  EXPECT_EQ(hit->plan.lasts_for, std::chrono::milliseconds(2500));
  EXPECT_EQ(hit->plan.loss_pct, 15);
  EXPECT_EQ(hit->plan.rate_kbit, 0) << "uncapped unless asked";
}

TEST(FaultHookTest, SeveralFaultsEachFireOnceOnTheirOwnPhase) {
  FaultHook hook(true);
  std::vector<std::size_t> seen;
  hook.SetOnChange([&](const std::vector<FaultPlan>& armed) { seen.push_back(armed.size()); });
  auto plans = FaultPlan::ListFromJson(json::array(
      {{{"side", "destination"}, {"phase", "done"}, {"action", "kill"}},
       {{"side", "destination"}, {"phase", "fetching_ipc_state"}, {"action", "kill"}}}));
  ASSERT_TRUE(plans) << plans.error().message;
  ASSERT_TRUE(hook.Arm(std::move(*plans)));
  EXPECT_FALSE(hook.OnPhase(MoveSide::kDestination, "restoring", "j", "m"));
  auto first = hook.OnPhase(MoveSide::kDestination, "done", "j", "m");
  ASSERT_TRUE(first);
  EXPECT_EQ(first->plan.phase, "done");
  ASSERT_EQ(hook.armed().size(), 1u) << "the other stays armed";
  EXPECT_FALSE(hook.OnPhase(MoveSide::kDestination, "done", "j", "m")) << "once";
  ASSERT_TRUE(hook.OnPhase(MoveSide::kDestination, "fetching_ipc_state", "j", "m"));
  EXPECT_TRUE(hook.armed().empty());
  // Told after the arm and after each fault that fired, before it is acted on.
  EXPECT_EQ(seen, (std::vector<std::size_t>{2, 1, 0}));
}

TEST(FaultHookTest, FaultListsAreBounded) {
  EXPECT_FALSE(FaultPlan::ListFromJson(json::array()));
  json five = json::array();
  for (int i = 0; i < 5; ++i) {
    five.push_back({{"side", "source"}, {"phase", "dumping"}, {"action", "kill"}});
  }
  auto refused = FaultPlan::ListFromJson(five);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("1 to 4"), std::string::npos);
  auto one =
      FaultPlan::ListFromJson({{"side", "source"}, {"phase", "dumping"}, {"action", "kill"}});
  ASSERT_TRUE(one);
  EXPECT_EQ(one->size(), 1u) << "a single object is a list of one";
}

TEST(FaultHookTest, ArmedFaultsOutliveARestartThroughTheStateDirectory) {
  char pattern[] = "/tmp/tern-faults-XXXXXX";
  ASSERT_NE(::mkdtemp(pattern), nullptr);
  const std::string dir = pattern;
  FaultHook before(true);
  before.SetOnChange([&](const std::vector<FaultPlan>& armed) { SaveArmedFaults(armed, dir); });
  ASSERT_TRUE(before.Arm(Plan({{"side", "source"},
                               {"phase", "commit_unacknowledged"},
                               {"action", "degrade"},
                               {"for_ms", 100},
                               {"rate_kbit", 800}})));
  FaultHook after(true);
  after.Restore(LoadArmedFaults(dir));
  ASSERT_EQ(after.armed().size(), 1u);
  EXPECT_EQ(after.armed()[0].ToJson(), before.armed()[0].ToJson());
  // A fault that fired is gone from the file before it acts (a kill would otherwise fire again
  // on the restarted agent).
  ASSERT_TRUE(before.OnPhase(MoveSide::kSource, "commit_unacknowledged", "j", "m"));
  EXPECT_TRUE(LoadArmedFaults(dir).empty());
  // Garbage, a FIFO and a symlink arm nothing and crash nothing.
  std::ofstream(dir + "/faults-armed.json") << "{not json";
  EXPECT_TRUE(LoadArmedFaults(dir).empty());
  std::filesystem::remove(dir + "/faults-armed.json");
  ASSERT_EQ(::mkfifo((dir + "/faults-armed.json").c_str(), 0600), 0);
  EXPECT_TRUE(LoadArmedFaults(dir).empty());
  std::filesystem::remove(dir + "/faults-armed.json");
  std::ofstream(dir + "/elsewhere.json")
      << R"([{"side":"source","phase":"dumping","action":"kill"}])";
  std::filesystem::create_symlink(dir + "/elsewhere.json", dir + "/faults-armed.json");
  EXPECT_TRUE(LoadArmedFaults(dir).empty());
  FaultHook off(false);
  off.Restore({Plan({{"side", "source"}, {"phase", "dumping"}, {"action", "kill"}})});
  EXPECT_TRUE(off.armed().empty()) << "a node without [testing] faults arms nothing";
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tern::agent
