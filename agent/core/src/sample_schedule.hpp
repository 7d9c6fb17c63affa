// SampleSchedule: when each running job is sampled next (docs/balancer.md "Job samples").
// Reading a job's /proc files costs the agent CPU in proportion to the jobs it runs; a job that
// used no CPU lately is read less often, so that a node of 100 sleeping jobs costs little.
//
// Policy: a job is sampled every `base` interval while it is busy (it used at least
// `idle_cpu_share` of a CPU since its previous sample, or had a runnable task). After
// `idle_samples` idle samples in a row its interval doubles with each further idle sample, up
// to `max`. One busy sample puts it back on `base`. Wake() makes jobs due at once without
// shortening their interval (the next sample decides): the agent wakes every job when the node
// cgroup's CPU time grew more than the jobs it sampled explain (OnNodeCpu), i.e. a job that
// was read seldom started to work, and when someone asks for fresh figures.
//
// Contract: time is passed in; no I/O. A job never seen is due. Forget/KeepOnly drop jobs.
//
// Thread-safety: not thread-safe; a value used on the agent's io_context thread.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>

namespace tern::agent {

class SampleSchedule {
 public:
  using Clock = std::chrono::steady_clock;
  using Duration = Clock::duration;

  struct Options {
    Duration base = std::chrono::seconds(1);
    Duration max = std::chrono::seconds(8);
    int idle_samples = 3;
    double idle_cpu_share = 0.005;  // below half a percent of a CPU a job is idle
    // CPU (in CPUs over the interval) the node cgroup may show beyond what the sampled jobs
    // explain before every job is woken: the agent's own helpers and tern-init's bookkeeping.
    double unexplained_cpu = 0.02;
  };

  SampleSchedule() = default;
  explicit SampleSchedule(Options options) : options_(options) {}

  bool Due(const std::string& job, Clock::time_point now) const;
  // After a sample of `job` at `now`: its CPU share since its previous sample and its runnable
  // tasks (the latest count, not the window's mean).
  void OnSampled(const std::string& job, double cpu_share, int runnable, Clock::time_point now);
  // Every known job due at once.
  void WakeAll(Clock::time_point now);
  void Wake(const std::string& job, Clock::time_point now);
  // The node cgroup's CPU seconds at `now`, and the CPU seconds the jobs sampled since the
  // previous call used (each over its own period). Returns true, and wakes every job, when
  // the cgroup grew by more than that plus Options::unexplained_cpu per second.
  bool OnNodeCpu(double cgroup_cpu_seconds, double sampled_cpu_seconds, Clock::time_point now);
  void Forget(const std::string& job);
  // Forgets every job for which keep(job) is false.
  template <typename Keep>
  void KeepOnly(Keep&& keep) {
    std::erase_if(jobs_, [&](const auto& entry) { return !keep(entry.first); });
  }

  // The job's interval now (base for one never seen).
  Duration Interval(const std::string& job) const;
  const Options& options() const { return options_; }

 private:
  struct State {
    Duration interval{};
    int idle_streak = 0;
    Clock::time_point next{};
  };
  Options options_;
  std::map<std::string, State> jobs_;
  std::optional<double> last_cgroup_cpu_;
  Clock::time_point last_cgroup_at_{};
};

}  // namespace tern::agent
