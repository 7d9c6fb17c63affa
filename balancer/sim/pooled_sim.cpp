#include "pooled_sim.hpp"

#include <algorithm>
#include <functional>
#include <queue>
#include <vector>

#include "finished_jobs.hpp"

namespace tern::sim {

namespace {

struct Running {
  double done_at_service;  // the pool's service counter when the job has had all its work
  double arrival_s;
  double work_s;
  bool operator>(const Running& other) const { return done_at_service > other.done_at_service; }
};

}  // namespace

SimResult RunPooled(const SimOptions& options) {
  Workload workload(options.workload);
  std::vector<double> speeds;  // one per core, fastest first
  double capacity = 0;
  for (const NodeSpec& node : workload.nodes()) {
    capacity += node.capacity();
    const auto cores = static_cast<std::size_t>(std::max(1.0, node.cores));
    speeds.insert(speeds.end(), cores, node.speed);
  }
  std::sort(speeds.begin(), speeds.end(), std::greater<>());
  std::vector<double> fastest(speeds.size() + 1, 0.0);  // summed speed of the k fastest cores
  for (std::size_t k = 0; k < speeds.size(); ++k) fastest[k + 1] = fastest[k] + speeds[k];
  // The service each of n jobs gets per second.
  const auto rate = [&](std::size_t n) {
    return fastest[std::min(n, speeds.size())] / static_cast<double>(n);
  };

  SimResult result;
  result.policy = Policy::kIdeal;
  result.nodes = workload.nodes().size();
  FinishedJobs finished;
  std::priority_queue<Running, std::vector<Running>, std::greater<>> pool;
  double service = 0;  // what each job in the pool has received since the pool began
  double now = 0;
  // Runs the pool until `until` (no arrival before it).
  const auto run_until = [&](double until) {
    while (!pool.empty()) {
      const double per_second = rate(pool.size());
      const Running& next = pool.top();
      const double ends = now + (next.done_at_service - service) / per_second;
      if (ends > until) {
        service += (until - now) * per_second;
        break;
      }
      service = next.done_at_service;
      now = ends;
      finished.Add(next.arrival_s, now, next.work_s, /*moved=*/false);
      pool.pop();
    }
    now = until;
  };

  // Arrivals drawn in the other runs' steps: the same jobs as theirs.
  const double end = options.hours * 3600;
  std::vector<JobSpec> arrivals;
  for (double t = 0; t < end; t += options.step_s) {
    arrivals.clear();
    workload.Arrivals(t, t + options.step_s, arrivals);
    for (const JobSpec& job : arrivals) {
      if (job.arrival_s >= end) break;
      run_until(job.arrival_s);
      pool.push({service + job.work_s, job.arrival_s, job.work_s});
      ++result.jobs_started;
    }
  }
  run_until(end);  // jobs still running at the end are not counted, as in the other runs

  finished.Report(result, capacity, end);
  return result;
}

}  // namespace tern::sim
