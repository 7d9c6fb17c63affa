// AgentConfig: ternd's settings, read from a TOML file (docs/config.md is the reference).
//
// Contract: LoadConfig() either returns a complete config (every default filled in, the
// cluster secret read from `secret_file` when `secret` is empty) or one Error line naming the
// file, the key and what is wrong. A missing file is an error unless `allow_missing` is set.
//
// Thread-safety: plain data; LoadConfig is reentrant.
#pragma once

#include <chrono>
#include <string>
#include <tern/balancer/balancer.hpp>
#include <tern/expected.hpp>
#include <tern/ipc/port_router.hpp>
#include <vector>

namespace tern::agent {

struct AgentConfig {
  // [node]
  std::string node_name;  // default: host name
  std::string state_dir = "/var/lib/tern";
  std::string run_dir = "/run/tern";
  // The node's cgroup: jobs run in it and the node's capacity, demand and memory are read from
  // it. A path from each hierarchy's root ("/tern-node1") or, without the leading '/', relative
  // to the agent's own cgroup. Empty: none (host-wide figures).
  std::string cgroup;
  // The agent creates `cgroup` (which must then be absolute) and places jobs in it in every
  // hierarchy systemd tracks units by, so that stopping the agent's service cannot stop them.
  bool cgroup_create = false;
  // [api]
  std::string api_unix_socket = "/run/tern/ternd.sock";
  // TCP API: off by default. Every TCP request needs a bearer token from `api_tokens_file`;
  // a non-loopback address also needs TLS (docs/api.md).
  std::string api_listen;
  std::string api_tokens_file = "/etc/tern/tokens";
  std::size_t api_max_connections = 256;  // HTTP connections open at once, both listeners
  std::chrono::milliseconds api_request_timeout{30000};  // to read a request, to write an answer
  std::size_t api_event_queue_bytes = 1 << 20;  // queued for one slow event reader, then dropped
  // [cluster]
  std::string cluster_listen = "0.0.0.0:7071";
  std::string cluster_advertise;  // default: first non-loopback IPv4 + listen port
  std::vector<std::string> seeds;
  std::string secret;
  std::string secret_file = "/etc/tern/secret";
  std::chrono::milliseconds heartbeat{1000};
  std::chrono::milliseconds suspect_after{3000};
  std::chrono::milliseconds dead_after{10000};
  std::size_t max_links = 8;       // peer links kept open; more are opened on demand
  std::size_t gossip_fanout = 1;   // peers each heartbeat's gossip goes to
  std::size_t gossip_window = 16;  // entries per gossip message (at most 64: receivers refuse more)
  // Entries about other nodes the gossip view keeps, the freshest (at least gossip_window): memory
  // and merge cost per agent stay the same whatever the cluster's size (docs/balancer.md).
  std::size_t gossip_view_max = 64;
  std::chrono::milliseconds link_idle{30000};  // a link over max_links closes after this idle
  // [tls]: the node's certificate, its key (root's, 0600) and the cluster CA that signed every
  // node's certificate (docs/security.md). Peer links are mutual TLS 1.3 with these.
  std::string tls_ca = "/etc/tern/tls/ca.crt";
  std::string tls_cert = "/etc/tern/tls/node.crt";
  std::string tls_key = "/etc/tern/tls/node.key";
  // [security]
  // A request forwarded by another agent on behalf of uid 0 is refused unless this is set:
  // root on one node is then not root on every node.
  bool allow_remote_root = false;
  // [testing]
  // The fault campaign's hook (bench/faults): an admin may arm a fault for a phase of a move
  // (POST /v1/faults). Never on in production: an armed fault kills the agent.
  bool testing_faults = false;
  // [jobs]
  std::string jobs_dir;  // default: <state_dir>/jobs; may be a file system the nodes share
  std::chrono::milliseconds cancel_grace{5000};
  std::string init_path;  // default: tern-init beside ternd
  // [criu]
  std::string criu_path;
  // [net] (docs/networking.md): the cluster's job address pool, this node's share of it for
  // the jobs homed here, and the interface towards the other nodes. All three: `--net` works.
  std::string net_pool;
  std::string net_subnet;
  std::string net_uplink;
  // [ipc] (docs/ipc.md "Limits"): max_queue_limit, max_ports_per_job,
  // max_queued_bytes_per_job, max_region_bytes
  ipc::IpcLimits ipc_limits;
  // [balancer] (docs/balancer.md): enabled, interval_ms, max_outgoing, min_age_ms,
  // stay_after_move_ms, retry_after_failure_ms, min_gain_ratio, imbalance, memory_high
  balancer::BalancerOptions balancer;
  // [log]
  std::string log_level = "info";
  std::string log_file;
  // Where the config came from, for messages.
  std::string source = "(defaults)";
};

Expected<AgentConfig> LoadConfig(const std::string& path, bool allow_missing);

// Parses a TOML document; `origin` names it in error messages.
Expected<AgentConfig> ParseConfig(const std::string& toml_text, const std::string& origin);

// Fills the defaults that depend on the machine (host name, advertise address, init path,
// secret from secret_file). Separate from parsing so that tests can parse without a machine.
Expected<void> ResolveMachineDefaults(AgentConfig& config, const std::string& ternd_path);

}  // namespace tern::agent
