// LinkCut: the fault campaign's pulled cable. While it is in force, nothing leaves or enters
// this network namespace except on loopback (the agent's links, the jobs' connections, CRIU's
// page streams alike), as if the node's cable were out; lifting it puts everything back as it
// was. It is an nftables table of its own ("inet tern_fault_cut", through libnftables), so
// that routes, addresses and other tables stay untouched; netem, the usual tool, is not in
// every kernel (not in these machines').
//
// Only the fault hook uses it ([testing] faults); Apply twice is harmless, Lift without Apply
// too.
//
// Thread-safety: the functions are thread-safe (each makes its own nftables context).
#pragma once

#include <tern/expected.hpp>

namespace tern::agent {

Expected<void> ApplyLinkCut();
Expected<void> LiftLinkCut();

}  // namespace tern::agent
