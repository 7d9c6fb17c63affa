// Integration tests of the balancer's user side on a real 3-node local cluster: busy jobs that
// spread by themselves, drain and undrain, pin, placement off a draining node, `tern events` and
// `[balancer] enabled = false`.
//
// The suite brings up its own cluster (`deploy/tern-cluster up 3 --force --cpus-per-node 1`,
// named by TERN_IT_CLUSTER like cluster_test.cpp's: each node its own cgroup with one CPU, so
// that each measures its own demand) and takes it down at the end.
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
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
            std::chrono::milliseconds timeout = 30s) {
  std::vector<std::string> argv = {Script(), "exec", node, "tern"};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCmd(argv, timeout);
}

std::optional<json> JsonOf(const Result& r) {
  if (r.exit_code != 0) return std::nullopt;
  json doc = json::parse(r.out, nullptr, false);
  if (doc.is_discarded()) return std::nullopt;
  return doc;
}

std::string Submit(const std::string& from, std::vector<std::string> flags,
                   const std::vector<std::string>& cmd) {
  std::vector<std::string> args = {"submit", "-q"};
  args.insert(args.end(), flags.begin(), flags.end());
  args.push_back("--");
  args.insert(args.end(), cmd.begin(), cmd.end());
  auto r = Tern(from, args);
  if (r.exit_code != 0) {
    ADD_FAILURE() << "submit failed: " << r.Describe();
    return "";
  }
  return Trim(r.out);
}

std::optional<json> Status(const std::string& via, const std::string& id) {
  return JsonOf(Tern(via, {"status", id, "-o", "json"}));
}

std::string NodeOf(const std::string& via, const std::string& id) {
  auto st = Status(via, id);
  return st ? st->value("node", "") : "";
}

// node name -> draining, as `tern nodes -o json` on VIA shows it.
std::optional<bool> Draining(const std::string& via, const std::string& node) {
  auto nodes = JsonOf(Tern(via, {"nodes", "-o", "json"}));
  if (!nodes) return std::nullopt;
  for (const auto& n : *nodes) {
    if (n.value("name", "") == node) return n.value("draining", false);
  }
  return std::nullopt;
}

// The cluster's balancer events (`tern events -t balancer -o json`, one per line).
std::vector<json> BalancerEvents(const std::string& via) {
  std::vector<json> events;
  auto r = Tern(via, {"events", "-t", "balancer", "-o", "json"});
  for (const auto& line : Lines(r.out)) {
    json event = json::parse(line, nullptr, false);
    if (!event.is_discarded()) events.push_back(event);
  }
  return events;
}

std::optional<json> FindEvent(const std::vector<json>& events, const std::string& action,
                              const std::string& job) {
  for (const auto& event : events) {
    if (event.value("action", "") == action && event.value("job", "") == job) return event;
  }
  return std::nullopt;
}

std::string Dump(const std::vector<json>& events) {
  std::string out;
  for (const auto& event : events) out += "    " + event.dump() + "\n";
  return out;
}

class BalancerClusterTest : public ::testing::Test {
 protected:
  static inline std::string problem_;

  static void SetUpTestSuite() {
    if (geteuid() != 0) {
      problem_ = "the integration tests need root (network and mount namespaces)";
      return;
    }
    problem_ = UpCluster({"--cpus-per-node", "1", "--mem-per-node", "2G"});
  }

  static void TearDownTestSuite() {
    if (geteuid() != 0 || getenv("TERN_IT_KEEP_CLUSTER") != nullptr) return;
    auto r = RunCmd({Script(), "down"}, 120s);
    if (r.exit_code != 0) std::cerr << "tern-cluster down failed: " << r.Describe() << "\n";
  }

  void SetUp() override {
    if (!problem_.empty()) FAIL() << problem_;
  }

  void TearDown() override {
    if (!HasFailure()) return;
    for (const auto& node : kNodes) {
      auto lines = Lines(ReadFile(NodeDir(node) + "/ternd.log"));
      std::cerr << "---- " << node << "'s ternd.log (last 40 lines)\n";
      for (size_t i = lines.size() > 40 ? lines.size() - 40 : 0; i < lines.size(); ++i) {
        std::cerr << "    " << lines[i] << "\n";
      }
    }
  }
};

