#include "tern/jobs/job_network.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/link/veth.h>
#include <netlink/route/route.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <thread>

namespace tern::jobs {
namespace {

// libnl objects and sockets, each freed by its own function.
template <typename T, void (*Free)(T*)>
struct NlDeleter {
  void operator()(T* object) const {
    if (object != nullptr) Free(object);
  }
};
using NlSocket = std::unique_ptr<nl_sock, NlDeleter<nl_sock, nl_socket_free>>;
using NlLink = std::unique_ptr<rtnl_link, NlDeleter<rtnl_link, rtnl_link_put>>;
using NlAddr = std::unique_ptr<nl_addr, NlDeleter<nl_addr, nl_addr_put>>;
using NlRtAddr = std::unique_ptr<rtnl_addr, NlDeleter<rtnl_addr, rtnl_addr_put>>;
using NlRoute = std::unique_ptr<rtnl_route, NlDeleter<rtnl_route, rtnl_route_put>>;

std::string NlText(int code) { return nl_geterror(code); }

// A route socket in the calling thread's network namespace.
Expected<NlSocket> RouteSocket() {
  NlSocket socket(nl_socket_alloc());
  if (!socket) return Fail("cannot allocate a netlink socket");
  if (int code = nl_connect(socket.get(), NETLINK_ROUTE); code < 0) {
    return Fail("cannot open a route netlink socket: " + NlText(code));
  }
  return socket;
}

Expected<int> IfIndex(nl_sock* socket, const std::string& name) {
  rtnl_link* raw = nullptr;
  if (int code = rtnl_link_get_kernel(socket, 0, name.c_str(), &raw); code < 0) {
    return Fail("no interface " + name + ": " + NlText(code));
  }
  NlLink link(raw);
  return rtnl_link_get_ifindex(link.get());
}

Expected<void> LinkUp(nl_sock* socket, const std::string& name, bool up) {
  rtnl_link* raw = nullptr;
  if (int code = rtnl_link_get_kernel(socket, 0, name.c_str(), &raw); code < 0) {
    return Fail("no interface " + name + ": " + NlText(code));
  }
  NlLink link(raw);
  NlLink change(rtnl_link_alloc());
  if (up) {
    rtnl_link_set_flags(change.get(), IFF_UP);
  } else {
    rtnl_link_unset_flags(change.get(), IFF_UP);
  }
  if (int code = rtnl_link_change(socket, link.get(), change.get(), 0); code < 0) {
    return Fail("cannot set " + name + (up ? " up: " : " down: ") + NlText(code));
  }
  return {};
}

Expected<void> AddAddress(nl_sock* socket, int ifindex, const std::string& cidr) {
  nl_addr* raw = nullptr;
  if (int code = nl_addr_parse(cidr.c_str(), AF_INET, &raw); code < 0) {
    return Fail("bad address " + cidr + ": " + NlText(code));
  }
  NlAddr local(raw);
  NlRtAddr address(rtnl_addr_alloc());
  rtnl_addr_set_ifindex(address.get(), ifindex);
  rtnl_addr_set_family(address.get(), AF_INET);
  rtnl_addr_set_local(address.get(), local.get());
  if (int code = rtnl_addr_add(socket, address.get(), 0); code < 0) {
    return Fail("cannot add address " + cidr + ": " + NlText(code));
  }
  return {};
}

// An on-link route to `destination` ("A.B.C.D/N" or "default") through `ifindex`, replacing
// any route to the same destination.
Expected<void> AddLinkRoute(nl_sock* socket, int ifindex, const std::string& destination) {
  nl_addr* raw = nullptr;
  if (int code = nl_addr_parse(destination.c_str(), AF_INET, &raw); code < 0) {
    return Fail("bad route destination " + destination + ": " + NlText(code));
  }
  NlAddr dst(raw);
  NlRoute route(rtnl_route_alloc());
  rtnl_route_set_family(route.get(), AF_INET);
  rtnl_route_set_table(route.get(), RT_TABLE_MAIN);
  rtnl_route_set_protocol(route.get(), RTPROT_STATIC);
  rtnl_route_set_scope(route.get(), RT_SCOPE_LINK);
  rtnl_route_set_type(route.get(), RTN_UNICAST);
  if (int code = rtnl_route_set_dst(route.get(), dst.get()); code < 0) {
    return Fail("bad route destination " + destination + ": " + NlText(code));
  }
  rtnl_nexthop* hop = rtnl_route_nh_alloc();
  rtnl_route_nh_set_ifindex(hop, ifindex);
  rtnl_route_add_nexthop(route.get(), hop);  // owned by the route from here
  if (int code = rtnl_route_add(socket, route.get(), NLM_F_REPLACE); code < 0) {
    return Fail("cannot add route " + destination + ": " + NlText(code));
  }
  return {};
}

Expected<void> WriteSysctl(const std::string& path, const std::string& value) {
  std::ofstream file(path);
  file << value;
  file.flush();
  if (!file) return Fail("cannot write " + value + " to " + path + ": " + std::strerror(errno));
  return {};
}

// Runs `work` on a fresh thread that first enters the network namespace `ns_fd`: a namespace
// switch never touches the caller's thread (whose namespace every other socket relies on).
Expected<void> InNamespace(int ns_fd, const std::function<Expected<void>()>& work) {
  Expected<void> result = Fail("not run");
  std::thread([&] {
    if (::setns(ns_fd, CLONE_NEWNET) != 0) {
      result =
          Fail(std::string("cannot enter the job's network namespace: ") + std::strerror(errno));
      return;
    }
    result = work();
  }).join();
  return result;
}

Expected<tern::UniqueFd> NewNamespace() {
  Expected<tern::UniqueFd> result = Fail("not run");
  std::thread([&] {
    if (::unshare(CLONE_NEWNET) != 0) {
      result = Fail(std::string("cannot create a network namespace: ") + std::strerror(errno));
      return;
    }
    tern::UniqueFd fd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
      result = Fail(std::string("cannot open the new network namespace: ") + std::strerror(errno));
      return;
    }
    result = std::move(fd);
  }).join();
  return result;
}

}  // namespace

