// JSON forms of the balancer's load vectors and gossip windows, as carried in Gossip frames
// (docs/wire.md). The balancer itself knows no JSON: it uses the standard library only.
//
// Thread-safety: pure functions.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <tern/balancer/gossip.hpp>
#include <tern/balancer/load_vector.hpp>
#include <tern/expected.hpp>

namespace tern::agent {

nlohmann::json LoadToJson(const balancer::LoadVector& load);
Expected<balancer::LoadVector> LoadFromJson(const nlohmann::json& json);

// A Gossip frame's body: {"entries":[{"load":{...},"age_ms":N,"dead":false}...]}.
std::string GossipToJson(const std::vector<balancer::GossipEntry>& entries);
inline constexpr std::size_t kMaxGossipBytes = 1 << 20;
struct ParsedGossip {
  std::vector<balancer::GossipEntry> entries;
  std::vector<std::string> rejected;  // one line per malformed entry (dropped)
};
// Fails for a body over kMaxGossipBytes, not JSON, or with more than Gossip::kMaxEntries
// entries; a malformed entry is dropped and named in `rejected`.
Expected<ParsedGossip> GossipFromJson(std::string_view payload);

}  // namespace tern::agent
