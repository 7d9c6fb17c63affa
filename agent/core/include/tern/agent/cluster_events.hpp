// ClusterEventFeed: GET /v1/events — the events of every node of the cluster in one
// server-sent-events stream, from any agent (docs/api.md).
//
// Contract:
//  - This agent's events come from its EventBus as they are published. Other nodes' events are
//    pulled over the peer links: while at least one stream is open, every kPollInterval each
//    alive peer is asked `GET /v1/events/recent?local=1&since=<the last seq held of it>`
//    (one call in flight per peer). Up to kKeep events per node are held for new streams.
//  - Each node's events reach every stream in that node's seq order, with no gaps that the
//    node still keeps (it keeps 1000); nodes are interleaved as their events arrive.
//  - Each event's SSE id is the stream's EventCursor after it ("node1:42,node2:7"); a stream
//    opened with a cursor gets the held events after it, node by node, then live ones. A
//    cursor seq above a node's newest means that agent restarted: its events are sent from its
//    first held one. Without a cursor, a stream starts with the last kReplay events per node.
//
// Thread-safety: not thread-safe; runs on the agent's io_context thread.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <tern/http/responder.hpp>
#include <vector>

#include "tern/agent/event_cursor.hpp"

namespace tern::agent {

class Cluster;
class EventBus;

class ClusterEventFeed {
 public:
  ClusterEventFeed(boost::asio::io_context& io, Cluster& cluster, EventBus& events);
  ~ClusterEventFeed();
  ClusterEventFeed(const ClusterEventFeed&) = delete;
  ClusterEventFeed& operator=(const ClusterEventFeed&) = delete;

  // `from`: the reader's cursor (Last-Event-ID), or none for a fresh reader.
  // `viewer`: as for EventBus::Subscribe (a user sees node events and their own jobs' only).
  void Subscribe(std::shared_ptr<http::EventStream> stream, std::optional<EventCursor> from,
                 std::optional<uid_t> viewer = std::nullopt);
  void Stop();
  std::size_t streams() const { return streams_.size(); }

  static constexpr std::chrono::milliseconds kPollInterval{500};
  static constexpr std::size_t kKeep = 1000;
  static constexpr std::size_t kReplay = 100;

 private:
  struct Held {
    std::uint64_t seq = 0;
    std::string type;
    std::string data;
    std::optional<uid_t> owner;  // nullopt: a node-level event (EventBus::OwnerInEvent)
  };
  struct NodeLog {
    std::uint64_t have = 0;  // seq of the newest event held
    std::deque<Held> held;
    bool asking = false;
  };
  struct Reader {
    std::shared_ptr<http::EventStream> stream;
    EventCursor cursor;
    std::optional<uid_t> viewer;  // EventBus::Viewer: nullopt sees everything
  };

  void Add(const std::string& node, Held event);
  void Send(Reader& reader, const std::string& node, const Held& event);
  void SchedulePoll();
  void Poll();
  void OnAnswer(const std::string& node, unsigned status, const std::string& body);

  boost::asio::io_context& io_;
  Cluster& cluster_;
  EventBus& events_;
  std::string self_;
  std::map<std::string, NodeLog> nodes_;
  std::vector<Reader> streams_;
  boost::asio::steady_timer timer_;
  bool polling_ = false;
  bool stopped_ = false;
  // Answers that arrive after this object is gone must not touch it.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace tern::agent
