// Integration tests of the dashboard (issue 15) on a real 3-node local cluster of its own: the
// cluster-wide event stream and /v1/migrations from any agent, /metrics through a real
// Prometheus text parser, `tern top` under tmux, and the page in headless Chromium
// (tests/browser/dashboard_test.mjs), whose screenshots land in $TERN_IT_OUTPUT_DIR (default
// /tmp/<cluster>-browser).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"

namespace tern::it {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

Result Tern(const std::string& node, std::vector<std::string> args,
            std::chrono::milliseconds timeout = 60s) {
  std::vector<std::string> argv = {Script(), "exec", node, "tern"};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCmd(argv, timeout);
}

// GET `target` of `node`'s agent through its Unix socket.
Result Get(const std::string& node, const std::string& target,
           std::chrono::milliseconds timeout = 20s) {
  return RunCmd({"curl", "-sS", "--unix-socket", Socket(node), "http://ternd" + target}, timeout);
}

std::optional<json> GetJson(const std::string& node, const std::string& target) {
  auto r = Get(node, target);
  if (r.exit_code != 0) return std::nullopt;
  json doc = json::parse(r.out, nullptr, false);
  if (doc.is_discarded()) return std::nullopt;
  return doc;
}

std::string Submit(const std::string& node) {
  auto r = Tern("node1", {"submit", "-q", "--node", node, "--", "sleep", "600"});
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  return Trim(r.out);
}

// One server-sent event as curl printed it.
struct Sse {
  std::string id;
  std::string type;
  json data;
};

std::vector<Sse> ParseSse(const std::string& text) {
  std::vector<Sse> out;
  Sse current;
  // Lines() drops empty lines, which end events here: split by hand.
  std::vector<std::string> lines;
  for (std::size_t start = 0, end; start <= text.size(); start = end + 1) {
    end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    lines.push_back(text.substr(start, end - start));
  }
  lines.emplace_back();
  for (const auto& line : lines) {
    if (line.empty()) {
      if (!current.type.empty()) out.push_back(current);
      current = Sse{};
    } else if (line.rfind("id: ", 0) == 0) {
      current.id = line.substr(4);
    } else if (line.rfind("event: ", 0) == 0) {
      current.type = line.substr(7);
    } else if (line.rfind("data: ", 0) == 0) {
      current.data = json::parse(line.substr(6), nullptr, false);
    }
  }
  return out;
}

class DashboardTest : public ::testing::Test {
 protected:
  static inline std::string error_;

  static void SetUpTestSuite() {
    if (geteuid() != 0) {
      error_ = "the dashboard integration tests need root (network namespaces); run them as root";
      return;
    }
    error_ = UpCluster();
  }

  static void TearDownTestSuite() {
    if (geteuid() != 0 || getenv("TERN_IT_KEEP_CLUSTER") != nullptr) return;
    RunCmd({Script(), "down"}, 120s);
  }

