#include "tern/agent/metrics.hpp"

#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace tern::agent {
namespace {

std::string Escape(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// The shortest text that reads back as the same double (0.025, not 0.025000000000000001).
std::string Number(double value) {
  char text[64];
  const auto end = std::to_chars(text, text + sizeof text, value).ptr;
  return std::string(text, end);
}

class Writer {
 public:
  explicit Writer(std::string node) : node_(Escape(node)) {}

  void Family(const std::string& name, const std::string& type, const std::string& help) {
    out_ << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
  }
  // `labels`: extra labels, already `key="value"` joined by commas.
  void Sample(const std::string& name, double value, const std::string& labels = "",
              const std::string& node = "") {
    out_ << name << "{node=\"" << (node.empty() ? node_ : Escape(node)) << "\""
         << (labels.empty() ? "" : "," + labels) << "} " << Number(value) << "\n";
  }
  void Metric(const std::string& name, const std::string& type, const std::string& help,
              double value) {
    Family(name, type, help);
    Sample(name, value);
  }
  void Histogram(const std::string& name, const std::string& help,
                 const MigrationHistory::Histogram& histogram) {
    Family(name, "histogram", help);
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < MigrationHistory::kBucketsMs.size(); ++i) {
      cumulative += histogram.buckets[i];
      Sample(name + "_bucket", static_cast<double>(cumulative),
             "le=\"" + Number(MigrationHistory::kBucketsMs[i] / 1000.0) + "\"");
    }
    Sample(name + "_bucket", static_cast<double>(histogram.count), "le=\"+Inf\"");
    Sample(name + "_sum", histogram.sum_ms / 1000.0);
    Sample(name + "_count", static_cast<double>(histogram.count));
  }
  std::string str() const { return out_.str(); }

 private:
  std::string node_;
  std::ostringstream out_;
};

}  // namespace

SelfUsage ReadSelfUsage() {
  SelfUsage usage;
  std::ifstream stat("/proc/self/stat");
  std::string line;
  std::getline(stat, line);
  // Fields after the command (which may hold spaces) start after its closing parenthesis.
  const auto close = line.rfind(')');
  if (close != std::string::npos) {
    std::istringstream fields(line.substr(close + 2));
    std::string field;
    double utime = 0, stime = 0, start_ticks = 0;
    long rss_pages = 0;
    for (int index = 3; fields >> field; ++index) {
      if (index == 14) utime = std::stod(field);
      if (index == 15) stime = std::stod(field);
      if (index == 22) start_ticks = std::stod(field);
      if (index == 24) rss_pages = std::stol(field);
    }
    const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
    usage.cpu_seconds = (utime + stime) / ticks;
    usage.rss_bytes =
        static_cast<std::uint64_t>(rss_pages) * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
    std::ifstream proc_stat("/proc/stat");
    std::string key;
    while (proc_stat >> key) {
      if (key == "btime") {
        double boot = 0;
        proc_stat >> boot;
        usage.start_time_seconds = boot + start_ticks / ticks;
        break;
      }
      std::getline(proc_stat, line);
    }
  }
  return usage;
}

