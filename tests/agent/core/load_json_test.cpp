#include "tern/agent/load_json.hpp"

#include <gtest/gtest.h>

namespace tern::agent {
namespace {

balancer::GossipEntry Entry(std::uint64_t id, std::int64_t age_ms, bool dead = false) {
  balancer::GossipEntry entry;
  entry.load.node_id = id;
  entry.load.node_name = "node" + std::to_string(id);
  entry.load.address = "10.0.0." + std::to_string(id) + ":7071";
  entry.load.api_address = "10.0.0." + std::to_string(id) + ":7070";
  entry.load.seq = 7;
  entry.load.capacity = 2.5;
  entry.load.demand = 1.25;
  entry.load.draining = true;
  entry.age = std::chrono::milliseconds(age_ms);
  entry.dead = dead;
  return entry;
}

TEST(GossipJsonTest, RoundTripKeepsEntriesAgesAndDeathNotices) {
  const auto parsed = GossipFromJson(GossipToJson({Entry(1, 0), Entry(2, 1500, true)}));
  ASSERT_TRUE(parsed) << parsed.error().message;
  ASSERT_EQ(parsed->entries.size(), 2u);
  EXPECT_TRUE(parsed->rejected.empty());
  EXPECT_EQ(parsed->entries[1].load.node_id, 2u);
  EXPECT_EQ(parsed->entries[1].load.api_address, "10.0.0.2:7070");
  EXPECT_EQ(parsed->entries[1].age.count(), 1500);
  EXPECT_TRUE(parsed->entries[1].dead);
  EXPECT_FALSE(parsed->entries[0].dead);
  EXPECT_DOUBLE_EQ(parsed->entries[0].load.capacity, 2.5);
  EXPECT_DOUBLE_EQ(parsed->entries[0].load.demand, 1.25);
  EXPECT_TRUE(parsed->entries[0].load.draining);
}

TEST(GossipJsonTest, KeepaliveIsAnEmptyWindow) {
  const auto parsed = GossipFromJson(R"({"entries":[]})");
  ASSERT_TRUE(parsed);
  EXPECT_TRUE(parsed->entries.empty());
}

TEST(GossipJsonTest, RefusesMoreThan64Entries) {
  std::vector<balancer::GossipEntry> many;
  for (std::uint64_t i = 1; i <= 65; ++i) many.push_back(Entry(i, 0));
  const auto parsed = GossipFromJson(GossipToJson(many));
  ASSERT_FALSE(parsed);
  EXPECT_NE(parsed.error().message.find("65 entries"), std::string::npos);
  many.pop_back();
  EXPECT_TRUE(GossipFromJson(GossipToJson(many)));
}

TEST(GossipJsonTest, RefusesMoreThanOneMebibyte) {
  const std::string huge = R"({"entries":[],"pad":")" + std::string(kMaxGossipBytes, 'x') + "\"}";
  const auto parsed = GossipFromJson(huge);
  ASSERT_FALSE(parsed);
  EXPECT_NE(parsed.error().message.find("over the limit"), std::string::npos);
}

TEST(GossipJsonTest, MalformedBodiesFailAndMalformedEntriesAreDroppedAndNamed) {
  EXPECT_FALSE(GossipFromJson("not json"));
  EXPECT_FALSE(GossipFromJson("[1,2]"));
  EXPECT_FALSE(GossipFromJson(R"({"entries":{}})"));
  const auto parsed = GossipFromJson(
      R"({"entries":[1,{"load":{"node_id":"zz","node_name":"x","seq":1},"age_ms":0},)"
      R"({"load":{"node_id":"0a","node_name":"x","seq":1},"age_ms":-5},)"
      R"({"load":{"node_id":"0a","node_name":"x","seq":1,"load1":"high"},"age_ms":0},)"
      R"({"load":{"node_id":"0b","node_name":"ok","seq":1},"age_ms":3,"dead":false}]})");
  ASSERT_TRUE(parsed);
  ASSERT_EQ(parsed->entries.size(), 1u);
  EXPECT_EQ(parsed->entries[0].load.node_name, "ok");
  EXPECT_EQ(parsed->rejected.size(), 4u);
}

TEST(GossipJsonTest, IntegersOutOfRangeOrWithAFractionAreRefusedNotCast) {
  // A float where an integer belongs: cast by nlohmann's get<integer>(), 1e300 is undefined
  // behaviour (UBSan) and 0.9 would become 0. Each entry names its field; the good one stays.
  const auto parsed = GossipFromJson(
      R"({"entries":[{"load":{"node_id":"0a","node_name":"a","seq":1e300},"age_ms":0},)"
      R"({"load":{"node_id":"0a","node_name":"a","seq":1,"cpus":1e300},"age_ms":0},)"
      R"({"load":{"node_id":"0a","node_name":"a","seq":1,"runnable":0.9},"age_ms":0},)"
      R"({"load":{"node_id":"0a","node_name":"a","seq":1,"mem_used_bytes":-1},"age_ms":0},)"
      R"({"load":{"node_id":"0a","node_name":"a","seq":1,"jobs":[{"rss_bytes":5e40}]},)"
      R"("age_ms":0},)"
      R"({"load":{"node_id":"0a","node_name":"a","seq":1},"age_ms":1e300},)"
      R"({"load":{"node_id":"0b","node_name":"ok","seq":2,"cpus":4},"age_ms":3}]})");
  ASSERT_TRUE(parsed);
  ASSERT_EQ(parsed->entries.size(), 1u);
  EXPECT_EQ(parsed->entries[0].load.node_name, "ok");
  EXPECT_EQ(parsed->entries[0].load.cpus, 4);
  ASSERT_EQ(parsed->rejected.size(), 6u);
  const char* fields[] = {"seq", "cpus", "runnable", "mem_used_bytes", "rss_bytes", "age_ms"};
  for (std::size_t k = 0; k < 6; ++k) {
    EXPECT_NE(parsed->rejected[k].find(fields[k]), std::string::npos) << parsed->rejected[k];
  }
}

}  // namespace
}  // namespace tern::agent
