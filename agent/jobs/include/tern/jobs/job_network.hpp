// Job networking (`tern submit --net`, docs/networking.md): a job's own network namespace with
// one address of the cluster's job pool, joined to its node by a veth pair, all set up over
// rtnetlink with libnl-route-3 (no `ip` runs).
//
// Layout on a node (NODE is the node's network namespace, JOB the job's):
//   NODE: veth "tj<8 hex of the job id>" up, proxy ARP on, route ADDR/32 dev tj... scope link;
//         the pool (e.g. 10.78.0.0/16) on-link on the uplink, proxy ARP on the uplink: the node
//         answers ARP for the addresses of the jobs it runs, so every node and the host reach a
//         job at whichever node runs it, and a gratuitous ARP moves it (SendGratuitousArp).
//   JOB:  lo up; eth0 up with ADDR/32; default route on-link via eth0 (the node's veth answers
//         every ARP by proxy).
// The namespace lives as long as the job's processes; its veth pair goes with it.
//
// Contract: every function is synchronous and reports a failure as one line naming the step.
// Root (CAP_NET_ADMIN in the node's namespace) is needed. The job never gets CAP_NET_ADMIN in
// its namespace (it runs as its user and the namespace belongs to the initial user namespace),
// so it cannot change its address or routes.
//
// Thread-safety: reentrant; the namespace switches happen on short-lived threads of their own,
// never on the caller's.
#pragma once

#include <cstdint>
#include <string>
#include <tern/expected.hpp>
#include <tern/unique_fd.hpp>

namespace tern::jobs {

// Where this node takes its jobs' addresses from ([net] in ternd.toml).
struct NetConfig {
  std::string pool;    // every job address of the cluster, CIDR ("10.78.0.0/16"); empty: off
  std::string subnet;  // this node's share of it for the jobs homed here ("10.78.3.0/24")
  std::string uplink;  // the node's interface towards the other nodes ("eth0")
  bool enabled() const { return !pool.empty() && !subnet.empty() && !uplink.empty(); }
};

// Parses "A.B.C.D/N"; false when malformed.
bool ParseCidr(const std::string& text, std::uint32_t* network, int* prefix);
// The address of job serial `serial` in `subnet`: host numbers 1 .. size-2 in turn (the
// network and broadcast numbers skipped). Deterministic, so the home node needs no table:
// two live jobs of one home collide only when more than size-2 jobs were submitted between them.
Expected<std::string> JobAddress(const std::string& subnet, std::uint64_t serial);
// "tj" and 8 hex digits of a hash of the job id: the node side of the job's veth pair.
std::string JobVethName(const std::string& job_id);

// Once at agent start: forwarding on, the pool on-link on the uplink with proxy ARP (and no
// proxy delay: the kernel's default waits up to 0.8 s before answering).
Expected<void> PrepareNodeNetwork(const NetConfig& config);

// Makes the job's namespace with its veth pair and address; returns an fd of the namespace
// (setns(2) into it to run the job there; the namespace stays while the fd or a process holds
// it). On failure nothing is left behind. With node_side_up false (a move's destination before
// the commit) the node side stays down and unrouted: the node does not claim the address yet.
Expected<tern::UniqueFd> CreateJobNetwork(const std::string& job_id, const std::string& address,
                                          bool node_side_up = true);

// The node side of a job's veth: down (the job's traffic stops both ways and the node stops
// answering ARP for `address`: the network lock while the job is frozen for a move; taking
// the link down drops its route) or up again with the route to `address` back.
Expected<void> SetJobLinkUp(const std::string& job_id, const std::string& address, bool up);
// Removes the node side of a job's veth (and with it the pair and the route); no error if gone.
Expected<void> RemoveJobLink(const std::string& job_id);
// Announces that `address` is now at this node: an ARP request for it from it, broadcast on
// `uplink`, which every neighbour that knows the address updates at once.
Expected<void> SendGratuitousArp(const std::string& uplink, const std::string& address);

}  // namespace tern::jobs