std::string RenderMetrics(const MetricsInput& input) {
  Writer w(input.node);
  w.Family("tern_node_up", "gauge", "1 if the node is alive in this agent's view of the cluster");
  for (const auto& n : input.nodes) w.Sample("tern_node_up", n.alive ? 1 : 0, "", n.name);
  w.Family("tern_node_draining", "gauge", "1 if the node is draining (tern drain)");
  for (const auto& n : input.nodes) w.Sample("tern_node_draining", n.draining ? 1 : 0, "", n.name);
  w.Family("tern_node_load1", "gauge", "1-minute load average of the node");
  for (const auto& n : input.nodes) w.Sample("tern_node_load1", n.load.load1, "", n.name);
  w.Family("tern_node_cpus", "gauge", "online CPUs of the node");
  for (const auto& n : input.nodes) w.Sample("tern_node_cpus", n.load.cpus, "", n.name);
  w.Family("tern_node_capacity_cpus", "gauge", "CPUs the node's jobs can use");
  for (const auto& n : input.nodes)
    w.Sample("tern_node_capacity_cpus", n.load.capacity, "", n.name);
  w.Family("tern_node_demand_cpus", "gauge", "CPUs the node's jobs want");
  for (const auto& n : input.nodes) w.Sample("tern_node_demand_cpus", n.load.demand, "", n.name);
  w.Family("tern_node_memory_limit_bytes", "gauge", "memory the node's jobs may use");
  for (const auto& n : input.nodes) {
    w.Sample("tern_node_memory_limit_bytes", static_cast<double>(n.load.mem_limit_bytes), "",
             n.name);
  }
  w.Family("tern_node_memory_used_bytes", "gauge", "memory the node's jobs use");
  for (const auto& n : input.nodes) {
    w.Sample("tern_node_memory_used_bytes", static_cast<double>(n.load.mem_used_bytes), "", n.name);
  }
  w.Family("tern_node_jobs_running", "gauge", "jobs running on the node");
  for (const auto& n : input.nodes)
    w.Sample("tern_node_jobs_running", n.load.jobs_running, "", n.name);

  w.Family("tern_jobs", "gauge", "this node's jobs by state");
  for (const auto& [state, count] : input.jobs_by_state) {
    w.Sample("tern_jobs", static_cast<double>(count), "state=\"" + Escape(state) + "\"");
  }
  if (input.migrations != nullptr) {
    const MigrationHistory& m = *input.migrations;
    w.Family("tern_migrations_total", "counter",
             "migrations this node started, by outcome (moved, failed) and mode");
    for (const auto& [key, count] : m.outcomes()) {
      w.Sample("tern_migrations_total", static_cast<double>(count),
               "outcome=\"" + Escape(key.first) + "\",mode=\"" + Escape(key.second) + "\"");
    }
    w.Metric("tern_migrations_running", "gauge", "migrations this node has under way",
             static_cast<double>(m.running()));
    w.Histogram("tern_migration_freeze_seconds",
                "how long moved jobs were frozen (freeze to resume on the destination)",
                m.freeze());
    w.Histogram("tern_migration_duration_seconds", "total time of moves, pre-flight to commit",
                m.total());
    w.Metric("tern_migration_bytes_total", "counter",
             "bytes moved by this node's migrations (pages, images, job directories)",
             static_cast<double>(m.bytes_moved()));
  }
  w.Metric("tern_ipc_local_bytes_total", "counter",
           "IPC message bytes between jobs through this node's port router",
           static_cast<double>(input.ipc_local_bytes));
  w.Metric("tern_ipc_remote_frames_total", "counter", "IPC frames sent to other nodes",
           static_cast<double>(input.ipc_remote_frames));
  w.Metric("tern_ipc_remote_bytes_total", "counter", "IPC frame bytes sent to other nodes",
           static_cast<double>(input.ipc_remote_bytes));
  w.Metric("tern_gossip_bytes_sent_total", "counter", "load gossip bytes sent, keepalives included",
           static_cast<double>(input.gossip_bytes_sent));
  w.Metric("tern_gossip_bytes_received_total", "counter", "load gossip bytes received",
           static_cast<double>(input.gossip_bytes_received));
  w.Metric("tern_gossip_frames_sent_total", "counter", "load gossip frames sent",
           static_cast<double>(input.gossip_frames_sent));
  w.Metric("tern_peer_bytes_sent_total", "counter", "every frame byte sent to other agents",
           static_cast<double>(input.peer_bytes_sent));
  w.Metric("tern_peer_links_open", "gauge", "links to other agents open now",
           static_cast<double>(input.peer_links_open));
  w.Metric("tern_event_streams", "gauge", "open /v1/events streams",
           static_cast<double>(input.event_streams));
  w.Metric("process_cpu_seconds_total", "counter", "CPU time of the agent (user + system)",
           input.cpu_seconds);
  w.Metric("process_resident_memory_bytes", "gauge", "resident memory of the agent",
           static_cast<double>(input.rss_bytes));
  w.Metric("process_start_time_seconds", "gauge", "when the agent started (Unix time)",
           input.start_time_seconds);
  return w.str();
}

}  // namespace tern::agent
