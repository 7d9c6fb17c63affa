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

// Records what a subscriber was sent.
class Collect : public http::EventStream {
 public:
  using http::EventStream::Send;
  bool Send(std::string_view event, std::string_view data, std::string_view) override {
    got.push_back(std::string(event) + " " + std::string(data));
    return true;
  }
  bool IsOpen() const override { return true; }
  std::vector<std::string> got;
};

TEST(EventBusTest, AUserSeesNodeEventsAndTheirOwnJobsOnly) {
  EventBus bus("node1", [](const std::string& job) -> std::optional<uid_t> {
    if (job == "node1.9") return 1001;
    return std::nullopt;
  });
  auto alice = std::make_shared<Collect>();
  auto root = std::make_shared<Collect>();
  bus.Subscribe(alice, -1, uid_t{1000});
  bus.Subscribe(root, -1, std::nullopt);
  bus.Publish("job", {{"id", "node1.1"}, {"uid", 1000}, {"argv", {"alice-job"}}});
  bus.Publish("job", {{"id", "node1.2"}, {"uid", 1001}, {"argv", {"bob-secret"}}});
  bus.Publish("migration", {{"event", "started"}, {"job", "node1.2"}});  // learned: bob's
  bus.Publish("migration", {{"event", "started"}, {"job", "node1.1"}});
  bus.Publish("balancer", {{"action", "skip"}, {"job", "node1.9"}});   // the hook: bob's
  bus.Publish("balancer", {{"action", "place"}, {"job", "node7.3"}});  // unknown: root only
  bus.NoteOwner("node7.4", 1000);
  bus.Publish("balancer", {{"action", "place"}, {"job", "node7.4"}});
  bus.Publish("node", {{"name", "node2"}, {"state", "dead"}});
  bus.Publish("job", {{"id", "node1.3"}, {"argv", {"no uid"}}});  // root only

  auto text = [](const std::vector<std::string>& got) {
    std::string all;
    for (const auto& line : got) all += line + "\n";
    return all;
  };
  const std::string seen = text(alice->got);
  EXPECT_EQ(alice->got.size(), 4u) << seen;
  EXPECT_NE(seen.find("alice-job"), std::string::npos);
  EXPECT_EQ(seen.find("bob-secret"), std::string::npos) << seen;
  EXPECT_EQ(seen.find("node1.2"), std::string::npos) << seen;
  EXPECT_EQ(seen.find("node1.9"), std::string::npos) << seen;
  EXPECT_EQ(seen.find("node7.3"), std::string::npos) << seen;
  EXPECT_NE(seen.find("node7.4"), std::string::npos) << seen;
  EXPECT_NE(seen.find("dead"), std::string::npos) << "node events are everyone's";
  EXPECT_EQ(root->got.size(), 9u) << text(root->got);

  EXPECT_EQ(bus.Recent(0, "", 100, uid_t{1000}).size(), 4u);
  EXPECT_EQ(bus.Recent(0, "", 100, uid_t{1001}).size(), 4u) << "bob: 2 jobs, skip, node";
  EXPECT_EQ(bus.Recent(0, "", 100).size(), 9u);
  // A late subscriber's replay is filtered the same way.
  auto late = std::make_shared<Collect>();
  bus.Subscribe(late, -1, uid_t{1000});
  EXPECT_EQ(late->got.size(), 4u) << text(late->got);
}

}  // namespace
}  // namespace tern::agent
