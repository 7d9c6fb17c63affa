// EventBus: this agent's events — job state changes, migrations, membership changes — as a
// stream for `GET /v1/events` (server-sent events, DESIGN.md "Observe").
//
// Contract: Publish() stamps an event with a sequence number and time, keeps the last 1000
// (kRecent) for Recent() and for subscribers that arrive later (Subscribe replays the last 256,
// or those after `since`), and sends it to every open stream; streams whose client has gone
// are dropped. Events carry `type`, `seq`, `time`, `node` and the event's own fields.
// Listeners (the cluster-wide feed, the migration history) see every event as it is published,
// in seq order.
//
// Thread-safety: not thread-safe; the agent's io_context thread publishes and subscribes.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
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
  // Replays the kept events with seq > since (since < 0: the last 256), then streams new ones.
  void Subscribe(std::shared_ptr<http::EventStream> stream, std::int64_t since = -1);
  // The kept events with seq > since and (if `type` is not empty) of that type, oldest first,
  // at most `limit` (the newest ones).
  std::vector<nlohmann::json> Recent(std::uint64_t since, const std::string& type,
                                     std::size_t limit) const;
  static constexpr std::size_t kRecent = 1000;
  std::size_t subscribers() const { return streams_.size(); }
  // The seq of the newest event (0 before the first): a reader holding a larger one knows this
  // agent restarted and its seqs began again.
  std::uint64_t last_seq() const { return seq_; }
  using Listener = std::function<void(const nlohmann::json& event, const std::string& data)>;
  void Listen(Listener listener) { listeners_.push_back(std::move(listener)); }

 private:
  std::string node_;
  std::uint64_t seq_ = 0;
  struct Kept {
    std::uint64_t seq = 0;
    std::string type;
    std::string data;  // the event as JSON text
  };
  std::deque<Kept> recent_;
  std::vector<std::shared_ptr<http::EventStream>> streams_;
  std::vector<Listener> listeners_;
};

}  // namespace tern::agent
