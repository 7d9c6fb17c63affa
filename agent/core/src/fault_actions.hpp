// Performing a fault the hook fired (fault_hook.hpp): first the hit is appended to
// <state_dir>/fault-hits.log and synced (bench/faults reads which phase it hit there, and a
// killed agent keeps no memory), then the action: SIGKILL to the agent itself, or a link cut
// (link_cut.hpp) or degrade (link_degrade.hpp; its rate cap is on the interface that holds
// `link_address`, the node's cluster address) lifted after the plan's time on `io`. A lose
// fault's messages are dropped by the hook's owner (FaultHook::Loses); here it is only recorded.
//
// Thread-safety: call from the io thread that runs `io`.
#pragma once

#include <boost/asio/io_context.hpp>
#include <string>
#include <vector>

#include "fault_hook.hpp"

namespace tern::agent {

// The armed faults kept across an agent's restarts, in <state_dir>/faults-armed.json (written
// whole through a temporary file and a rename; read without following links, at most 64 KiB).
// Loading a missing file gives none; a bad one is logged and gives none.
void SaveArmedFaults(const std::vector<FaultPlan>& armed, const std::string& state_dir);
std::vector<FaultPlan> LoadArmedFaults(const std::string& state_dir);

// A predecessor killed by a fault may have left a cut or a degraded link in force (its timer died
// with it): lifts them all. Logs what it could not lift.
void LiftLeftoverLinkFaults(const std::string& link_address);

void PerformFault(const FaultHit& hit, const std::string& state_dir,
                  const std::string& link_address, boost::asio::io_context& io);

}  // namespace tern::agent
