#include "tern/agent/config.hpp"

#include <gtest/gtest.h>

namespace tern::agent {
namespace {

// Each of `texts` is refused, and the error names `named`.
void ExpectRefusedNaming(std::initializer_list<const char*> texts, const std::string& named) {
  for (const char* text : texts) {
    auto config = ParseConfig(text, "t.toml");
    ASSERT_FALSE(config) << text;
    EXPECT_NE(config.error().message.find(named), std::string::npos) << config.error().message;
  }
}

TEST(ConfigTest, EmptyDocumentGivesDocumentedDefaults) {
  auto config = ParseConfig("", "test.toml");
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_EQ(config->state_dir, "/var/lib/tern");
  EXPECT_EQ(config->api_unix_socket, "/run/tern/ternd.sock");
  EXPECT_EQ(config->api_listen, "") << "no TCP API unless asked for";
  EXPECT_EQ(config->api_tokens_file, "/etc/tern/tokens");
  EXPECT_EQ(config->api_max_connections, 256u);
  EXPECT_EQ(config->api_request_timeout.count(), 30000);
  EXPECT_EQ(config->api_event_queue_bytes, 1u << 20);
  EXPECT_EQ(config->cluster_listen, "0.0.0.0:7071");
  EXPECT_EQ(config->heartbeat.count(), 1000);
  EXPECT_EQ(config->suspect_after.count(), 3000);
  EXPECT_EQ(config->dead_after.count(), 10000);
  EXPECT_EQ(config->max_links, 8u);
  EXPECT_EQ(config->gossip_fanout, 1u);
  EXPECT_EQ(config->gossip_window, 16u);
  EXPECT_EQ(config->gossip_view_max, 64u);
  EXPECT_EQ(config->link_idle.count(), 30000);
  EXPECT_EQ(config->cancel_grace.count(), 5000);
  EXPECT_EQ(config->cgroup, "");
}

TEST(ConfigTest, ReadsEverySection) {
  auto config = ParseConfig(R"(
[node]
name = "node7"
state_dir = "/tmp/s"
cgroup = "tern-node7"
[api]
unix_socket = "/tmp/s.sock"
listen = ""
tokens_file = "/tmp/tokens"
max_connections = 7
request_timeout_ms = 1500
event_queue_bytes = 65536
[cluster]
listen = "0.0.0.0:9000"
advertise = "10.0.0.7:9000"
seeds = ["10.0.0.1:9000", "10.0.0.2:9000"]
secret = "s3cret"
heartbeat_ms = 250
suspect_after_ms = 1000
dead_after_ms = 2000
max_links = 2
gossip_fanout = 3
gossip_window = 5
gossip_view_max = 200
link_idle_ms = 1500
[jobs]
cancel_grace_ms = 100
[log]
level = "debug"
)",
                            "test.toml");
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_EQ(config->node_name, "node7");
  EXPECT_EQ(config->cgroup, "tern-node7");
  EXPECT_EQ(config->api_listen, "");
  EXPECT_EQ(config->api_tokens_file, "/tmp/tokens");
  EXPECT_EQ(config->api_max_connections, 7u);
  EXPECT_EQ(config->api_request_timeout.count(), 1500);
  EXPECT_EQ(config->api_event_queue_bytes, 65536u);
  EXPECT_EQ(config->seeds.size(), 2u);
  EXPECT_EQ(config->secret, "s3cret");
  EXPECT_EQ(config->heartbeat.count(), 250);
  EXPECT_EQ(config->max_links, 2u);
  EXPECT_EQ(config->gossip_fanout, 3u);
  EXPECT_EQ(config->gossip_window, 5u);
  EXPECT_EQ(config->gossip_view_max, 200u);
  EXPECT_EQ(config->link_idle.count(), 1500);
  EXPECT_EQ(config->cancel_grace.count(), 100);
  EXPECT_EQ(config->log_level, "debug");
}

TEST(ConfigTest, BalancerSectionDefaultsAndKeys) {
  auto defaults = ParseConfig("", "test.toml");
  ASSERT_TRUE(defaults);
  EXPECT_TRUE(defaults->balancer.enabled);
  EXPECT_EQ(defaults->balancer.interval.count(), 3000);
  EXPECT_EQ(defaults->balancer.max_outgoing, 1);
  auto config = ParseConfig(R"(
[balancer]
enabled = false
interval_ms = 500
max_outgoing = 2
min_age_ms = 1000
stay_after_move_ms = 9000
retry_after_failure_ms = 7000
min_gain_ratio = 3
imbalance = 0.5
memory_high = 0.8
)",
                            "test.toml");
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_FALSE(config->balancer.enabled);
  EXPECT_EQ(config->balancer.interval.count(), 500);
  EXPECT_EQ(config->balancer.max_outgoing, 2);
  EXPECT_EQ(config->balancer.min_age.count(), 1000);
  EXPECT_EQ(config->balancer.stay_after_move.count(), 9000);
  EXPECT_EQ(config->balancer.retry_after_failure.count(), 7000);
  EXPECT_DOUBLE_EQ(config->balancer.min_gain_ratio, 3.0);
  EXPECT_DOUBLE_EQ(config->balancer.imbalance, 0.5);
  EXPECT_DOUBLE_EQ(config->balancer.memory_high, 0.8);
}

