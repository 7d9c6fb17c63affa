// JobUsageSampler: what each running job uses and wants — CPU share, CPU time, resident memory,
// I/O rate and `runnable`, the mean number of its tasks in state R (running or waiting for a
// CPU). A job throttled by its node's CPU quota still shows as runnable, so `runnable` is the
// job's CPU demand where `cpu_share` is only what it got. It is the agent's one job sampler:
// the load vector, the balancer and `tern ps` (JobSupervisor::SetUsage) all read its samples.
//
// A job is the process tree under its tern-init (PID 1 of the job's PID namespace, where every
// orphan of the job ends up): it is walked through /proc/PID/task/TID/children, or, on a kernel
// without that file, found by one scan of /proc by PID namespace. I/O bytes come from taskstats
// (generic netlink, one batch of requests per sample) when it is usable here, else from
// /proc/PID/io; CPU time from /proc/PID/stat (steady where taskstats' per-task CPU figures were
// seen to jump), with the init's reaped children (cutime + cstime) so that the CPU of processes
// that ended stays counted; RSS from /proc/PID/statm. source() says which.
//
// When: a SampleSchedule decides which jobs are due (idle jobs are read less often, down to
// every 8 s). Sample() takes the node cgroup's CPU time when there is one: CPU the sampled jobs
// do not explain wakes every job for the next sample.
//
// Contract: Sample() never fails; a job whose processes vanish mid-sample is counted with what
// was read. Rates are over the time since the job's previous sample (0 at its first); runnable
// is the mean of the last `kRunnableWindow` samples. Jobs not passed to Sample() are forgotten.
//
// Thread-safety: not thread-safe; the agent samples from its io_context thread.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <vector>

#include "sample_schedule.hpp"

namespace tern::agent {

class Taskstats;

// /proc/PID/stat (or /proc/PID/task/TID/stat): the fields used here.
struct ProcStat {
  char state = '?';
  std::uint64_t cpu_ticks = 0;        // utime + stime
  std::uint64_t child_cpu_ticks = 0;  // cutime + cstime: reaped children
  int threads = 1;
};
Expected<ProcStat> ParseProcStat(std::string_view text);
// /proc/PID/io: rchar + wchar.
Expected<std::uint64_t> ParseProcIo(std::string_view text);
// /proc/PID/statm: resident pages (second field) times the page size.
Expected<std::uint64_t> ParseStatmRss(std::string_view text, std::uint64_t page_size);
// /proc/PID/task/TID/children: pids separated by spaces.
std::vector<pid_t> ParseChildren(std::string_view text);

struct JobUsage {
  double cpu_share = 0;    // CPUs used since the previous sample
  double cpu_seconds = 0;  // its processes' CPU time, with the reaped ones
  std::uint64_t rss_bytes = 0;
  double io_bytes_per_s = 0;
  double runnable = 0;
  int processes = 0;
  std::chrono::steady_clock::time_point sampled_at{};
};

class JobUsageSampler {
 public:
  static constexpr std::size_t kRunnableWindow = 5;
  // use_taskstats false: /proc only (tests compare the two).
  explicit JobUsageSampler(bool use_taskstats = true, SampleSchedule::Options schedule = {});
  ~JobUsageSampler();
  JobUsageSampler(const JobUsageSampler&) = delete;
  JobUsageSampler& operator=(const JobUsageSampler&) = delete;

  // "taskstats" or "/proc (taskstats: <why not>)".
  const std::string& source() const { return source_; }
  bool taskstats() const { return taskstats_ != nullptr; }
  // jobs: job id -> host pid of its tern-init. Samples those that are due (all of them when
  // every_job) and returns their ids. node_cpu_seconds: the node cgroup's CPU time, if any.
  std::vector<std::string> Sample(const std::map<std::string, pid_t>& jobs,
                                  std::chrono::steady_clock::time_point now,
                                  std::optional<double> node_cpu_seconds = std::nullopt,
                                  bool every_job = false);
  std::optional<JobUsage> Get(const std::string& job) const;
  const SampleSchedule& schedule() const { return schedule_; }

 private:
  struct Totals {
    double cpu_seconds = 0;
    std::uint64_t io_bytes = 0;
    std::uint64_t rss_bytes = 0;
    int runnable = 0;
    int processes = 0;
  };
  struct State {
    JobUsage usage;
    Totals last;
    std::chrono::steady_clock::time_point at{};
    std::deque<int> runnable;
  };
  struct Process {
    pid_t pid = 0;
    std::vector<pid_t> tids;  // its threads other than pid itself
  };
  // The job's processes and what their /proc/PID/stat said (read once, on the walk).
  Totals Measure(pid_t init, const std::vector<pid_t>* namespace_pids);

  std::unique_ptr<Taskstats> taskstats_;
  std::string source_;
  bool children_files_ = false;  // /proc/PID/task/TID/children exists (CONFIG_PROC_CHILDREN)
  SampleSchedule schedule_;
  std::map<std::string, State> jobs_;
};

}  // namespace tern::agent
