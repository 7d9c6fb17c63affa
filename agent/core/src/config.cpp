#include "tern/agent/config.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace tern::agent {
namespace {

std::string Trim(std::string text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  const auto last = text.find_last_not_of(" \t\r\n");
  return text.substr(first, last - first + 1);
}

class TableReader {
 public:
  TableReader(const toml::table& root, std::string origin)
      : root_(root), origin_(std::move(origin)) {}

  void String(const char* section, const char* key, std::string& out) {
    const toml::node* node = Find(section, key);
    if (node == nullptr) return;
    if (auto value = node->value<std::string>()) {
      out = *value;
    } else {
      Complain(section, key, "must be a string");
    }
  }

  // A whole number of milliseconds in [1, 30 days]: larger would overflow a deadline in the
  // clocks' nanoseconds. Integers only (value_exact): toml++'s value<int64_t>() casts a float
  // such as 5e40 to an integer first, which is undefined behaviour (found by the config fuzzer).
  void Millis(const char* section, const char* key, std::chrono::milliseconds& out) {
    constexpr std::int64_t kMaxMillis = std::int64_t{30} * 24 * 3600 * 1000;
    const toml::node* node = Find(section, key);
    if (node == nullptr) return;
    auto value = node->value_exact<int64_t>();
    if (!value || *value <= 0 || *value > kMaxMillis) {
      const std::string what = "must be a whole number of milliseconds from 1 to " +
                               std::to_string(kMaxMillis) + " (30 days)";
      Complain(section, key, what.c_str());
      return;
    }
    out = std::chrono::milliseconds(*value);
  }

  void Bool(const char* section, const char* key, bool& out) {
    const toml::node* node = Find(section, key);
    if (node == nullptr) return;
    if (auto value = node->value_exact<bool>()) {
      out = *value;
    } else {
      Complain(section, key, "must be true or false");
    }
  }

  void Int(const char* section, const char* key, int& out, int min, int max) {
    const toml::node* node = Find(section, key);
    if (node == nullptr) return;
    auto value = node->value_exact<int64_t>();
    if (!value || *value < min || *value > max) {
      Complain(section, key,
               ("must be a whole number from " + std::to_string(min) + " to " + std::to_string(max))
                   .c_str());
      return;
    }
    out = static_cast<int>(*value);
  }

  // A number (integer or float) in [min, max].
  void Number(const char* section, const char* key, double& out, double min, double max) {
    const toml::node* node = Find(section, key);
    if (node == nullptr) return;
    auto value = node->value<double>();
    if (!value || !(*value >= min && *value <= max)) {
      std::ostringstream what;
      what << "must be a number from " << min << " to " << max;
      Complain(section, key, what.str().c_str());
      return;
    }
    out = *value;
  }

  void Count(const char* section, const char* key, std::size_t& out, std::int64_t max) {
    const toml::node* node = Find(section, key);
    if (node == nullptr) return;
    auto value = node->value_exact<int64_t>();  // integers only: see Millis
    if (!value || *value <= 0 || *value > max) {
      const std::string what = "must be a whole number from 1 to " + std::to_string(max);
      Complain(section, key, what.c_str());
      return;
    }
    out = static_cast<std::size_t>(*value);
  }

  // A whole number in [min, max] into an unsigned setting.
  template <typename T>
  void Whole(const char* section, const char* key, T& out, std::int64_t min, std::int64_t max) {
    const toml::node* node = Find(section, key);
    if (node == nullptr) return;
    auto value = node->value_exact<int64_t>();
    if (!value || *value < min || *value > max) {
      const std::string what =
          "must be a whole number from " + std::to_string(min) + " to " + std::to_string(max);
      Complain(section, key, what.c_str());
      return;
    }
    out = static_cast<T>(*value);
  }

  void StringList(const char* section, const char* key, std::vector<std::string>& out) {
    const toml::node* node = Find(section, key);
    if (node == nullptr) return;
    const toml::array* array = node->as_array();
    if (array == nullptr) {
      Complain(section, key, "must be an array of strings");
      return;
    }
    out.clear();
    for (const auto& element : *array) {
      auto value = element.value<std::string>();
      if (!value) {
        Complain(section, key, "must be an array of strings");
        return;
      }
      out.push_back(*value);
    }
  }

  const std::string& problem() const { return problem_; }

 private:
  const toml::node* Find(const char* section, const char* key) const {
    const toml::table* table = root_[section].as_table();
    if (table == nullptr) return nullptr;
    return table->get(key);
  }

