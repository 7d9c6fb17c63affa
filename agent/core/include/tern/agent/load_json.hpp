// JSON forms of the balancer's load vectors and member lists, as carried in Heartbeat frames
// (docs/wire.md). The balancer itself knows no JSON: it uses the standard library only.
//
// Thread-safety: pure functions.
#pragma once

#include <nlohmann/json.hpp>
#include <tern/balancer/load_vector.hpp>
#include <tern/balancer/membership.hpp>
#include <tern/expected.hpp>

namespace tern::agent {

nlohmann::json LoadToJson(const balancer::LoadVector& load);
Expected<balancer::LoadVector> LoadFromJson(const nlohmann::json& json);
Expected<balancer::MemberInfo> MemberFromJson(const nlohmann::json& json);

}  // namespace tern::agent
