// Performing a fault the hook fired (fault_hook.hpp): first the hit is appended to
// <state_dir>/fault-hits.log and synced (bench/faults reads which phase it hit there, and a
// killed agent keeps no memory), then the action: SIGKILL to the agent itself, or a link cut
// (link_cut.hpp) or degrade (link_degrade.hpp; its rate cap is on the interface that holds
// `link_address`, the node's cluster address) lifted after the plan's time on `io`.
//
// Thread-safety: call from the io thread that runs `io`.
#pragma once

#include <boost/asio/io_context.hpp>
#include <string>

#include "fault_hook.hpp"

namespace tern::agent {

void PerformFault(const FaultHit& hit, const std::string& state_dir,
                  const std::string& link_address, boost::asio::io_context& io);

}  // namespace tern::agent