TEST(ConfigTest, BalancerKeysOutOfRangeNameTheKey) {
  ExpectRefusedNaming({"[balancer]\nenabled = 1\n", "[balancer]\nmemory_high = 1.5\n",
                       "[balancer]\nmax_outgoing = -1\n", "[balancer]\nimbalance = nan\n",
                       "[balancer]\ninterval_ms = 0\n"},
                      "[balancer]");
}

TEST(ConfigTest, CgroupThatClimbsOutIsRefused) {
  auto config = ParseConfig("[node]\ncgroup = \"../escape\"\n", "test.toml");
  ASSERT_FALSE(config);
  EXPECT_NE(config.error().message.find("[node] cgroup"), std::string::npos);
}

TEST(ConfigTest, CreatedCgroupMustBeAbsolute) {
  auto config = ParseConfig("[node]\ncgroup = \"/tern-jobs\"\ncgroup_create = true\n", "t.toml");
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_TRUE(config->cgroup_create);
  EXPECT_EQ(config->cgroup, "/tern-jobs");
  EXPECT_FALSE(ParseConfig("[node]\ncgroup = \"x\"\n", "t.toml")->cgroup_create)
      << "off by default";
  for (const char* text : {"[node]\ncgroup = \"tern-jobs\"\ncgroup_create = true\n",
                           "[node]\ncgroup_create = true\n"}) {
    auto refused = ParseConfig(text, "t.toml");
    ASSERT_FALSE(refused) << text;
    EXPECT_NE(refused.error().message.find("cgroup_create needs an absolute"), std::string::npos)
        << refused.error().message;
  }
}

TEST(ConfigTest, WrongTypeNamesFileSectionAndKey) {
  auto config = ParseConfig("[cluster]\nheartbeat_ms = \"fast\"\n", "/etc/tern/ternd.toml");
  ASSERT_FALSE(config);
  EXPECT_NE(config.error().message.find("/etc/tern/ternd.toml"), std::string::npos);
  EXPECT_NE(config.error().message.find("heartbeat_ms"), std::string::npos);
}

TEST(ConfigTest, MillisecondsAndCountsAreWholeNumbersInRange) {
  // The config fuzzer's input: a float far beyond any integer (undefined behaviour in the cast
  // toml++'s value<int64_t>() makes) is refused with the key, like any wrong value.
  ExpectRefusedNaming({"[cluster]\nheartbeat_ms = 5e040\n", "[cluster]\nheartbeat_ms = 1000.0\n",
                       "[cluster]\nheartbeat_ms = 9223372036854775807\n",
                       "[cluster]\nheartbeat_ms = 0\n", "[balancer]\ninterval_ms = -3000\n"},
                      "whole number of milliseconds");
  ExpectRefusedNaming({"[cluster]\nmax_links = 1e30\n", "[cluster]\nmax_links = 8.0\n"},
                      "max_links");
  auto longest = ParseConfig("[cluster]\nlink_idle_ms = 2592000000\n", "t.toml");
  ASSERT_TRUE(longest) << longest.error().message;
  EXPECT_EQ(longest->link_idle.count(), 2592000000);
}

TEST(ConfigTest, SyntaxErrorNamesTheLine) {
  auto config = ParseConfig("[node]\nname = \n", "x.toml");
  ASSERT_FALSE(config);
  EXPECT_NE(config.error().message.find("x.toml:2"), std::string::npos) << config.error().message;
}

TEST(ConfigTest, DeadMustComeAfterSuspect) {
  auto config = ParseConfig("[cluster]\nsuspect_after_ms = 5000\ndead_after_ms = 4000\n", "x");
  EXPECT_FALSE(config);
}

TEST(ConfigTest, MissingSecretIsAnErrorWithTheFix) {
  auto config =
      ParseConfig("[node]\nname=\"n1\"\n[cluster]\nsecret_file=\"/nonexistent/s\"\n", "x");
  ASSERT_TRUE(config);
  auto resolved = ResolveMachineDefaults(*config, "/usr/bin/ternd");
  ASSERT_FALSE(resolved);
  EXPECT_NE(resolved.error().message.find("/nonexistent/s"), std::string::npos);
}

TEST(ConfigTest, BadNodeNameRefused) {
  auto config = ParseConfig("[node]\nname=\"a b\"\n[cluster]\nsecret=\"x\"\n", "x");
  ASSERT_TRUE(config);
  EXPECT_FALSE(ResolveMachineDefaults(*config, "/usr/bin/ternd"));
}