TEST_F(BalancerClusterTest, DrainMovesMovableJobsOffKeepsPinnedOnesAndUndrainEndsIt) {
  const auto movable = Submit("node1", {"--node", "node3"}, {"sleep", "600"});
  const auto pinned = Submit("node1", {"--node", "node3", "--pin"}, {"sleep", "601"});
  ASSERT_FALSE(movable.empty());
  ASSERT_FALSE(pinned.empty());
  auto st = Status("node2", pinned);
  ASSERT_TRUE(st) << "status of " << pinned;
  EXPECT_TRUE(st->value("pinned", false)) << st->dump();

  auto drain = Tern("node1", {"drain", "node3"});
  ASSERT_EQ(drain.exit_code, 0) << drain.Describe();
  EXPECT_NE(drain.out.find("node3 is draining"), std::string::npos) << drain.Describe();

  // Every node learns it (the load vector carries the flag) and shows it.
  for (const auto& node : kNodes) {
    EXPECT_TRUE(WaitFor([&] { return Draining(node, "node3").value_or(false); }, 15s))
        << node << " does not show node3 draining: " << Tern(node, {"nodes"}).Describe();
  }
  EXPECT_NE(Tern("node2", {"nodes"}).out.find("alive,draining"), std::string::npos);

  // The movable job leaves by live migration; the pinned one stays, and an event says why.
  std::string now_on;
  EXPECT_TRUE(WaitFor(
      [&] {
        now_on = NodeOf("node1", movable);
        return !now_on.empty() && now_on != "node3";
      },
      60s))
      << movable << " is still on " << now_on;
  st = Status("node1", movable);
  ASSERT_TRUE(st);
  EXPECT_EQ(st->value("state", ""), "running") << st->dump();
  ASSERT_FALSE((*st)["migrations"].empty()) << "it moved by migration: " << st->dump();
  EXPECT_EQ((*st)["migrations"].back().value("from", ""), "node3");

  std::vector<json> events;
  EXPECT_TRUE(WaitFor(
      [&] {
        events = BalancerEvents("node2");
        return FindEvent(events, "migrate", movable) && FindEvent(events, "skip", pinned);
      },
      30s))
      << Dump(events);
  if (auto move = FindEvent(events, "migrate", movable)) {
    EXPECT_EQ(move->value("kind", ""), "drain") << move->dump();
    EXPECT_EQ(move->value("node", ""), "node3") << move->dump();
    EXPECT_NE(move->value("reason", "").find("draining"), std::string::npos) << move->dump();
  }
  if (auto skip = FindEvent(events, "skip", pinned)) {
    EXPECT_NE(skip->value("reason", "").find("pinned"), std::string::npos) << skip->dump();
  }
  // Told once, not every interval.
  int skips = 0;
  for (const auto& event : events) {
    skips += event.value("action", "") == "skip" && event.value("job", "") == pinned;
  }
  EXPECT_EQ(skips, 1) << Dump(events);
  EXPECT_EQ(NodeOf("node1", pinned), "node3");
  // The human form of `tern events` says the same.
  auto human = Tern("node1", {"events", "-t", "balancer"});
  EXPECT_NE(human.out.find("skip " + pinned + ": pinned"), std::string::npos) << human.Describe();

  // A draining node takes no new jobs without --node: submitted there, the job goes elsewhere.
  const auto placed = Submit("node3", {}, {"sleep", "602"});
  ASSERT_FALSE(placed.empty());
  EXPECT_NE(NodeOf("node3", placed), "node3");
  EXPECT_TRUE(FindEvent(BalancerEvents("node1"), "place", placed)) << "no place event";
  // --node stays exact.
  const auto exact = Submit("node1", {"--node", "node3", "--pin"}, {"sleep", "603"});
  EXPECT_EQ(NodeOf("node1", exact), "node3");

  // The flag lives in node3's state dir: an agent restart keeps it.
  auto restart = RunCmd({Script(), "restart-agent", "node3"}, 90s);
  ASSERT_EQ(restart.exit_code, 0) << restart.Describe();
  EXPECT_TRUE(WaitFor([&] { return Draining("node3", "node3").value_or(false); }, 10s));

  auto undrain = Tern("node2", {"undrain", "node3"});
  ASSERT_EQ(undrain.exit_code, 0) << undrain.Describe();
  for (const auto& node : kNodes) {
    EXPECT_TRUE(WaitFor([&] { return Draining(node, "node3") == std::optional<bool>(false); }, 15s))
        << node << " still shows node3 draining";
  }
  EXPECT_EQ(NodeOf("node1", pinned), "node3");
  for (const auto& id : {movable, pinned, placed, exact}) Tern("node1", {"cancel", id});
}

