#include "workload.hpp"

#include <algorithm>
#include <cmath>

namespace tern::sim {
namespace {

// Mean of the bounded Pareto distribution on [k, p] with shape alpha.
double BoundedParetoMean(double alpha, double k, double p) {
  if (std::abs(alpha - 1.0) < 1e-9) return (p * k / (p - k)) * std::log(p / k);
  const double ka = std::pow(k, alpha);
  return ka / (1 - std::pow(k / p, alpha)) * alpha / (alpha - 1) *
         (1 / std::pow(k, alpha - 1) - 1 / std::pow(p, alpha - 1));
}

}  // namespace

Workload::Workload(const WorkloadOptions& options) : options_(options), rng_(options.seed) {
  // Nodes: 1, 2 or 4 cores; speeds from 0.5 to 2; 2 to 16 GiB.
  std::mt19937_64 node_rng(options.seed ^ 0x9e3779b97f4a7c15ull);
  const double cores[] = {1, 2, 4};
  const double speeds[] = {0.5, 1.0, 1.0, 1.5, 2.0};
  const std::uint64_t gib[] = {2, 4, 8, 16};
  double capacity = 0;
  for (std::size_t i = 0; i < options.nodes; ++i) {
    NodeSpec node;
    node.cores = cores[node_rng() % 3];
    node.speed = speeds[node_rng() % 5];
    node.mem_limit_bytes = gib[node_rng() % 4] << 30;
    if (options.homogeneous) node = NodeSpec{1, 1, 4ull << 30};
    nodes_.push_back(node);
    capacity += node.capacity();
  }
  mean_work_s_ = BoundedParetoMean(options.pareto_alpha, options.work_min_s, options.work_max_s);
  rate_ = options.load * capacity / mean_work_s_;
  next_arrival_ = std::exponential_distribution<double>(rate_)(rng_);
}

double Workload::Work() {
  // Inverse transform of the bounded Pareto distribution.
  const double u = std::uniform_real_distribution<double>(0, 1)(rng_);
  const double a = options_.pareto_alpha;
  const double ka = std::pow(options_.work_min_s, a);
  const double pa = std::pow(options_.work_max_s, a);
  return std::pow(-(u * pa - u * ka - pa) / (pa * ka), -1 / a);
}

void Workload::Arrivals(double from, double to, std::vector<JobSpec>& out) {
  std::exponential_distribution<double> gap(rate_);
  std::lognormal_distribution<double> rss(std::log(options_.rss_median_mib), options_.rss_sigma);
  while (next_arrival_ < to) {
    if (next_arrival_ >= from) {
      JobSpec job;
      job.arrival_s = next_arrival_;
      job.work_s = Work();
      job.rss_bytes =
          static_cast<std::uint64_t>(std::min(rss(rng_), options_.rss_max_mib) * (1 << 20));
      job.origin = static_cast<std::uint32_t>(rng_() % nodes_.size());
      // Drawn only when asked for, so that the default workload stays the same.
      job.explicit_node = options_.explicit_node > 0 && std::uniform_real_distribution<double>(
                                                            0, 1)(rng_) < options_.explicit_node;
      out.push_back(job);
    }
    next_arrival_ += gap(rng_);
  }
}

}  // namespace tern::sim