bool ParseCidr(const std::string& text, std::uint32_t* network, int* prefix) {
  const auto slash = text.find('/');
  if (slash == std::string::npos) return false;
  in_addr address{};
  if (::inet_pton(AF_INET, text.substr(0, slash).c_str(), &address) != 1) return false;
  const std::string bits = text.substr(slash + 1);
  if (bits.empty() || bits.size() > 2 ||
      bits.find_first_not_of("0123456789") != std::string::npos) {
    return false;
  }
  const int length = std::stoi(bits);
  if (length < 1 || length > 30) return false;
  const std::uint32_t mask = length == 32 ? ~0u : ~((1u << (32 - length)) - 1);
  *network = ntohl(address.s_addr) & mask;
  *prefix = length;
  return true;
}

Expected<std::string> JobAddress(const std::string& subnet, std::uint64_t serial) {
  std::uint32_t network = 0;
  int prefix = 0;
  if (!ParseCidr(subnet, &network, &prefix)) {
    return Fail("net.subnet '" + subnet + "' is not an IPv4 CIDR such as 10.78.3.0/24");
  }
  const std::uint64_t hosts = (std::uint64_t{1} << (32 - prefix)) - 2;
  const std::uint32_t host = static_cast<std::uint32_t>(1 + (serial == 0 ? 0 : serial - 1) % hosts);
  in_addr address{htonl(network + host)};
  char text[INET_ADDRSTRLEN];
  ::inet_ntop(AF_INET, &address, text, sizeof text);
  return std::string(text);
}

