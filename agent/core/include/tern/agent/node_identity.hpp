// NodeIdentity: who this agent is in the cluster — its name (from the config) and a random
// 64-bit id created once and kept in `<state_dir>/node_id`, so that a restarted agent is the
// same node to its peers and a re-installed one (fresh state) is a new node.
//
// Thread-safety: plain data; LoadOrCreateNodeIdentity touches only its own file.
#pragma once

#include <cstdint>
#include <string>
#include <tern/expected.hpp>

namespace tern::agent {

struct NodeIdentity {
  std::string name;
  std::uint64_t id = 0;
};

std::string NodeIdHex(std::uint64_t id);

Expected<NodeIdentity> LoadOrCreateNodeIdentity(const std::string& state_dir,
                                                const std::string& name);

}  // namespace tern::agent
