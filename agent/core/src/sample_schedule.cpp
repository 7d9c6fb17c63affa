#include "sample_schedule.hpp"

#include <algorithm>

namespace tern::agent {

bool SampleSchedule::Due(const std::string& job, Clock::time_point now) const {
  const auto found = jobs_.find(job);
  return found == jobs_.end() || found->second.next <= now;
}

void SampleSchedule::OnSampled(const std::string& job, double cpu_share, int runnable,
                               Clock::time_point now) {
  State& state = jobs_[job];
  const bool busy = cpu_share >= options_.idle_cpu_share || runnable > 0;
  if (busy) {
    state.idle_streak = 0;
    state.interval = options_.base;
  } else {
    ++state.idle_streak;
    if (state.interval == Duration{}) state.interval = options_.base;
    if (state.idle_streak > options_.idle_samples) {
      state.interval = std::min(state.interval * 2, std::max(options_.max, options_.base));
    }
  }
  state.next = now + state.interval;
}

void SampleSchedule::WakeAll(Clock::time_point now) {
  for (auto& [job, state] : jobs_) state.next = std::min(state.next, now);
}

void SampleSchedule::Wake(const std::string& job, Clock::time_point now) {
  if (auto found = jobs_.find(job); found != jobs_.end()) {
    found->second.next = std::min(found->second.next, now);
  }
}

bool SampleSchedule::OnNodeCpu(double cgroup_cpu_seconds, double sampled_cpu_seconds,
                               Clock::time_point now) {
  const auto previous = last_cgroup_cpu_;
  const auto previous_at = last_cgroup_at_;
  last_cgroup_cpu_ = cgroup_cpu_seconds;
  last_cgroup_at_ = now;
  // The first reading, a clock that did not move, or a counter that went back (a new cgroup)
  // say nothing.
  if (!previous || now <= previous_at || cgroup_cpu_seconds < *previous) return false;
  const double seconds = std::chrono::duration<double>(now - previous_at).count();
  const double unexplained = (cgroup_cpu_seconds - *previous) - sampled_cpu_seconds;
  if (unexplained <= options_.unexplained_cpu * seconds) return false;
  WakeAll(now);
  return true;
}

void SampleSchedule::Forget(const std::string& job) { jobs_.erase(job); }

SampleSchedule::Duration SampleSchedule::Interval(const std::string& job) const {
  const auto found = jobs_.find(job);
  return found == jobs_.end() || found->second.interval == Duration{} ? options_.base
                                                                      : found->second.interval;
}

}  // namespace tern::agent
