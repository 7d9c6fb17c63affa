// FollowEvents: reads the agent's cluster-wide event stream (GET /v1/events, docs/api.md) and
// hands each event to `on_event`, reconnecting with the last id seen (?cursor=) when the agent
// goes away, so that no event a node still keeps is lost or repeated across an agent restart.
//
// Contract: blocks until `on_event` returns false (then returns {}), or, when `reconnect` is
// false, until the stream ends (an Error saying why). An agent that cannot be reached at the
// first attempt is an Error at once. While reconnecting it calls `on_gap`
// with the reason once per attempt (every second).
//
// Thread-safety: one call per thread; callbacks run on the caller's thread.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <tern/expected.hpp>

#include "tern/cli/agent_client.hpp"

namespace tern::cli {

struct SseEvent {
  std::string id;    // the stream's cursor after this event
  std::string type;  // job, migration, node, balancer
  nlohmann::json data;
};

Expected<void> FollowEvents(const AgentClient& client, bool reconnect,
                            const std::function<bool(const SseEvent&)>& on_event,
                            const std::function<void(const std::string& why)>& on_gap = nullptr);

}  // namespace tern::cli