  void SetUp() override {
    if (!error_.empty()) FAIL() << error_;
  }
};

TEST_F(DashboardTest, EveryNodesEventsFromAnyAgentInOrderAndResumable) {
  // node3's stream, while a job of node1 moves to node2.
  const std::string log = "/tmp/" + kClusterName + "-sse-" + std::to_string(getpid());
  fs::remove(log);
  const pid_t curl =
      Spawn({"curl", "-sN", "--unix-socket", Socket("node3"), "http://ternd/v1/events"}, log);
  ASSERT_GT(curl, 0);
  const std::string id = Submit("node1");
  ASSERT_FALSE(id.empty());
  auto moved = Tern("node1", {"migrate", id, "node2"});
  ASSERT_EQ(moved.exit_code, 0) << moved.Describe();
  std::vector<Sse> events;
  const bool seen = WaitFor(
      [&] {
        events = ParseSse(ReadFile(log));
        bool started = false, done = false, running_on_2 = false;
        for (const auto& e : events) {
          if (!e.data.is_object()) continue;
          if (e.type == "migration" && e.data.value("job", "") == id) {
            started |=
                e.data.value("event", "") == "started" && e.data.value("node", "") == "node1";
            done |= e.data.value("event", "") == "moved";
          }
          running_on_2 |= e.type == "job" && e.data.value("id", "") == id &&
                          e.data.value("node", "") == "node2" &&
                          e.data.value("state", "") == "running";
        }
        return started && done && running_on_2;
      },
      20s);
  StopAndReap(curl, SIGTERM, 5s);
  ASSERT_TRUE(seen) << "node3's stream lacks node1's migration or node2's job:\n" << ReadFile(log);

  // One order per node, and each id is the cursor after its event.
  std::map<std::string, std::uint64_t> last;
  for (const auto& e : events) {
    ASSERT_TRUE(e.data.is_object());
    const std::string node = e.data.value("node", "");
    const auto seq = e.data.value("seq", std::uint64_t{0});
    EXPECT_GT(seq, last[node]) << "node " << node << " out of order in\n" << ReadFile(log);
    last[node] = seq;
    EXPECT_NE(e.id.find(node + ":" + std::to_string(seq)), std::string::npos) << e.id;
  }
  // Resuming from the id of the migration's start gives exactly what followed it.
  std::size_t start = 0;
  while (start < events.size() && !(events[start].type == "migration" &&
                                    events[start].data.value("event", "") == "started")) {
    ++start;
  }
  ASSERT_LT(start, events.size());
  auto resumed = RunCmd({"curl", "-sN", "--max-time", "3", "--unix-socket", Socket("node3"), "-H",
                         "Last-Event-ID: " + events[start].id, "http://ternd/v1/events"},
                        10s);
  const auto again = ParseSse(resumed.out);
  ASSERT_GE(again.size(), events.size() - start - 1) << resumed.out;
  std::set<std::string> before;
  for (std::size_t i = 0; i <= start; ++i) before.insert(events[i].id);
  for (const auto& e : again) EXPECT_EQ(before.count(e.id), 0u) << "replayed " << e.id;
  auto bad = RunCmd({"curl", "-sS", "-w", "%{http_code}", "--unix-socket", Socket("node3"),
                     "http://ternd/v1/events?cursor=node1:x"});
  EXPECT_NE(bad.out.find("400"), std::string::npos) << bad.Describe();
  EXPECT_EQ(Tern("node1", {"cancel", id}).exit_code, 0);
  fs::remove(log);
}

TEST_F(DashboardTest, MigrationsWithTheirFiguresFromAnyAgent) {
  const std::string id = Submit("node2");
  ASSERT_FALSE(id.empty());
  auto moved = Tern("node1", {"migrate", id, "node3"});
  ASSERT_EQ(moved.exit_code, 0) << moved.Describe();
  auto listing = GetJson("node1", "/v1/migrations");  // node1 did not take part
  ASSERT_TRUE(listing) << Get("node1", "/v1/migrations").Describe();
  std::optional<json> found;
  for (const auto& m : (*listing)["migrations"]) {
    if (m.value("job", "") == id) found = m;
  }
  ASSERT_TRUE(found) << listing->dump();
  EXPECT_EQ(found->value("outcome", ""), "moved");
  EXPECT_EQ(found->value("from", ""), "node2");
  EXPECT_EQ(found->value("to", ""), "node3");
  EXPECT_EQ(found->value("kind", ""), "manual");
  EXPECT_FALSE(found->value("reason", "").empty());
  EXPECT_GT(found->value("freeze_ms", 0.0), 0.0);
  EXPECT_GE(found->value("total_ms", 0.0), found->value("freeze_ms", 0.0));
  EXPECT_GT(found->value("bytes", 0), 0);
  EXPECT_FALSE(found->value("mode", "").empty());
  EXPECT_TRUE((*found)["phases_ms"].contains("dump")) << found->dump();
  EXPECT_EQ(Tern("node1", {"cancel", id}).exit_code, 0);
}

TEST_F(DashboardTest, MetricsOfEveryAgentParseWithThePrometheusParser) {
  const std::string parser = R"py(
import json, sys
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    sys.exit("python3-prometheus-client is missing (deploy/install-deps installs it)")
families = {}
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    families[family.name] = {"type": family.type,
                             "samples": [[s.name, s.labels, s.value] for s in family.samples]}
print(json.dumps(families))
)py";
  for (const auto& node : kNodes) {
    auto scrape = Get(node, "/metrics");
    ASSERT_EQ(scrape.exit_code, 0) << scrape.Describe();
    const std::string path = "/tmp/" + kClusterName + "-metrics-" + node;
    { std::ofstream(path) << scrape.out; }
    // Debian's python3, whose dist-packages hold python3-prometheus-client.
    auto parsed = RunCmd({"/usr/bin/python3", "-c", parser, path});
    ASSERT_EQ(parsed.exit_code, 0)
        << "the Prometheus parser refused " << node << "'s /metrics: " << parsed.Describe();
    json families = json::parse(parsed.out);
    for (const char* name :
         {"tern_node_up", "tern_node_load1", "tern_node_capacity_cpus", "tern_jobs",
          "tern_migration_freeze_seconds", "tern_migration_duration_seconds",
          "tern_migration_bytes", "tern_ipc_local_bytes", "tern_gossip_bytes_sent",
          "process_cpu_seconds", "process_resident_memory_bytes"}) {
      EXPECT_TRUE(families.contains(name)) << node << " lacks " << name << ":\n" << scrape.out;
    }
    EXPECT_EQ(families["tern_migration_freeze_seconds"]["type"], "histogram");
    int up = 0;
    for (const auto& sample : families["tern_node_up"]["samples"])
      up += sample[2].get<double>() == 1;
    EXPECT_EQ(up, 3) << node << " sees " << families["tern_node_up"].dump();
    fs::remove(path);
  }
  // The moves of the tests before were counted where they started.
  auto node1 = Get("node1", "/metrics");
  EXPECT_NE(node1.out.find("tern_migrations_total{node=\"node1\",outcome=\"moved\""),
            std::string::npos)
      << node1.out;
}