  void Complain(const char* section, const char* key, const char* what) {
    if (problem_.empty()) {
      problem_ = origin_ + ": [" + section + "] " + key + " " + what;
    }
  }

  const toml::table& root_;
  std::string origin_;
  std::string problem_;
};

std::string FirstNonLoopbackIpv4() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::string found;
  for (ifaddrs* entry = list; entry != nullptr; entry = entry->ifa_next) {
    if (entry->ifa_addr == nullptr || entry->ifa_addr->sa_family != AF_INET) continue;
    if ((entry->ifa_flags & IFF_LOOPBACK) != 0 || (entry->ifa_flags & IFF_UP) == 0) continue;
    char text[INET_ADDRSTRLEN] = {};
    const auto* address = reinterpret_cast<const sockaddr_in*>(entry->ifa_addr);
    inet_ntop(AF_INET, &address->sin_addr, text, sizeof text);
    found = text;
    break;
  }
  freeifaddrs(list);
  return found;
}

std::string PortOf(const std::string& host_port) {
  const auto colon = host_port.rfind(':');
  return colon == std::string::npos ? "" : host_port.substr(colon + 1);
}

}  // namespace

Expected<AgentConfig> ParseConfig(const std::string& toml_text, const std::string& origin) {
  toml::table root;
  try {
    root = toml::parse(toml_text, origin);
  } catch (const toml::parse_error& error) {
    std::ostringstream message;
    message << origin << ":" << error.source().begin.line << ": " << error.description();
    return Fail(message.str());
  }
  AgentConfig config;
  config.source = origin;
  TableReader reader(root, origin);
  reader.String("node", "name", config.node_name);
  reader.String("node", "state_dir", config.state_dir);
  reader.String("node", "run_dir", config.run_dir);
  reader.String("node", "cgroup", config.cgroup);
  reader.Bool("node", "cgroup_create", config.cgroup_create);
  reader.String("api", "unix_socket", config.api_unix_socket);
  reader.String("api", "listen", config.api_listen);
  reader.String("api", "tokens_file", config.api_tokens_file);
  reader.Count("api", "max_connections", config.api_max_connections, 65536);
  reader.Millis("api", "request_timeout_ms", config.api_request_timeout);
  reader.Count("api", "event_queue_bytes", config.api_event_queue_bytes, std::int64_t{1} << 30);
  reader.String("cluster", "listen", config.cluster_listen);
  reader.String("cluster", "advertise", config.cluster_advertise);
  reader.StringList("cluster", "seeds", config.seeds);
  reader.String("cluster", "secret", config.secret);
  reader.String("cluster", "secret_file", config.secret_file);
  reader.Millis("cluster", "heartbeat_ms", config.heartbeat);
  reader.Millis("cluster", "suspect_after_ms", config.suspect_after);
  reader.Millis("cluster", "dead_after_ms", config.dead_after);
  reader.Count("cluster", "max_links", config.max_links, 4096);
  reader.Count("cluster", "gossip_fanout", config.gossip_fanout, 64);
  reader.Count("cluster", "gossip_window", config.gossip_window, 64);
  reader.Count("cluster", "gossip_view_max", config.gossip_view_max, 65536);
  reader.Millis("cluster", "link_idle_ms", config.link_idle);
  reader.String("tls", "ca", config.tls_ca);
  reader.String("tls", "cert", config.tls_cert);
  reader.String("tls", "key", config.tls_key);
  reader.Bool("security", "allow_remote_root", config.allow_remote_root);
  reader.Bool("testing", "faults", config.testing_faults);
  reader.Millis("jobs", "cancel_grace_ms", config.cancel_grace);
  reader.String("jobs", "dir", config.jobs_dir);
  reader.String("jobs", "init_path", config.init_path);
  reader.String("criu", "path", config.criu_path);
  reader.String("net", "pool", config.net_pool);
  reader.String("net", "subnet", config.net_subnet);
  reader.String("net", "uplink", config.net_uplink);
  auto& ipc = config.ipc_limits;
  reader.Whole("ipc", "max_queue_limit", ipc.max_queue_limit, 1, 1 << 20);
  reader.Whole("ipc", "max_ports_per_job", ipc.max_ports_per_job, 1, 1 << 20);
  // A message of the largest size must be able to wait in a queue.
  reader.Whole("ipc", "max_queued_bytes_per_job", ipc.max_queued_bytes_per_job,
               static_cast<std::int64_t>(ipc::kMaxMessageBytes) + 256, std::int64_t{1} << 40);
  reader.Whole("ipc", "max_region_bytes", ipc.max_region_bytes, 1, std::int64_t{64} << 30);
  auto& balance = config.balancer;
  reader.Bool("balancer", "enabled", balance.enabled);
  reader.Millis("balancer", "interval_ms", balance.interval);
  reader.Int("balancer", "max_outgoing", balance.max_outgoing, 0, 64);
  reader.Millis("balancer", "min_age_ms", balance.min_age);
  reader.Millis("balancer", "stay_after_move_ms", balance.stay_after_move);
  reader.Millis("balancer", "retry_after_failure_ms", balance.retry_after_failure);
  reader.Number("balancer", "min_gain_ratio", balance.min_gain_ratio, 0, 1e6);
  reader.Number("balancer", "imbalance", balance.imbalance, 0, 1e3);
  reader.Number("balancer", "memory_high", balance.memory_high, 0.01, 1);
  reader.String("log", "level", config.log_level);
  reader.String("log", "file", config.log_file);
  if (!reader.problem().empty()) return Fail(reader.problem());
  if (config.dead_after <= config.suspect_after) {
    return Fail(origin + ": [cluster] dead_after_ms must be larger than suspect_after_ms");
  }
  if (config.cgroup.find("..") != std::string::npos) {
    return Fail(origin + ": [node] cgroup must not contain '..'");
  }
  if (config.cgroup_create && (config.cgroup.empty() || config.cgroup.front() != '/')) {
    return Fail(origin +
                ": [node] cgroup_create needs an absolute [node] cgroup (\"/tern-jobs\"): a "
                "relative one would be inside the agent's own cgroup");
  }
  if (config.api_max_connections == 0) {
    return Fail(origin + ": [api] max_connections must be at least 1");
  }
  if (config.api_event_queue_bytes < 4096) {
    return Fail(origin + ": [api] event_queue_bytes must be at least 4096");
  }
  if (config.api_request_timeout.count() <= 0) {
    return Fail(origin + ": [api] request_timeout_ms must be positive");
  }
  if (!config.api_listen.empty() && PortOf(config.api_listen).empty()) {
    return Fail(origin + ": [api] listen must be host:port (or \"\" for no TCP API)");
  }
  if (config.cluster_listen.empty() || PortOf(config.cluster_listen).empty()) {
    return Fail(origin + ": [cluster] listen must be host:port");
  }
  return config;
}

