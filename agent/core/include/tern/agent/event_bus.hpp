// EventBus: this agent's events — job state changes, migrations, membership changes — as a
// stream for `GET /v1/events` (server-sent events, DESIGN.md "Observe").
//
// Contract: Publish() stamps an event with a sequence number and time, keeps the last 256 for
// subscribers that arrive later (replayed on Subscribe), and sends it to every open stream;
// streams whose client has gone are dropped. Events carry `type`, `seq`, `time`, `node` and the
// event's own fields.
//
// Thread-safety: not thread-safe; the agent's io_context thread publishes and subscribes.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <tern/http/responder.hpp>
#include <vector>

namespace tern::agent {

class EventBus {
 public:
  explicit EventBus(std::string node) : node_(std::move(node)) {}

  void Publish(const std::string& type, nlohmann::json fields);
  void Subscribe(std::shared_ptr<http::EventStream> stream);
  std::size_t subscribers() const { return streams_.size(); }

 private:
  std::string node_;
  std::uint64_t seq_ = 0;
  std::deque<std::pair<std::string, std::string>> recent_;  // (type, data)
  std::vector<std::shared_ptr<http::EventStream>> streams_;
};

}  // namespace tern::agent
