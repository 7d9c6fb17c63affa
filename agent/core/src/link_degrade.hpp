// LinkDegrade: the fault campaign's bad cable, the counterpart of LinkCut (link_cut.hpp) for a
// link that still works, badly. Two faults, either or both while in force:
//  - loss: a random `loss_pct` percent of the packets that leave or enter this network namespace
//    (other than on loopback) are dropped, both directions, as a noisy cable drops them. An
//    nftables table of its own ("inet tern_fault_loss", `numgen random`), so routes, addresses
//    and other tables stay untouched.
//  - rate: the interface holding the node's cluster address sends at most `rate_kbit`, through
//    a token bucket (tbf, through libnl-route) whose queue holds up to 200 ms of traffic: a slow
//    link whose queue delays what it does not drop.
// netem, the usual tool for both (and for a fixed delay), is not in these machines' kernels;
// tbf and nftables are.
//
// Only the fault hook uses it ([testing] faults); applying twice replaces, lifting without
// applying is harmless.
//
// Thread-safety: the functions are thread-safe (each makes its own nftables or netlink context).
#pragma once

#include <string>
#include <tern/expected.hpp>

namespace tern::agent {

// loss_pct in 1..100.
Expected<void> ApplyLinkLoss(int loss_pct);
Expected<void> LiftLinkLoss();

// `address`: the node's cluster address ("10.0.0.2" or "10.0.0.2:7071"); rate_kbit >= 8.
Expected<void> ApplyLinkRate(const std::string& address, int rate_kbit);
Expected<void> LiftLinkRate(const std::string& address);

}  // namespace tern::agent