Expected<AgentConfig> LoadConfig(const std::string& path, bool allow_missing) {
  std::ifstream file(path);
  if (!file) {
    if (allow_missing && !std::filesystem::exists(path)) {
      AgentConfig defaults;
      defaults.source = "(defaults; " + path + " does not exist)";
      return defaults;
    }
    return Fail("cannot read config " + path + ": " + std::strerror(errno));
  }
  std::stringstream text;
  text << file.rdbuf();
  return ParseConfig(text.str(), path);
}

Expected<void> ResolveMachineDefaults(AgentConfig& config, const std::string& ternd_path) {
  if (config.node_name.empty()) {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    config.node_name = host;
  }
  for (char c : config.node_name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')) {
      return Fail("node name '" + config.node_name +
                  "' may hold only letters, digits, '-' and '_' (set [node] name)");
    }
  }
  if (config.cluster_advertise.empty()) {
    const std::string address = FirstNonLoopbackIpv4();
    config.cluster_advertise =
        (address.empty() ? "127.0.0.1" : address) + ":" + PortOf(config.cluster_listen);
  }
  if (config.jobs_dir.empty()) config.jobs_dir = config.state_dir + "/jobs";
  if (config.init_path.empty()) {
    const auto beside = std::filesystem::path(ternd_path).parent_path() / "tern-init";
    config.init_path = beside.string();
  }
  if (config.secret.empty() && !config.secret_file.empty()) {
    std::ifstream file(config.secret_file);
    if (file) {
      std::stringstream text;
      text << file.rdbuf();
      config.secret = Trim(text.str());
    }
  }
  if (config.secret.empty()) {
    return Fail("no cluster secret: set [cluster] secret, or put one in " + config.secret_file +
                " (e.g. `head -c 32 /dev/urandom | base64 > " + config.secret_file +
                "; chmod 600 " + config.secret_file + "`) — the same on every node");
  }
  return {};
}

}  // namespace tern::agent
