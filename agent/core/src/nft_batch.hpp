// RunNftBatch: runs one nftables command batch (nft's own syntax) as a single transaction,
// through libnftables; the fault campaign's link faults (link_cut.hpp, link_degrade.hpp) are
// tables of their own made and deleted this way.
//
// Thread-safety: thread-safe (each call makes its own nftables context).
#pragma once

#include <string>
#include <tern/expected.hpp>

namespace tern::agent {

Expected<void> RunNftBatch(const std::string& commands);

}  // namespace tern::agent