TEST_F(BalancerClusterTest, PinAndUnpinFollowTheJobAndOnlyItsOwnerOrRootMayPin) {
  const auto id = Submit("node1", {"--node", "node2"}, {"sleep", "600"});
  ASSERT_FALSE(id.empty());
  auto r = Tern("node3", {"pin", id});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_EQ(Trim(r.out), "pinned " + id + " on node2");
  auto ps = Tern("node1", {"ps"});
  EXPECT_NE(ps.out.find("running,pinned"), std::string::npos) << ps.Describe();

  // The pin is part of the record that travels with the job.
  auto moved = Tern("node1", {"migrate", id, "node1"}, 120s);
  ASSERT_EQ(moved.exit_code, 0) << moved.Describe();
  auto st = Status("node3", id);
  ASSERT_TRUE(st);
  EXPECT_EQ(st->value("node", ""), "node1");
  EXPECT_TRUE(st->value("pinned", false)) << "the pin was lost in the move: " << st->dump();

  // Another user may neither pin nor unpin root's job, nor drain a node.
  const char* user = "ternuser";
  if (getpwnam(user) == nullptr) {
    auto add =
        RunCmd({"useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user});
    ASSERT_EQ(add.exit_code, 0) << add.Describe();
  }
  char dir_template[] = "/tmp/tern-it-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string tern = std::string(dir_template) + "/tern";
  fs::copy_file(kBinDir + "/tern", tern);
  chmod(dir_template, 0755);
  chmod(tern.c_str(), 0755);
  auto as_user = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {"runuser",       "-u",           user, "--", tern,
                                     "--node-socket", Socket("node2")};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCmd(argv);
  };
  auto refused = as_user({"unpin", id});
  EXPECT_EQ(refused.exit_code, 1) << refused.Describe();
  EXPECT_NE(refused.err.find("only its user or root may unpin it"), std::string::npos)
      << refused.Describe();
  refused = as_user({"drain", "node1"});
  EXPECT_EQ(refused.exit_code, 1) << refused.Describe();
  EXPECT_NE(refused.err.find("only root may drain"), std::string::npos) << refused.Describe();
  fs::remove_all(dir_template);

  r = Tern("node2", {"unpin", id});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  st = Status("node2", id);
  ASSERT_TRUE(st);
  EXPECT_FALSE(st->value("pinned", true)) << st->dump();
  Tern("node1", {"cancel", id});
}

TEST_F(BalancerClusterTest, APinAskedForDuringAMoveIsRefusedOrKeptNeverLost) {
  // 160 MB of written memory, so that the move takes long enough for pins to land inside it.
  const auto id = Submit(
      "node1", {"--node", "node2"},
      {"python3", "-c",
       "import time; b = bytes(range(256)) * 625000; print('ready', flush=True); time.sleep(600)"});
  ASSERT_FALSE(id.empty());
  // Moved only once it has started: Python holds its locale directory open while it starts
  // up, and the pre-flight refuses a job holding a directory outside its own (a CI run's move
  // was refused so, "fd 4 ... /usr/lib/locale/C.utf8/LC_MESSAGES: not a regular file").
  ASSERT_TRUE(WaitFor(
      [&] {
        return Tern("node1", {"logs", id}).out.find("ready") != std::string::npos;
      },
      30s))
      << Tern("node1", {"logs", id, "--stderr"}).Describe();
  auto moving = std::async(std::launch::async, [&] {
    return Tern("node1", {"migrate", id, "node3"}, 180s);
  });
  int refused = 0;
  bool pinned = false;
  std::string other_error;
  while (moving.wait_for(0s) != std::future_status::ready) {
    auto r = Tern("node1", {"pin", id});
    bool pin_stands = r.exit_code == 0;
    if (pin_stands && refused == 0) {
      // The pin beat the move's start: take it back and try again inside the move.
      r = Tern("node1", {"unpin", id});
      if (r.exit_code == 0) continue;
    }
    if (pin_stands && r.exit_code == 0) {
      pinned = true;
      break;
    }
    if (r.err.find("is moving to node3") == std::string::npos) {
      // Around the commit the job may be briefly on neither node for the forwarding agent.
      other_error = r.Describe();
      std::this_thread::sleep_for(50ms);
      continue;
    }
    ++refused;
    if (pin_stands) {  // the unpin was refused: the pin from before the move stands
      pinned = true;
      break;
    }
  }
  auto moved = moving.get();
  ASSERT_EQ(moved.exit_code, 0) << moved.Describe();
  EXPECT_GT(refused, 0) << "no pin landed inside the move: it was too quick to test; "
                        << other_error;
  if (!pinned) {
    auto r = Tern("node1", {"pin", id});
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
  }
  auto st = Status("node1", id);
  ASSERT_TRUE(st);
  EXPECT_EQ(st->value("node", ""), "node3") << st->dump();
  EXPECT_TRUE(st->value("pinned", false)) << "a pin that succeeded was lost: " << st->dump();
  Tern("node1", {"cancel", id});
}

TEST_F(BalancerClusterTest, EventsAreMergedFromEveryNodeByTime) {
  const auto id = Submit("node1", {"--node", "node2"}, {"sleep", "600"});
  ASSERT_FALSE(id.empty());
  auto r = Tern("node3", {"events", "-o", "json"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  std::string previous;
  bool job_on_node2 = false;
  std::set<std::string> nodes;
  for (const auto& line : Lines(r.out)) {
    json event = json::parse(line, nullptr, false);
    ASSERT_FALSE(event.is_discarded()) << line;
    const std::string time = event.value("time", "");
    EXPECT_LE(previous, time) << "events out of time order at " << line;
    previous = time;
    nodes.insert(event.value("node", ""));
    job_on_node2 |= event.value("type", "") == "job" && event.value("id", "") == id &&
                    event.value("node", "") == "node2";
  }
  EXPECT_TRUE(job_on_node2) << "node3 does not list node2's event for " << id << ":\n" << r.out;
  EXPECT_EQ(nodes.size(), 3u) << r.out;
  // `-n` keeps the newest.
  auto few = Tern("node3", {"events", "-n", "2", "-o", "json"});
  EXPECT_EQ(Lines(few.out).size(), 2u) << few.Describe();
  Tern("node1", {"cancel", id});
}

double Demand(const std::string& via, const std::string& node) {
  auto nodes = JsonOf(Tern(via, {"nodes", "-o", "json"}));
  if (!nodes) return -1;
  for (const auto& n : *nodes) {
    if (n.value("name", "") == node) return n.value("demand", -1.0);
  }
  return -1;
}

// The check, as a user tries it: six busy jobs submitted on node1 (each node capped to
// one CPU). The balancer spreads them by itself, by live migration: within about a minute every
// node runs some, no job moves more than twice (not then, nor in the 20 s after: no bouncing),
// and `tern events` says why each move was made, in words and numbers.
TEST_F(BalancerClusterTest, BusyJobsSubmittedOnOneNodeSpreadOverEveryNodeByThemselves) {
  std::vector<std::string> jobs;
  for (int i = 0; i < 6; ++i) {
    jobs.push_back(Submit("node1", {"--node", "node1"}, {"sh", "-c", "while :; do :; done"}));
    ASSERT_FALSE(jobs.back().empty());
  }
  const auto cancel_all = [&] {
    for (const auto& id : jobs) Tern("node1", {"cancel", id});
  };
  const auto start = std::chrono::steady_clock::now();
  std::map<std::string, int> per_node;
  const auto count = [&] {
    per_node.clear();
    for (const auto& id : jobs) ++per_node[NodeOf("node2", id)];
  };
  const bool spread = WaitFor(
      [&] {
        count();
        return per_node["node1"] > 0 && per_node["node2"] > 0 && per_node["node3"] > 0;
      },
      90s);
  const auto took =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - start);
  std::cerr << "the six jobs reached every node in " << took.count() << " s\n";
  if (!spread) {
    std::string where;
    for (const auto& [node, n] : per_node) where += " " + node + ": " + std::to_string(n);
    cancel_all();
    FAIL() << "not spread after 90 s:" << where << "\n" << Dump(BalancerEvents("node1"));
  }
  std::this_thread::sleep_for(20s);  // would a job bounce?
  const auto events = BalancerEvents("node3");
  for (const auto& id : jobs) {
    auto st = Status("node1", id);
    ASSERT_TRUE(st) << "status of " << id;
    EXPECT_EQ(st->value("state", ""), "running") << st->dump();
    const std::size_t moves = (*st)["migrations"].size();
    EXPECT_LE(moves, 2u) << id << " moved " << moves << " times: " << st->dump();
    if (moves == 0) continue;
    auto move = FindEvent(events, "migrate", id);
    ASSERT_TRUE(move) << "no event says why " << id << " moved:\n" << Dump(events);
    const std::string reason = move->value("reason", "");
    EXPECT_NE(reason.find("demand"), std::string::npos) << move->dump();
    EXPECT_NE(reason.find("job age"), std::string::npos) << move->dump();
  }
  cancel_all();
  // The tests after this one place jobs by the nodes' demand: every node sheds this load first
  // (as node1 sees it, a gossip interval or two late).
  for (const auto& node : kNodes) {
    double demand = 0;
    EXPECT_TRUE(WaitFor(
        [&] {
          demand = Demand("node1", node);
          return demand >= 0 && demand < 0.5;
        },
        30s))
        << node << "'s demand stays at " << demand << " after the jobs were cancelled";
  }
}

TEST_F(BalancerClusterTest, SubmitWithoutNodeGoesToALessLoadedNode) {
  // Two busy jobs on node1 (one CPU): pinned, so that the balancer leaves them there.
  std::vector<std::string> busy;
  for (int i = 0; i < 2; ++i) {
    busy.push_back(
        Submit("node1", {"--node", "node1", "--pin"}, {"sh", "-c", "while :; do :; done"}));
    ASSERT_FALSE(busy.back().empty());
  }
  double demand = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        demand = Demand("node1", "node1");
        return demand >= 1.5;
      },
      20s))
      << "node1's demand stays at " << demand;
  const auto placed = Submit("node1", {}, {"sleep", "600"});
  ASSERT_FALSE(placed.empty());
  const std::string where = NodeOf("node1", placed);
  EXPECT_TRUE(where == "node2" || where == "node3") << placed << " runs on " << where;
  auto place = FindEvent(BalancerEvents("node1"), "place", placed);
  ASSERT_TRUE(place) << "no place event for " << placed;
  EXPECT_EQ(place->value("to", ""), where) << place->dump();
  EXPECT_NE(place->value("reason", "").find("demand"), std::string::npos) << place->dump();
  // --node stays exact however loaded the node is.
  const auto exact = Submit("node1", {"--node", "node1"}, {"sleep", "601"});
  EXPECT_EQ(NodeOf("node1", exact), "node1");
  for (const auto& id : busy) Tern("node1", {"cancel", id});
  for (const auto& id : {placed, exact}) Tern("node1", {"cancel", id});
}

