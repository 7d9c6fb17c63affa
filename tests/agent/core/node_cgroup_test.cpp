#include "node_cgroup.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tern/jobs/job_launcher.hpp>
#include <thread>

#include "job_usage.hpp"
#include "taskstats.hpp"

namespace tern::agent {
namespace {

namespace fs = std::filesystem;

std::string Fixture(const std::string& name) {
  std::ifstream file(std::string(TERN_FIXTURES) + "/" + name);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

void Write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

TEST(CgroupParseTest, MountsListControllersButNotFlagsOrNames) {
  const auto mounts = ParseCgroupMounts(Fixture("mounts_v1"));
  ASSERT_EQ(mounts.size(), 5u);
  EXPECT_TRUE(mounts[0].v2);
  EXPECT_EQ(mounts[0].path, "/sys/fs/cgroup/unified");
  EXPECT_TRUE(mounts[1].controllers.empty()) << "name=systemd is no controller";
  EXPECT_EQ(mounts[2].controllers, std::vector<std::string>{"cpu"});
  EXPECT_EQ(mounts[4].controllers, std::vector<std::string>{"memory"});
}

TEST(CgroupParseTest, ProcCgroupMapsHierarchiesToPaths) {
  const auto paths = ParseProcCgroup(Fixture("self_cgroup_v1"));
  EXPECT_EQ(paths.at("memory"), "/process_api/90a47ac1");
  EXPECT_EQ(paths.at("cpu"), "/");
  EXPECT_EQ(paths.at(""), "/");
  EXPECT_EQ(ParseProcCgroup("0::/a:b\n").at(""), "/a:b") << "a path may hold ':'";
}

TEST(CgroupParseTest, CpuQuotaInCpus) {
  EXPECT_DOUBLE_EQ(*ParseCpuMax("50000 100000\n"), 0.5);
  EXPECT_DOUBLE_EQ(*ParseCpuMax("max 100000\n"), 0.0);
  EXPECT_DOUBLE_EQ(*ParseCpuMax("250000 100000"), 2.5);
  EXPECT_FALSE(ParseCpuMax("50000"));
  EXPECT_FALSE(ParseCpuMax("50000 0"));
  EXPECT_FALSE(ParseCpuMax("lots 100000"));
  EXPECT_DOUBLE_EQ(*ParseCfsQuota("-1\n", "100000\n"), 0.0);
  EXPECT_DOUBLE_EQ(*ParseCfsQuota("150000\n", "100000\n"), 1.5);
  EXPECT_FALSE(ParseCfsQuota("", "100000"));
  EXPECT_FALSE(ParseCfsQuota("5", "0"));
}

TEST(CgroupParseTest, MemoryLimitsAndCounts) {
  EXPECT_EQ(*ParseMemoryLimit("max\n"), 0u);
  EXPECT_EQ(*ParseMemoryLimit("9223372036854771712\n"), 0u) << "v1's 'no limit'";
  EXPECT_EQ(*ParseMemoryLimit("536870912\n"), 536870912u);
  EXPECT_FALSE(ParseMemoryLimit("-1"));
  EXPECT_FALSE(ParseMemoryLimit(""));
  EXPECT_EQ(*ParseCount("123\n"), 123u);
  EXPECT_FALSE(ParseCount("12 apples"));
  EXPECT_DOUBLE_EQ(*ParseCpuStatUsage(Fixture("cpu_stat_v2")), 2.5);
  EXPECT_FALSE(ParseCpuStatUsage("user_usec 5\n"));
}

class FakeHierarchyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("tern-cgroup-test-" + std::to_string(::getpid()));
    fs::remove_all(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  // The fixture's mounts, moved under root_.
  std::string Mounts(const std::string& fixture) {
    std::string text = Fixture(fixture);
    for (std::size_t at = 0; (at = text.find(" /sys/fs/cgroup", at)) != std::string::npos;) {
      text.replace(at + 1, 14, root_.string());
      at += root_.string().size();
    }
    return text;
  }
  fs::path root_;
};

TEST_F(FakeHierarchyTest, V1NameIsRelativeToOwnCgroupPerHierarchy) {
  const fs::path cpu = root_ / "cpu/tn1";
  const fs::path memory = root_ / "memory/process_api/90a47ac1/tn1";
  Write(cpu / "cpu.cfs_quota_us", "50000\n");
  Write(cpu / "cpu.cfs_period_us", "100000\n");
  Write(root_ / "cpuacct/tn1/cpuacct.usage", "1500000000\n");
  Write(memory / "memory.limit_in_bytes", "536870912\n");
  Write(memory / "memory.usage_in_bytes", "1048576\n");
  auto cgroup = NodeCgroup::Open("tn1", Mounts("mounts_v1"), Fixture("self_cgroup_v1"));
  ASSERT_TRUE(cgroup) << cgroup.error().message;
  EXPECT_EQ(cgroup->version(), 1);
  EXPECT_DOUBLE_EQ(cgroup->CpuQuota(), 0.5);
  EXPECT_DOUBLE_EQ(cgroup->CpuSeconds().value_or(-1), 1.5);
  EXPECT_EQ(cgroup->MemoryLimit(), 536870912u);
  EXPECT_EQ(cgroup->MemoryUsage().value_or(0), 1048576u);
  EXPECT_EQ(cgroup->CriuRoots(), (std::vector<std::string>{"cpu:/tn1", "cpuacct:/tn1",
                                                           "memory:/process_api/90a47ac1/tn1"}));
  EXPECT_EQ(cgroup->ProcsFiles().front(), (cpu / "cgroup.procs").string());
  EXPECT_EQ(cgroup->Describe(), "v1 cpu:/tn1 cpuacct:/tn1 memory:/process_api/90a47ac1/tn1");
}

TEST_F(FakeHierarchyTest, V2AbsoluteName) {
  Write(root_ / "tn2/cpu.max", "25000 100000\n");
  Write(root_ / "tn2/memory.max", "max\n");
  Write(root_ / "tn2/memory.current", "4096\n");
  auto cgroup = NodeCgroup::Open("/tn2", Mounts("mounts_v2"), Fixture("self_cgroup_v2"));
  ASSERT_TRUE(cgroup) << cgroup.error().message;
  EXPECT_EQ(cgroup->version(), 2);
  EXPECT_DOUBLE_EQ(cgroup->CpuQuota(), 0.25);
  EXPECT_EQ(cgroup->MemoryLimit(), 0u) << "max: no limit";
  EXPECT_EQ(cgroup->MemoryUsage().value_or(0), 4096u);
  EXPECT_EQ(cgroup->CriuRoots(), std::vector<std::string>{"/tn2"});
}

TEST_F(FakeHierarchyTest, MissingDirectoryOrEscapeIsAClearError) {
  auto missing = NodeCgroup::Open("nope", Mounts("mounts_v1"), Fixture("self_cgroup_v1"));
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("does not exist"), std::string::npos)
      << missing.error().message;
  EXPECT_FALSE(NodeCgroup::Open("../up", Mounts("mounts_v1"), Fixture("self_cgroup_v1")));
  EXPECT_FALSE(NodeCgroup::Open("x", "", ""));
}

// An installed node ([node] cgroup = "/tern-jobs", cgroup_create = true) under systemd on a
// hybrid v1 system: the agent runs in /system.slice/ternd.service everywhere; its jobs must be
// placed at the top of every hierarchy systemd kills or limits the unit by, created if missing.
TEST_F(FakeHierarchyTest, CreatedCgroupLeavesTheServiceInEveryTrackedHierarchy) {
  const std::string mounts = Mounts("mounts_v1") + "cgroup " + (root_ / "pids").string() +
                             " cgroup rw,nosuid,nodev,noexec,relatime,pids 0 0\n";
  const std::string self =
      "9:name=systemd:/system.slice/ternd.service\n8:pids:/system.slice/ternd.service\n"
      "4:memory:/system.slice/ternd.service\n2:cpuacct:/system.slice/ternd.service\n"
      "1:cpu:/system.slice/ternd.service\n0::/system.slice/ternd.service\n";
  for (const char* hierarchy : {"cpu", "cpuacct", "memory", "pids", "systemd", "unified"}) {
    fs::create_directories(root_ / hierarchy / "system.slice/ternd.service");
  }
  EXPECT_FALSE(NodeCgroup::Open("/tern-jobs", mounts, self)) << "not created without create";
  auto cgroup = NodeCgroup::Open("/tern-jobs", mounts, self, /*create=*/true);
  ASSERT_TRUE(cgroup) << cgroup.error().message;
  EXPECT_EQ(cgroup->version(), 1);
  std::vector<std::string> expected;
  for (const char* hierarchy : {"cpu", "cpuacct", "memory", "unified", "systemd", "pids"}) {
    EXPECT_TRUE(fs::is_directory(root_ / hierarchy / "tern-jobs")) << hierarchy;
    expected.push_back((root_ / hierarchy / "tern-jobs/cgroup.procs").string());
  }
  EXPECT_EQ(cgroup->ProcsFiles(), expected) << "cpu first, then the tracked hierarchies";
  EXPECT_EQ(cgroup->Describe(),
            "v1 cpu:/tern-jobs cpuacct:/tern-jobs memory:/tern-jobs cgroup2:/tern-jobs "
            "name=systemd:/tern-jobs pids:/tern-jobs");
  // Restored jobs land there too, one root per hierarchy, named as CRIU 4.2 matches them
  // (checked by hand: `criu restore --cgroup-root name=systemd:/x --cgroup-root :/x` put the
  // job in both); none for the others (freezer, cpuset...), which keep the job's path.
  EXPECT_EQ(cgroup->CriuRoots(), (std::vector<std::string>{
                                     "cpu:/tern-jobs", "cpuacct:/tern-jobs", "memory:/tern-jobs",
                                     ":/tern-jobs", "name=systemd:/tern-jobs", "pids:/tern-jobs"}));
  // Opening again (the agent's restart) finds what the first start made.
  auto again = NodeCgroup::Open("/tern-jobs", mounts, self, true);
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_EQ(again->ProcsFiles(), expected);
}

// systemd-nspawn mounts v1 controller hierarchies read-only: the job leaves the service where
// systemd tracks it (name=systemd, cgroup2) and stays in the agent's cgroup in the others.
TEST_F(FakeHierarchyTest, CreatedCgroupLeavesAnUnwritableControllerHierarchyAsItIs) {
  const std::string self =
      "9:name=systemd:/system.slice/ternd.service\n4:memory:/svc\n2:cpuacct:/svc\n1:cpu:/svc\n"
      "0::/system.slice/ternd.service\n";
  for (const char* hierarchy : {"cpu", "cpuacct", "memory"}) {
    fs::create_directories(root_ / hierarchy / "svc");
  }
  Write(root_ / "cpu/svc/cpu.cfs_quota_us", "50000\n");
  Write(root_ / "cpu/svc/cpu.cfs_period_us", "100000\n");
  Write(root_ / "cpu/tern-jobs", "not a directory: stands for a read-only mount\n");
  auto cgroup = NodeCgroup::Open("/tern-jobs", Mounts("mounts_v1"), self, true);
  ASSERT_TRUE(cgroup) << cgroup.error().message;
  const auto files = cgroup->ProcsFiles();
  EXPECT_EQ(std::count(files.begin(), files.end(), (root_ / "cpu/svc/cgroup.procs").string()), 0)
      << "no job is placed where it already is";
  EXPECT_EQ(files.size(), 4u) << "cpuacct, memory, cgroup2, name=systemd";
  EXPECT_DOUBLE_EQ(cgroup->CpuQuota(), 0.0) << "the agent's own quota is not the node's";
  EXPECT_EQ(cgroup->CriuRoots(),
            (std::vector<std::string>{"cpu:/svc", "cpuacct:/tern-jobs", "memory:/tern-jobs",
                                      ":/tern-jobs", "name=systemd:/tern-jobs"}));
  EXPECT_NE(cgroup->Describe().find("cpu:(left at /svc)"), std::string::npos) << cgroup->Describe();
  // Where systemd tracks the unit there is no such way out.
  fs::remove_all(root_ / "systemd/tern-jobs");
  Write(root_ / "systemd/tern-jobs", "x\n");
  fs::remove(root_ / "cpu/tern-jobs");
  auto refused = NodeCgroup::Open("/tern-jobs", Mounts("mounts_v1"), self, true);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("cannot create cgroup"), std::string::npos)
      << refused.error().message;
}

TEST_F(FakeHierarchyTest, CreatedCgroupOnV2IsOneDirectoryAtTheTop) {
  const std::string self = "0::/system.slice/ternd.service\n";
  auto cgroup = NodeCgroup::Open("/tern-jobs", Mounts("mounts_v2"), self, true);
  ASSERT_TRUE(cgroup) << cgroup.error().message;
  EXPECT_EQ(cgroup->version(), 2);
  EXPECT_EQ(cgroup->ProcsFiles(),
            std::vector<std::string>{(root_ / "tern-jobs/cgroup.procs").string()});
  EXPECT_EQ(cgroup->CriuRoots(), std::vector<std::string>{"/tern-jobs"});
}

TEST_F(FakeHierarchyTest, CreatingARelativeCgroupIsRefused) {
  // It would sit inside the agent's own cgroup, which systemd stops with the agent.
  auto relative = NodeCgroup::Open("tern-jobs", Mounts("mounts_v2"), "0::/system.slice/x\n", true);
  ASSERT_FALSE(relative);
  EXPECT_NE(relative.error().message.find("must start with '/'"), std::string::npos)
      << relative.error().message;
  EXPECT_FALSE(fs::exists(root_ / "system.slice"));
}

TEST(ProcParseTest, StatIoStatm) {
  auto stat = ParseProcStat(Fixture("proc_stat"));
  ASSERT_TRUE(stat) << stat.error().message;
  EXPECT_EQ(stat->state, 'R');
  EXPECT_EQ(stat->cpu_ticks, 300u);
  EXPECT_EQ(stat->child_cpu_ticks, 4u) << "cutime + cstime: the reaped children's CPU";
  EXPECT_EQ(stat->threads, 3);
  EXPECT_FALSE(ParseProcStat("4242 (x) R 1 2"));
  EXPECT_FALSE(ParseProcStat("garbage"));
  EXPECT_EQ(*ParseProcIo(Fixture("proc_io")), 1234u);
  EXPECT_FALSE(ParseProcIo("rchar: 5\n"));
  EXPECT_EQ(*ParseStatmRss(Fixture("proc_statm"), 4096), 245u * 4096);
  EXPECT_FALSE(ParseStatmRss("530", 4096));
  EXPECT_EQ(ParseChildren("12 345 6789 \n"), (std::vector<pid_t>{12, 345, 6789}));
  EXPECT_TRUE(ParseChildren("").empty());
  EXPECT_EQ(ParseChildren("12 x -3 0 99999999999 7"), (std::vector<pid_t>{12, 7}))
      << "what is not a pid is skipped";
}

// ---- real cgroups (root) -------------------------------------------------------------------

// A cgroup made for one test, with a CPU quota, removed after (its tasks killed first).
class TemporaryCgroup {
 public:
  explicit TemporaryCgroup(double cpus) : name_("tern-test-" + std::to_string(::getpid())) {
    std::ifstream mounts_file("/proc/self/mounts");
    std::stringstream text;
    text << mounts_file.rdbuf();
    const auto mounts = ParseCgroupMounts(text.str());
    std::ifstream self_file("/proc/self/cgroup");
    std::stringstream self;
    self << self_file.rdbuf();
    const auto own = ParseProcCgroup(self.str());
    const auto quota = std::to_string(static_cast<long>(cpus * 100000));
    for (const auto& mount : mounts) {
      for (const std::string controller : {"cpu", "cpuacct", "memory"}) {
        if (mount.v2 || std::find(mount.controllers.begin(), mount.controllers.end(), controller) ==
                            mount.controllers.end()) {
          continue;
        }
        for (const auto& [key, path] : own) {
          if (key.find(controller) == std::string::npos) continue;
          const fs::path dir = fs::path(mount.path) / path.substr(1) / name_;
          if (std::find(dirs_.begin(), dirs_.end(), dir) != dirs_.end()) break;
          fs::create_directories(dir);
          dirs_.push_back(dir);
          if (controller == "cpu") {
            std::ofstream(dir / "cpu.cfs_period_us") << "100000";
            std::ofstream(dir / "cpu.cfs_quota_us") << quota;
          }
          break;
        }
      }
    }
    if (!dirs_.empty()) return;
    for (const auto& mount : mounts) {
      if (!mount.v2) continue;
      std::ofstream(fs::path(mount.path) / "cgroup.subtree_control") << "+cpu +memory";
      const fs::path dir = fs::path(mount.path) / name_;
      fs::create_directories(dir);
      std::ofstream(dir / "cpu.max") << quota << " 100000";
      dirs_.push_back(dir);
      name_ = "/" + name_;
      break;
    }
  }
  ~TemporaryCgroup() {
    for (const auto& dir : dirs_) {
      for (int round = 0; round < 50; ++round) {
        std::ifstream procs(dir / "cgroup.procs");
        pid_t pid = 0;
        bool any = false;
        while (procs >> pid) {
          ::kill(pid, SIGKILL);
          any = true;
        }
        if (!any && ::rmdir(dir.c_str()) == 0) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  }
  const std::string& name() const { return name_; }
  bool made() const { return !dirs_.empty(); }

 private:
  std::string name_;
  std::vector<fs::path> dirs_;
};

pid_t FirstChild(pid_t pid) {
  std::ifstream children("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) +
                         "/children");
  pid_t child = 0;
  children >> child;
  return child;
}

TEST(NodeCgroupRootTest, JobLaunchedWithCgroupRunsInItAndWantsMoreThanItGets) {
  ASSERT_EQ(::geteuid(), 0u)
      << "this test makes a cgroup and starts a job in a PID namespace: run it "
         "as root (deploy/test does)";
  TemporaryCgroup temporary(0.5);
  ASSERT_TRUE(temporary.made()) << "no cgroup hierarchy to make a test cgroup in";
  auto cgroup = NodeCgroup::Open(temporary.name());
  ASSERT_TRUE(cgroup) << cgroup.error().message;
  EXPECT_DOUBLE_EQ(cgroup->CpuQuota(), 0.5) << "capacity reads as the quota";

  const fs::path dir = fs::temp_directory_path() / ("tern-cgroup-job-" + std::to_string(getpid()));
  jobs::LaunchSpec spec;
  spec.argv = {"sh", "-c", "while :; do :; done"};
  spec.dir = dir.string();
  spec.init_path = TERN_INIT_PATH;
  spec.job_id = "test.1";
  spec.node = "testnode";
  spec.cgroup_procs = cgroup->ProcsFiles();
  auto launched = jobs::LaunchJob(spec);
  ASSERT_TRUE(launched) << launched.error().message;
  const pid_t init = launched->pid;
  EXPECT_TRUE(cgroup->Holds(init)) << "tern-init runs in the node's cgroup";
  pid_t child = 0;
  for (int i = 0; i < 200 && child == 0; ++i) {
    child = FirstChild(init);
    if (child == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_NE(child, 0);
  EXPECT_TRUE(cgroup->Holds(child)) << "and so does the job's command";

  // Throttled to half a CPU, the busy loop still wants a whole one.
  JobUsageSampler sampler(false);
  const std::map<std::string, pid_t> jobs = {{"test.1", init}};
  for (int i = 0; i < 4; ++i) {
    sampler.Sample(jobs, std::chrono::steady_clock::now());
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  sampler.Sample(jobs, std::chrono::steady_clock::now());
  const auto usage = sampler.Get("test.1");
  ASSERT_TRUE(usage);
  EXPECT_GE(usage->runnable, 0.8);
  EXPECT_LE(usage->runnable, 1.2);
  EXPECT_LE(usage->cpu_share, 0.65) << "the quota holds it near 0.5";
  EXPECT_GE(usage->cpu_share, 0.2);
  EXPECT_EQ(usage->processes, 2);

  ::kill(init, SIGKILL);
  ::waitpid(init, nullptr, 0);
  fs::remove_all(dir);
}

TEST(TaskstatsRootTest, CountsThisThreadsCpuTime) {
  ASSERT_EQ(::geteuid(), 0u)
      << "taskstats needs CAP_NET_ADMIN: run this test as root (deploy/test does)";
  auto taskstats = Taskstats::Open();
  ASSERT_TRUE(taskstats)
      << "taskstats (generic netlink) is unusable on this machine, so per-job I/O "
         "falls back to /proc: "
      << taskstats.error().message;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  volatile std::uint64_t spin = 0;
  while (std::chrono::steady_clock::now() < until) spin = spin + 1;
  timespec used{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &used);
  const auto used_ns = static_cast<std::uint64_t>(used.tv_sec) * 1'000'000'000u +
                       static_cast<std::uint64_t>(used.tv_nsec);
  auto usage = taskstats->Get(static_cast<pid_t>(::gettid()));
  ASSERT_TRUE(usage) << usage.error().message;
  // ac_utime + ac_stime are the scheduler's tick samples scaled to its exact sum: on a busy
  // machine they lag or lead the exact clock by tens of ms, more under ASan at -O0 on a loaded
  // machine (seen: 324 ms against 380 ms; 616 ms against 475 ms at load 5 on 2 CPUs).
  const std::uint64_t slack = 100'000'000u + used_ns / 2;
  EXPECT_GE(usage->cpu_ns + slack, used_ns);
  EXPECT_LE(usage->cpu_ns, used_ns + slack);
  EXPECT_GT(usage->hiwater_rss_bytes, 0u);
  EXPECT_FALSE(taskstats->Get(0x3fffffff)) << "a task that does not exist is an error";
  EXPECT_TRUE(taskstats->Get(static_cast<pid_t>(::gettid())))
      << "one request after another: no answer is left behind for the next";
}

TEST(TaskstatsRootTest, AnswersABatchOfTasksInOneGo) {
  ASSERT_EQ(::geteuid(), 0u)
      << "taskstats needs CAP_NET_ADMIN: run this test as root (deploy/test does)";
  auto taskstats = Taskstats::Open();
  ASSERT_TRUE(taskstats) << "taskstats (generic netlink) is unusable on this machine: "
                         << taskstats.error().message;
  // This thread reads a file: its read_char grows by at least the file's size.
  const pid_t self = static_cast<pid_t>(::gettid());
  const pid_t threads[] = {self, self};
  const auto before = taskstats->IoBytes(threads);
  ASSERT_TRUE(before);
  std::ifstream("/proc/self/status").ignore(1 << 20);
  const auto after = taskstats->IoBytes(threads);
  ASSERT_TRUE(after);
  EXPECT_GT(*after, *before) << "two answers, each with this thread's reads";
  const pid_t with_missing[] = {self, 0x3fffffff, self};
  EXPECT_FALSE(taskstats->IoBytes(with_missing)) << "a task that does not exist fails the batch";
  EXPECT_TRUE(taskstats->IoBytes(threads)) << "and leaves nothing behind";
}

}  // namespace
}  // namespace tern::agent