TEST_F(DashboardTest, TopUnderTmuxShowsNodesJobsAndAMigrationAndQuitsOnQ) {
  if (access("/usr/bin/tmux", X_OK) != 0)
    FAIL() << "tmux is missing (deploy/install-deps installs it)";
  const std::string server = kClusterName + "-top";
  auto tmux = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {"tmux", "-L", server};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCmd(argv, 10s);
  };
  auto screen = [&] { return tmux({"capture-pane", "-p", "-t", "top"}).out; };
  auto started = tmux({"new-session", "-d", "-s", "top", "-x", "120", "-y", "40", Script(), "exec",
                       "node1", "tern", "top"});
  ASSERT_EQ(started.exit_code, 0) << started.Describe();
  const std::string id = Submit("node1");
  EXPECT_TRUE(WaitFor(
      [&] {
        return screen().find("3 nodes") != std::string::npos &&
               screen().find(id) != std::string::npos;
      },
      15s))
      << screen();
  // Sleeping jobs want no CPU: the bars are there, empty.
  EXPECT_NE(screen().find("[........"), std::string::npos) << "no load bars:\n" << screen();
  auto moved = Tern("node1", {"migrate", id, "node2"});
  ASSERT_EQ(moved.exit_code, 0) << moved.Describe();
  EXPECT_TRUE(
      WaitFor([&] { return screen().find("node1 -> node2  moved") != std::string::npos; }, 15s))
      << screen();
  tmux({"send-keys", "-t", "top", "q"});
  EXPECT_TRUE(WaitFor(
      [&] {
        return tmux({"has-session", "-t", "top"}).exit_code != 0;
      },
      5s))
      << "tern top did not quit on q:\n"
      << screen();
  tmux({"kill-server"});
  EXPECT_EQ(Tern("node1", {"cancel", id}).exit_code, 0);
}

TEST_F(DashboardTest, BrowserShowsAMigrationLiveAndDrivesAnAction) {
  const char* chromium = getenv("CHROMIUM") != nullptr ? getenv("CHROMIUM") : "/usr/bin/chromium";
  if (access(chromium, X_OK) != 0) {
    FAIL() << "no Chromium at " << chromium
           << ": the browser tests need Debian's chromium (deploy/install-deps installs it)";
  }
  if (RunCmd({"node", "--version"}).exit_code != 0) {
    FAIL() << "node is missing: the browser tests need Debian's nodejs (deploy/install-deps)";
  }
  const std::string out_dir = getenv("TERN_IT_OUTPUT_DIR") != nullptr
                                  ? std::string(getenv("TERN_IT_OUTPUT_DIR"))
                                  : "/tmp/" + kClusterName + "-browser";
  // node1's TCP API on a host port, as a user opens it: once with a read-only token, once with
  // an admin token (each address carries its token after '#').
  const int port = 17000 + static_cast<int>(getpid() % 1000);
  auto read_only =
      RunCmd({Script(), "dashboard", "node1", "--port", std::to_string(port), "--read-only"});
  ASSERT_EQ(read_only.exit_code, 0) << read_only.Describe();
  auto admin = RunCmd({Script(), "dashboard", "node1", "--port", std::to_string(port)});
  ASSERT_EQ(admin.exit_code, 0) << admin.Describe();
  const auto address = [](std::string out) {
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out.substr(out.rfind('\n') + 1);
  };
  const std::string ro_url = address(read_only.out);
  const std::string rw_url = address(admin.out);
  ASSERT_NE(ro_url.find("#token="), std::string::npos) << read_only.Describe();
  // Without a token the page loads but the API refuses.
  auto bare = RunCmd({"curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                      "http://127.0.0.1:" + std::to_string(port) + "/v1/jobs"});
  EXPECT_EQ(bare.out, "401") << bare.Describe();
  auto run = RunCmd({"node", kSourceDir + "/tests/browser/dashboard_test.mjs"}, 300s,
                    {{"TERN_CLUSTER", Script()},
                     {"TERN_CLUSTER_NAME", kClusterName},
                     {"TERN_DASHBOARD_RO", ro_url},
                     {"TERN_DASHBOARD_RW", rw_url},
                     {"TERN_SCREENSHOTS", out_dir},
                     {"CHROMIUM", chromium}});
  std::cout << run.out << run.err;
  EXPECT_EQ(run.exit_code, 0) << run.Describe();
  EXPECT_TRUE(fs::exists(out_dir + "/2-after-migration.png")) << "no screenshot in " << out_dir;
}

}  // namespace
}  // namespace tern::it