std::string JobVethName(const std::string& job_id) {
  std::uint32_t hash = 2166136261u;  // FNV-1a
  for (unsigned char c : job_id) hash = (hash ^ c) * 16777619u;
  char name[IFNAMSIZ];
  std::snprintf(name, sizeof name, "tj%08x", hash);
  return name;
}

Expected<void> PrepareNodeNetwork(const NetConfig& config) {
  std::uint32_t network = 0;
  int prefix = 0;
  if (!ParseCidr(config.pool, &network, &prefix)) {
    return Fail("net.pool '" + config.pool + "' is not an IPv4 CIDR such as 10.78.0.0/16");
  }
  if (auto ok = WriteSysctl("/proc/sys/net/ipv4/ip_forward", "1"); !ok) return ok;
  const std::string conf = "/proc/sys/net/ipv4/conf/" + config.uplink;
  if (auto ok = WriteSysctl(conf + "/proxy_arp", "1"); !ok) return ok;
  if (auto ok = WriteSysctl("/proc/sys/net/ipv4/neigh/" + config.uplink + "/proxy_delay", "0");
      !ok) {
    return ok;
  }
  // A job's reply may leave by another node than the one its peer's packet came through.
  (void)WriteSysctl(conf + "/rp_filter", "0");
  (void)WriteSysctl("/proc/sys/net/ipv4/conf/all/rp_filter", "0");
  auto socket = RouteSocket();
  if (!socket) return Unexpected<Error>{socket.error()};
  auto uplink = IfIndex(socket->get(), config.uplink);
  if (!uplink) return Unexpected<Error>{uplink.error()};
  return AddLinkRoute(socket->get(), *uplink, config.pool);
}

Expected<tern::UniqueFd> CreateJobNetwork(const std::string& job_id, const std::string& address,
                                          bool node_side_up) {
  in_addr parsed{};
  if (::inet_pton(AF_INET, address.c_str(), &parsed) != 1) {
    return Fail("'" + address + "' is not an IPv4 address");
  }
  auto ns = NewNamespace();
  if (!ns) return ns;
  auto socket = RouteSocket();
  if (!socket) return Unexpected<Error>{socket.error()};
  const std::string veth = JobVethName(job_id);
  // A veth left by an earlier copy of this job (a failed start, an aborted move) goes first.
  (void)RemoveJobLink(job_id);
  NlLink pair(rtnl_link_veth_alloc());
  if (!pair) return Fail("cannot allocate a veth");
  rtnl_link_set_name(pair.get(), veth.c_str());
  rtnl_link* peer = rtnl_link_veth_get_peer(pair.get());
  rtnl_link_set_name(peer, "eth0");
  rtnl_link_set_ns_fd(peer, ns->get());
  rtnl_link_put(peer);
  if (int code = rtnl_link_add(socket->get(), pair.get(), NLM_F_CREATE | NLM_F_EXCL); code < 0) {
    return Fail("cannot create veth " + veth + ": " + NlText(code));
  }
  auto undo = [&](Error error) -> Expected<tern::UniqueFd> {
    (void)RemoveJobLink(job_id);
    return Unexpected<Error>{std::move(error)};
  };
  const std::string conf = "/proc/sys/net/ipv4/conf/" + veth;
  if (auto ok = WriteSysctl(conf + "/proxy_arp", "1"); !ok) return undo(ok.error());
  if (auto ok = WriteSysctl("/proc/sys/net/ipv4/neigh/" + veth + "/proxy_delay", "0"); !ok) {
    return undo(ok.error());
  }
  if (node_side_up) {
    if (auto ok = SetJobLinkUp(job_id, address, true); !ok) return undo(ok.error());
  }
  auto inside = InNamespace(ns->get(), [&]() -> Expected<void> {
    auto job_socket = RouteSocket();
    if (!job_socket) return Unexpected<Error>{job_socket.error()};
    if (auto ok = LinkUp(job_socket->get(), "lo", true); !ok) return ok;
    if (auto ok = LinkUp(job_socket->get(), "eth0", true); !ok) return ok;
    auto eth0 = IfIndex(job_socket->get(), "eth0");
    if (!eth0) return Unexpected<Error>{eth0.error()};
    if (auto ok = AddAddress(job_socket->get(), *eth0, address + "/32"); !ok) return ok;
    return AddLinkRoute(job_socket->get(), *eth0, "0.0.0.0/0");
  });
  if (!inside) return undo(inside.error());
  return ns;
}