TEST_F(BalancerClusterTest, WithTheBalancerOffADrainedNodeKeepsItsJobs) {
  const std::string original = ReadFile(Config("node2"));
  {
    std::ofstream config(Config("node2"), std::ios::app);
    config << "\n[balancer]\nenabled = false\n";
  }
  auto restart = RunCmd({Script(), "restart-agent", "node2"}, 90s);
  ASSERT_EQ(restart.exit_code, 0) << restart.Describe();
  const auto id = Submit("node1", {"--node", "node2"}, {"sleep", "600"});
  ASSERT_FALSE(id.empty());
  auto drain = Tern("node1", {"drain", "node2"});
  EXPECT_EQ(drain.exit_code, 0) << drain.Describe();
  EXPECT_NE(drain.out.find("its balancer is off"), std::string::npos) << drain.Describe();
  // A balancer that ran would have moved the job within two intervals (3 s each; the drain
  // test above sees a move within one); nothing may move.
  std::this_thread::sleep_for(7s);
  EXPECT_EQ(NodeOf("node1", id), "node2");
  std::vector<json> events = BalancerEvents("node1");
  EXPECT_FALSE(FindEvent(events, "migrate", id)) << Dump(events);
  bool said_so = false;
  for (const auto& event : events) {
    said_so |= event.value("action", "") == "drain" && event.value("node", "") == "node2" &&
               event.value("reason", "").find("enabled = false") != std::string::npos;
  }
  EXPECT_TRUE(said_so) << Dump(events);
  // A draining node still takes no new jobs without --node.
  const auto placed = Submit("node2", {}, {"sleep", "601"});
  EXPECT_NE(NodeOf("node1", placed), "node2");

  Tern("node1", {"undrain", "node2"});
  for (const auto& job : {id, placed}) Tern("node1", {"cancel", job});
  {
    std::ofstream config(Config("node2"), std::ios::trunc);
    config << original;
  }
  restart = RunCmd({Script(), "restart-agent", "node2"}, 90s);
  EXPECT_EQ(restart.exit_code, 0) << restart.Describe();
}

}  // namespace
}  // namespace tern::it
