// JobUsageSampler: what each running job uses and wants, sampled once a second — CPU share,
// resident memory, I/O rate and `runnable`, the mean number of its tasks in state R (running
// or waiting for a CPU). A job throttled by its node's CPU quota still shows as runnable, so
// `runnable` is the job's CPU demand where `cpu_share` is only what it got.
//
// A job is the process tree in its own PID namespace (its tern-init is PID 1 there); one scan
// of /proc per sample finds every job's processes. I/O bytes come from taskstats (generic
// netlink) when it is usable here, else from /proc/PID/io; CPU time from /proc/PID/stat (steady
// where taskstats' per-task CPU figures were seen to jump); RSS from /proc/PID/statm (taskstats
// has only the high-water mark). source() says which.
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

namespace tern::agent {

class Taskstats;

// /proc/PID/stat (or /proc/PID/task/TID/stat): the fields used here.
struct ProcStat {
  char state = '?';
  std::uint64_t cpu_ticks = 0;  // utime + stime
  int threads = 1;
};
Expected<ProcStat> ParseProcStat(std::string_view text);
// /proc/PID/io: rchar + wchar.
Expected<std::uint64_t> ParseProcIo(std::string_view text);
// /proc/PID/statm: resident pages (second field) times the page size.
Expected<std::uint64_t> ParseStatmRss(std::string_view text, std::uint64_t page_size);

struct JobUsage {
  double cpu_share = 0;  // CPUs used since the previous sample
  double cpu_seconds = 0;
  std::uint64_t rss_bytes = 0;
  double io_bytes_per_s = 0;
  double runnable = 0;
  int processes = 0;
};

class JobUsageSampler {
 public:
  static constexpr std::size_t kRunnableWindow = 5;
  // use_taskstats false: /proc only (tests compare the two).
  explicit JobUsageSampler(bool use_taskstats = true);
  ~JobUsageSampler();
  JobUsageSampler(const JobUsageSampler&) = delete;
  JobUsageSampler& operator=(const JobUsageSampler&) = delete;

  // "taskstats" or "/proc (taskstats: <why not>)".
  const std::string& source() const { return source_; }
  bool taskstats() const { return taskstats_ != nullptr; }
  // jobs: job id -> host pid of its tern-init.
  void Sample(const std::map<std::string, pid_t>& jobs, std::chrono::steady_clock::time_point now);
  std::optional<JobUsage> Get(const std::string& job) const;

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
  Totals Measure(const std::vector<pid_t>& pids);

  std::unique_ptr<Taskstats> taskstats_;
  std::string source_;
  std::map<std::string, State> jobs_;
};

}  // namespace tern::agent
