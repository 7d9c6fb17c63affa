// EventBus: this agent's events — job state changes, migrations, membership changes — as a
// stream for `GET /v1/events` (server-sent events, docs/design.md "Data flows", 6).
//
// Contract: Publish() stamps an event with a sequence number and time, keeps the last 1000
// (kRecent) for Recent() and for subscribers that arrive later (Subscribe replays the last 256,
// or those after `since`), and sends it to every open stream; streams whose client has gone
// are dropped. Events carry `type`, `seq`, `time`, `node`, `owner_uid` (events about a job) and
// the event's own fields.
// Listeners (the cluster-wide feed, the migration history) see every event as it is published,
// in seq order.
//
// Who sees what: an event about a job (a `job` event, or one with a `job` field) belongs to the
// job's uid and is shown only to that user and to viewers who see everything (root, API
// tokens: `viewer` nullopt). The owner comes from the job event's `uid`, else from the owners
// this bus has learned (NoteOwner, job events), else from the `owner_of` hook; a job whose
// owner cannot be told is shown to root only. Node-level events (no job) are shown to all.
//
// Thread-safety: not thread-safe; the agent's io_context thread publishes and subscribes.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <tern/http/responder.hpp>
#include <vector>

namespace tern::agent {

class EventBus {
 public:
  // nullopt: sees every event; a uid: node-level events and that user's jobs' events.
  using Viewer = std::optional<uid_t>;
  using OwnerOf = std::function<std::optional<uid_t>(const std::string& job)>;

  explicit EventBus(std::string node, OwnerOf owner_of = nullptr)
      : node_(std::move(node)), owner_of_(std::move(owner_of)) {}

  void Publish(const std::string& type, nlohmann::json fields);
  // Tells the bus whose job `job` is, for later events that name it (e.g. a placement).
  void NoteOwner(const std::string& job, uid_t uid);
  // Replays the kept events with seq > since (since < 0: the last 256), then streams new ones;
  // only those `viewer` may see.
  void Subscribe(std::shared_ptr<http::EventStream> stream, std::int64_t since = -1,
                 Viewer viewer = std::nullopt);
  // The kept events with seq > since and (if `type` is not empty) of that type that `viewer`
  // may see, oldest first, at most `limit` (the newest ones).
  std::vector<nlohmann::json> Recent(std::uint64_t since, const std::string& type,
                                     std::size_t limit, Viewer viewer = std::nullopt) const;
  static constexpr std::size_t kRecent = 1000;
  // Whether `viewer` may see an event owned by `owner` (nullopt: a node-level event).
  static bool Visible(const std::optional<uid_t>& owner, const Viewer& viewer);
  // The owner an event names in its `owner_uid` (written by Publish); an event about a job
  // without one (from an older agent) is root's.
  static std::optional<uid_t> OwnerInEvent(const nlohmann::json& event);
  std::size_t subscribers() const { return streams_.size(); }
  // The seq of the newest event (0 before the first): a reader holding a larger one knows this
  // agent restarted and its seqs began again.
  std::uint64_t last_seq() const { return seq_; }
  using Listener = std::function<void(const nlohmann::json& event, const std::string& data)>;
  void Listen(Listener listener) { listeners_.push_back(std::move(listener)); }

 private:
  struct Kept {
    std::uint64_t seq = 0;
    std::string type;
    std::string data;            // the event as JSON text
    std::optional<uid_t> owner;  // nullopt: a node-level event
  };
  struct Subscriber {
    std::shared_ptr<http::EventStream> stream;
    Viewer viewer;
  };
  std::optional<uid_t> OwnerOfEvent(const std::string& type, const nlohmann::json& fields);

  std::string node_;
  OwnerOf owner_of_;
  std::uint64_t seq_ = 0;
  std::deque<Kept> recent_;
  std::vector<Subscriber> streams_;
  // Owners learned from job events, oldest first out once kOwners are known.
  static constexpr std::size_t kOwners = 8192;
  std::map<std::string, uid_t> owners_;
  std::deque<std::string> owner_order_;
  std::vector<Listener> listeners_;
};

}  // namespace tern::agent
