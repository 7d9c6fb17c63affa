// FinishedJobs: the tally every tern-sim run keeps of the jobs that finished, and what it
// reports of them (mean slowdown, of long jobs and of moved ones, response time, utilisation),
// so that every row of the table, the ideal's included, counts a job the same way.
//
// Thread-safety: none; one run's calling thread adds, in job order.
#pragma once

#include <cstdint>

#include "cluster_sim.hpp"

namespace tern::sim {

class FinishedJobs {
 public:
  // A job of `work_s` reference CPU seconds, submitted at `arrival_s`, finished at `at_s`.
  void Add(double arrival_s, double at_s, double work_s, bool moved) {
    const double response = at_s - arrival_s;
    const double slowdown = response / work_s;
    response_sum_ += response;
    slowdown_sum_ += slowdown;
    ++done_;
    work_done_ += work_s;
    if (work_s > kLongJobS) {
      long_sum_ += slowdown;
      ++long_done_;
    }
    if (moved) {
      moved_sum_ += slowdown;
      ++moved_done_;
    }
  }

  // Fills the jobs' part of `result`: `capacity` of the cluster over `end_s` seconds.
  void Report(SimResult& result, double capacity, double end_s) const {
    result.jobs_done = done_;
    if (done_ > 0) {
      result.mean_slowdown = slowdown_sum_ / static_cast<double>(done_);
      result.mean_response_s = response_sum_ / static_cast<double>(done_);
    }
    if (long_done_ > 0) result.mean_slowdown_long = long_sum_ / static_cast<double>(long_done_);
    if (moved_done_ > 0) result.mean_slowdown_moved = moved_sum_ / static_cast<double>(moved_done_);
    result.jobs_moved = moved_done_;
    if (capacity > 0 && end_s > 0) result.utilisation = work_done_ / (capacity * end_s);
  }

 private:
  static constexpr double kLongJobS = 10;  // SimResult::mean_slowdown_long's jobs
  std::uint64_t done_ = 0, long_done_ = 0, moved_done_ = 0;
  double work_done_ = 0, slowdown_sum_ = 0, response_sum_ = 0, long_sum_ = 0, moved_sum_ = 0;
};

}  // namespace tern::sim
