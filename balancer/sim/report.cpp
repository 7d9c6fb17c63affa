#include "report.hpp"

#include <cstdio>
#include <string>

namespace tern::sim {

void PrintTable(std::ostream& out, const std::vector<SimResult>& results) {
  char line[256];
  std::snprintf(line, sizeof line, "%7s  %-12s %5s %9s %9s %12s %11s %10s %12s %10s %9s %10s %8s\n",
                "nodes", "policy", "util", "jobs", "slowdown", "response_s", "migr/job",
                "remote/job", "gossip_B/s", "view_age", "view_n", "sample_age", "wall_s");
  out << line;
  for (const auto& r : results) {
    std::snprintf(
        line, sizeof line,
        "%7zu  %-12s %5.2f %9llu %9.2f %12.1f %11.3f %10.3f %12.0f %10.1f %9.0f %10.1f %8.1f\n",
        r.nodes, ToString(r.policy).c_str(), r.utilisation,
        static_cast<unsigned long long>(r.jobs_done), r.mean_slowdown, r.mean_response_s,
        r.migrations_per_job, r.remote_starts_per_job, r.gossip_bytes_per_node_s, r.mean_view_age_s,
        r.mean_view_size, r.mean_sample_age_s, r.wall_s);
    out << line;
  }
}

void WriteCsv(std::ostream& out, const std::vector<SimResult>& results) {
  out << "nodes,policy,utilisation,remote_starts_per_job,jobs_done,jobs_started,mean_slowdown,mean_"
         "response_s,migrations_per_job,"
         "gossip_bytes_per_node_s,mean_view_age_s,mean_view_size,mean_sample_age_s,wall_s\n";
  for (const auto& r : results) {
    out << r.nodes << ',' << ToString(r.policy) << ',' << r.utilisation << ','
        << r.remote_starts_per_job << ',' << r.jobs_done << ',' << r.jobs_started << ','
        << r.mean_slowdown << ',' << r.mean_response_s << ',' << r.migrations_per_job << ','
        << r.gossip_bytes_per_node_s << ',' << r.mean_view_age_s << ',' << r.mean_view_size << ','
        << r.mean_sample_age_s << ',' << r.wall_s << '\n';
  }
}

}  // namespace tern::sim