Expected<void> SetJobLinkUp(const std::string& job_id, const std::string& address, bool up) {
  auto socket = RouteSocket();
  if (!socket) return Unexpected<Error>{socket.error()};
  const std::string veth = JobVethName(job_id);
  if (auto ok = LinkUp(socket->get(), veth, up); !ok || !up) return ok;
  auto index = IfIndex(socket->get(), veth);
  if (!index) return Unexpected<Error>{index.error()};
  return AddLinkRoute(socket->get(), *index, address + "/32");
}

Expected<void> RemoveJobLink(const std::string& job_id) {
  auto socket = RouteSocket();
  if (!socket) return Unexpected<Error>{socket.error()};
  NlLink link(rtnl_link_alloc());
  const std::string veth = JobVethName(job_id);
  rtnl_link_set_name(link.get(), veth.c_str());
  const int code = rtnl_link_delete(socket->get(), link.get());
  if (code < 0 && code != -NLE_NODEV && code != -NLE_OBJ_NOTFOUND) {
    return Fail("cannot remove veth " + veth + ": " + NlText(code));
  }
  return {};
}

Expected<void> SendGratuitousArp(const std::string& uplink, const std::string& address) {
  in_addr ip{};
  if (::inet_pton(AF_INET, address.c_str(), &ip) != 1) {
    return Fail("'" + address + "' is not an IPv4 address");
  }
  auto socket = RouteSocket();
  if (!socket) return Unexpected<Error>{socket.error()};
  rtnl_link* raw = nullptr;
  if (int code = rtnl_link_get_kernel(socket->get(), 0, uplink.c_str(), &raw); code < 0) {
    return Fail("no interface " + uplink + ": " + NlText(code));
  }
  NlLink link(raw);
  nl_addr* mac = rtnl_link_get_addr(link.get());
  if (mac == nullptr || nl_addr_get_len(mac) != ETH_ALEN) {
    return Fail(uplink + " has no Ethernet address");
  }
  tern::UniqueFd packet(::socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(ETH_P_ARP)));
  if (!packet.valid()) {
    return Fail(std::string("cannot open a packet socket: ") + std::strerror(errno));
  }
  // An ARP request whose sender and target are both the moved address: neighbours that hold
  // the address update its hardware address to ours at once (RFC 5227's announcement).
  std::array<unsigned char, 28> arp{};
  arp[0] = 0, arp[1] = 1;        // Ethernet
  arp[2] = 0x08, arp[3] = 0x00;  // IPv4
  arp[4] = ETH_ALEN, arp[5] = 4;
  arp[6] = 0, arp[7] = 1;  // request
  std::memcpy(&arp[8], nl_addr_get_binary_addr(mac), ETH_ALEN);
  std::memcpy(&arp[14], &ip, 4);
  std::memcpy(&arp[24], &ip, 4);
  sockaddr_ll to{};
  to.sll_family = AF_PACKET;
  to.sll_protocol = htons(ETH_P_ARP);
  to.sll_ifindex = rtnl_link_get_ifindex(link.get());
  to.sll_halen = ETH_ALEN;
  std::memset(to.sll_addr, 0xff, ETH_ALEN);
  if (::sendto(packet.get(), arp.data(), arp.size(), 0, reinterpret_cast<sockaddr*>(&to),
               sizeof to) != static_cast<ssize_t>(arp.size())) {
    return Fail("cannot send a gratuitous ARP for " + address + " on " + uplink + ": " +
                std::strerror(errno));
  }
  return {};
}

}  // namespace tern::jobs