TEST(ConfigTest, MachineDefaultsFillAdvertiseAndInit) {
  auto config = ParseConfig("[cluster]\nsecret=\"x\"\n", "x");
  ASSERT_TRUE(config);
  ASSERT_TRUE(ResolveMachineDefaults(*config, "/opt/tern/bin/ternd"));
  EXPECT_FALSE(config->node_name.empty());
  EXPECT_EQ(config->init_path, "/opt/tern/bin/tern-init");
  EXPECT_NE(config->cluster_advertise.find(":7071"), std::string::npos);
}

TEST(ConfigTest, LinkAndGossipCountsAreBounded) {
  auto config = ParseConfig("[cluster]\ngossip_window = 65\n", "x");
  ASSERT_FALSE(config);
  EXPECT_NE(config.error().message.find("gossip_window"), std::string::npos);
  EXPECT_FALSE(ParseConfig("[cluster]\nmax_links = 0\n", "x"));
  EXPECT_FALSE(ParseConfig("[cluster]\ngossip_view_max = 0\n", "x"));
  EXPECT_FALSE(ParseConfig("[cluster]\ngossip_fanout = \"all\"\n", "x"));
}

TEST(ConfigTest, IpcSectionDefaultsAndKeys) {
  auto defaults = ParseConfig("", "test.toml");
  ASSERT_TRUE(defaults) << defaults.error().message;
  EXPECT_EQ(defaults->ipc_limits.max_queue_limit, 65536u);
  EXPECT_EQ(defaults->ipc_limits.max_ports_per_job, 4096u);
  EXPECT_EQ(defaults->ipc_limits.max_queued_bytes_per_job, std::uint64_t{512} << 20);
  EXPECT_EQ(defaults->ipc_limits.max_region_bytes, std::uint64_t{1} << 30);
  auto config = ParseConfig(R"(
[ipc]
max_queue_limit = 100
max_ports_per_job = 7
max_queued_bytes_per_job = 1073741824
max_region_bytes = 65536
)",
                            "test.toml");
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_EQ(config->ipc_limits.max_queue_limit, 100u);
  EXPECT_EQ(config->ipc_limits.max_ports_per_job, 7u);
  EXPECT_EQ(config->ipc_limits.max_queued_bytes_per_job, std::uint64_t{1} << 30);
  EXPECT_EQ(config->ipc_limits.max_region_bytes, 65536u);
  // Below one largest message, the quota could never let it wait: refused, naming the key.
  auto small = ParseConfig("[ipc]\nmax_queued_bytes_per_job = 1000\n", "test.toml");
  ASSERT_FALSE(small);
  EXPECT_NE(small.error().message.find("[ipc] max_queued_bytes_per_job"), std::string::npos)
      << small.error().message;
  EXPECT_FALSE(ParseConfig("[ipc]\nmax_ports_per_job = -1\n", "test.toml"));
}

}  // namespace
}  // namespace tern::agent

namespace tern::agent {
namespace {

TEST(ConfigTest, TlsFilesAndRemoteRootHaveSafeDefaults) {
  auto defaults = ParseConfig("", "x");
  ASSERT_TRUE(defaults);
  EXPECT_EQ(defaults->tls_ca, "/etc/tern/tls/ca.crt");
  EXPECT_EQ(defaults->tls_cert, "/etc/tern/tls/node.crt");
  EXPECT_EQ(defaults->tls_key, "/etc/tern/tls/node.key");
  EXPECT_FALSE(defaults->allow_remote_root) << "root elsewhere is not root here by default";
  auto set = ParseConfig(
      "[tls]\nca = \"/a/ca.crt\"\ncert = \"/a/n.crt\"\nkey = \"/a/n.key\"\n"
      "[security]\nallow_remote_root = true\n",
      "x");
  ASSERT_TRUE(set) << set.error().message;
  EXPECT_EQ(set->tls_ca, "/a/ca.crt");
  EXPECT_EQ(set->tls_cert, "/a/n.crt");
  EXPECT_EQ(set->tls_key, "/a/n.key");
  EXPECT_TRUE(set->allow_remote_root);
  EXPECT_FALSE(ParseConfig("[security]\nallow_remote_root = \"yes\"\n", "x"))
      << "a non-boolean is refused";
}

TEST(ConfigTest, FaultInjectionIsOffUnlessAsked) {
  auto defaults = ParseConfig("", "x");
  ASSERT_TRUE(defaults);
  EXPECT_FALSE(defaults->testing_faults);
  auto on = ParseConfig("[testing]\nfaults = true\n", "x");
  ASSERT_TRUE(on) << on.error().message;
  EXPECT_TRUE(on->testing_faults);
}

}  // namespace
}  // namespace tern::agent
