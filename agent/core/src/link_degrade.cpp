#include "link_degrade.hpp"

#include <arpa/inet.h>
#include <linux/pkt_sched.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/qdisc.h>
#include <netlink/route/qdisc/tbf.h>
#include <netlink/route/tc.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "nft_batch.hpp"

namespace tern::agent {
namespace {

constexpr int kQueueLatencyUs = 200'000;

struct NlSocketDeleter {
  void operator()(nl_sock* socket) const { nl_socket_free(socket); }
};
struct NlCacheDeleter {
  void operator()(nl_cache* cache) const { nl_cache_free(cache); }
};
struct QdiscDeleter {
  void operator()(rtnl_qdisc* qdisc) const { rtnl_qdisc_put(qdisc); }
};
using NlSocket = std::unique_ptr<nl_sock, NlSocketDeleter>;

Expected<NlSocket> RouteSocket() {
  NlSocket socket(nl_socket_alloc());
  if (!socket) return Fail("cannot allocate a netlink socket");
  if (int err = nl_connect(socket.get(), NETLINK_ROUTE); err < 0) {
    return Fail(std::string("netlink: ") + nl_geterror(err));
  }
  return socket;
}

// The interface that holds `address` (IPv4, with or without ":port").
Expected<int> InterfaceOf(nl_sock* socket, const std::string& address) {
  const std::string host = address.substr(
      0, address.rfind(':') == std::string::npos ? address.size() : address.rfind(':'));
  in_addr wanted{};
  if (::inet_pton(AF_INET, host.c_str(), &wanted) != 1) {
    return Fail("\"" + host + "\" is not an IPv4 address");
  }
  nl_cache* raw = nullptr;
  if (int err = rtnl_addr_alloc_cache(socket, &raw); err < 0) {
    return Fail(std::string("netlink addresses: ") + nl_geterror(err));
  }
  std::unique_ptr<nl_cache, NlCacheDeleter> cache(raw);
  for (nl_object* object = nl_cache_get_first(cache.get()); object != nullptr;
       object = nl_cache_get_next(object)) {
    auto* addr = reinterpret_cast<rtnl_addr*>(object);
    nl_addr* local = rtnl_addr_get_local(addr);
    if (rtnl_addr_get_family(addr) != AF_INET || local == nullptr ||
        nl_addr_get_len(local) != sizeof(in_addr)) {
      continue;
    }
    if (std::memcmp(nl_addr_get_binary_addr(local), &wanted, sizeof(in_addr)) == 0) {
      return rtnl_addr_get_ifindex(addr);
    }
  }
  return Fail("no interface holds " + host);
}

Expected<std::unique_ptr<rtnl_qdisc, QdiscDeleter>> RootQdisc(int ifindex) {
  std::unique_ptr<rtnl_qdisc, QdiscDeleter> qdisc(rtnl_qdisc_alloc());
  if (!qdisc) return Fail("cannot allocate a qdisc");
  rtnl_tc_set_ifindex(TC_CAST(qdisc.get()), ifindex);
  rtnl_tc_set_parent(TC_CAST(qdisc.get()), TC_H_ROOT);
  return qdisc;
}

}  // namespace

Expected<void> ApplyLinkLoss(int loss_pct) {
  if (loss_pct < 1 || loss_pct > 100) return Fail("loss must be 1 to 100 percent");
  const std::string drop = "numgen random mod 100 < " + std::to_string(loss_pct) + " drop";
  return RunNftBatch(
      "add table inet tern_fault_loss\n"
      "delete table inet tern_fault_loss\n"
      "table inet tern_fault_loss {\n"
      "  chain in { type filter hook input priority -300; iifname != \"lo\" " +
      drop +
      "; }\n"
      "  chain out { type filter hook output priority -300; oifname != \"lo\" " +
      drop +
      "; }\n"
      "  chain through { type filter hook forward priority -300; " +
      drop +
      "; }\n"
      "}\n");
}

// A route socket and the root qdisc of the interface holding `address`: what both setting and
// lifting a rate start from.
struct RootQdiscOf {
  NlSocket socket;
  std::unique_ptr<rtnl_qdisc, QdiscDeleter> qdisc;
};

Expected<RootQdiscOf> RootQdiscHolding(const std::string& address) {
  auto socket = RouteSocket();
  if (!socket) return Unexpected<Error>{socket.error()};
  auto ifindex = InterfaceOf(socket->get(), address);
  if (!ifindex) return Unexpected<Error>{ifindex.error()};
  auto qdisc = RootQdisc(*ifindex);
  if (!qdisc) return Unexpected<Error>{qdisc.error()};
  return RootQdiscOf{std::move(*socket), std::move(*qdisc)};
}

Expected<void> LiftLinkLoss() {
  return RunNftBatch("add table inet tern_fault_loss\ndelete table inet tern_fault_loss\n");
}

Expected<void> ApplyLinkRate(const std::string& address, int rate_kbit) {
  if (rate_kbit < 8) return Fail("a rate needs at least 8 kbit/s");
  auto root = RootQdiscHolding(address);
  if (!root) return Unexpected<Error>{root.error()};
  auto& [socket, qdisc] = *root;
  if (int err = rtnl_tc_set_kind(TC_CAST(qdisc.get()), "tbf"); err < 0) {
    return Fail(std::string("tbf: ") + nl_geterror(err));
  }
  const int bytes_per_second = rate_kbit * 1000 / 8;
  // A bucket of 10 ms of traffic, at least a few full frames, so that the rate holds but a
  // frame always fits.
  rtnl_qdisc_tbf_set_rate(qdisc.get(), bytes_per_second, std::max(bytes_per_second / 100, 8192), 0);
  if (int err = rtnl_qdisc_tbf_set_limit_by_latency(qdisc.get(), kQueueLatencyUs); err < 0) {
    return Fail(std::string("tbf limit: ") + nl_geterror(err));
  }
  if (int err = rtnl_qdisc_add(socket.get(), qdisc.get(), NLM_F_CREATE | NLM_F_REPLACE); err < 0) {
    return Fail(std::string("cannot set the rate: ") + nl_geterror(err));
  }
  return {};
}

Expected<void> LiftLinkRate(const std::string& address) {
  auto root = RootQdiscHolding(address);
  if (!root) return Unexpected<Error>{root.error()};
  auto& [socket, qdisc] = *root;
  // Deleting the root qdisc puts the interface's default back; none there is not an error.
  if (int err = rtnl_qdisc_delete(socket.get(), qdisc.get());
      err < 0 && err != -NLE_OBJ_NOTFOUND && err != -NLE_INVAL) {
    return Fail(std::string("cannot lift the rate: ") + nl_geterror(err));
  }
  return {};
}

}  // namespace tern::agent
