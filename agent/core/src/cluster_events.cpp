#include "tern/agent/cluster_events.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "tern/agent/cluster.hpp"
#include "tern/agent/event_bus.hpp"
#include "tern/json_integer.hpp"
#include "tern/json_text.hpp"

namespace tern::agent {

using nlohmann::json;

namespace {

// Peer data: a field of the wrong type reads as absent rather than throwing.
std::uint64_t Seq(const json& object, const char* key = "seq") {
  return JsonIntegerOr<std::uint64_t>(object, key, 0);
}

}  // namespace

ClusterEventFeed::ClusterEventFeed(boost::asio::io_context& io, Cluster& cluster, EventBus& events)
    : io_(io), cluster_(cluster), events_(events), self_(cluster.self().name), timer_(io) {
  // This node's log is the bus's own ring: seed it, then follow it.
  for (auto& event : events_.Recent(0, "", kKeep)) {
    Add(self_, {Seq(event), JsonText(event, "type"), event.dump(), EventBus::OwnerInEvent(event)});
  }
  // The bus may outlive this feed (the agent tears down in reverse order of members).
  events_.Listen([this, alive = alive_](const json& event, const std::string& data) {
    if (!*alive) return;
    Add(self_, {Seq(event), JsonText(event, "type"), data, EventBus::OwnerInEvent(event)});
  });
}

ClusterEventFeed::~ClusterEventFeed() { Stop(); }

void ClusterEventFeed::Stop() {
  stopped_ = true;
  *alive_ = false;
  timer_.cancel();
  streams_.clear();
}

void ClusterEventFeed::Subscribe(std::shared_ptr<http::EventStream> stream,
                                 std::optional<EventCursor> from, std::optional<uid_t> viewer) {
  if (!stream || stopped_) return;
  Reader reader{std::move(stream), from.value_or(EventCursor{}), viewer};
  for (auto& [node, log] : nodes_) {
    if (log.held.empty()) continue;
    std::size_t first = 0;
    if (!from) {
      first = log.held.size() > kReplay ? log.held.size() - kReplay : 0;
    } else if (reader.cursor.Of(node) > log.have) {
      reader.cursor.seq[node] = 0;  // that agent restarted since the reader's last event
    }
    for (std::size_t i = first; i < log.held.size(); ++i) Send(reader, node, log.held[i]);
  }
  streams_.push_back(std::move(reader));
  if (!polling_) {
    polling_ = true;
    Poll();
  }
}

void ClusterEventFeed::Add(const std::string& node, Held event) {
  NodeLog& log = nodes_[node];
  if (event.seq <= log.have && !log.held.empty()) return;  // held already
  log.have = event.seq;
  log.held.push_back(std::move(event));
  if (log.held.size() > kKeep) log.held.pop_front();
  for (auto& reader : streams_) Send(reader, node, log.held.back());
  std::erase_if(streams_, [](const Reader& reader) { return !reader.stream->IsOpen(); });
}

void ClusterEventFeed::Send(Reader& reader, const std::string& node, const Held& event) {
  if (event.seq <= reader.cursor.Of(node)) return;
  reader.cursor.seq[node] = event.seq;
  // An event this reader may not see still moves its cursor: the next id it gets says so.
  if (!EventBus::Visible(event.owner, reader.viewer)) return;
  reader.stream->Send(event.type, event.data, FormatEventCursor(reader.cursor));
}

void ClusterEventFeed::SchedulePoll() {
  if (stopped_) return;
  timer_.expires_after(kPollInterval);
  timer_.async_wait([this, alive = alive_](const boost::system::error_code& error) {
    if (error || !*alive) return;
    Poll();
  });
}

void ClusterEventFeed::Poll() {
  std::erase_if(streams_, [](const Reader& reader) { return !reader.stream->IsOpen(); });
  if (streams_.empty()) {
    polling_ = false;  // the next reader starts it again
    return;
  }
  for (const auto& node : cluster_.Nodes()) {
    if (node.self || node.state != "alive") continue;
    NodeLog& log = nodes_[node.name];
    if (log.asking) continue;
    log.asking = true;
    ApiCall call;
    call.method = "GET";
    call.target = "/v1/events/recent?local=1&since=" + std::to_string(log.have);
    call.caller.via = "events feed";
    cluster_.Call(
        node.id, call,
        [this, alive = alive_, name = node.name](ApiResult result) {
          if (!*alive) return;
          OnAnswer(name, result.status, result.body);
        },
        std::chrono::seconds(3));
  }
  SchedulePoll();
}

void ClusterEventFeed::OnAnswer(const std::string& node, unsigned status, const std::string& body) {
  NodeLog& log = nodes_[node];
  log.asking = false;
  if (status != 200) return;  // unreachable now: asked again at the next poll
  const json answer = json::parse(body, nullptr, false);
  if (!answer.is_object() || !answer.contains("events") || !answer["events"].is_array()) {
    spdlog::debug("events feed: node {} answered without events", node);
    return;
  }
  const std::uint64_t last = Seq(answer, "last_seq");
  if (answer.contains("last_seq") && last < log.have) {
    // That agent restarted and numbers its events from 1 again: start its log over, and let
    // every reader take its events from the first.
    spdlog::info("events feed: node {} restarted (seq {} < {})", node, last, log.have);
    log.have = 0;
    log.held.clear();
    for (auto& reader : streams_) reader.cursor.seq[node] = 0;
    return;  // the next poll asks from 0
  }
  // A reader that saw more of that node than it has now saw an earlier life of its agent.
  for (auto& reader : streams_) {
    if (answer.contains("last_seq") && reader.cursor.Of(node) > last) reader.cursor.seq[node] = 0;
  }
  for (const auto& event : answer["events"]) {
    if (!event.is_object() || JsonText(event, "node") != node) continue;
    const std::uint64_t seq = Seq(event);
    if (seq <= log.have) continue;
    Add(node, {seq, JsonText(event, "type"), event.dump(), EventBus::OwnerInEvent(event)});
  }
}

}  // namespace tern::agent
