#include "tern/agent/event_bus.hpp"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <limits>

namespace tern::agent {
namespace {

// A new stream is replayed this many events (older ones are in Recent()).
constexpr std::size_t kReplay = 256;

std::string Now() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  const auto millis =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[40];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &utc);
  char full[48];
  std::snprintf(full, sizeof full, "%s.%03dZ", text, static_cast<int>(millis));
  return full;
}

}  // namespace

void EventBus::NoteOwner(const std::string& job, uid_t uid) {
  if (job.empty()) return;
  auto [entry, added] = owners_.insert_or_assign(job, uid);
  if (!added) return;
  owner_order_.push_back(job);
  if (owner_order_.size() > kOwners) {
    owners_.erase(owner_order_.front());
    owner_order_.pop_front();
  }
}

std::optional<uid_t> EventBus::OwnerOfEvent(const std::string& type, const nlohmann::json& fields) {
  // Root only, for a job event whose owner cannot be told: never shown to the wrong user.
  constexpr uid_t kRootOnly = 0;
  std::string job;
  if (type == "job") {
    job = fields.value("id", "");
    const auto uid = fields.find("uid");
    if (uid != fields.end() && uid->is_number_integer() && uid->get<std::int64_t>() >= 0) {
      const auto owner = static_cast<uid_t>(uid->get<std::int64_t>());
      NoteOwner(job, owner);
      return owner;
    }
    return kRootOnly;
  }
  const auto named = fields.find("job");
  if (named == fields.end()) return std::nullopt;
  if (!named->is_string()) return kRootOnly;
  job = named->get<std::string>();
  if (auto known = owners_.find(job); known != owners_.end()) return known->second;
  if (owner_of_) {
    if (auto owner = owner_of_(job)) return owner;
  }
  return kRootOnly;
}

std::optional<uid_t> EventBus::OwnerInEvent(const nlohmann::json& event) {
  if (!event.is_object()) return 0;
  const auto owner = event.find("owner_uid");
  if (owner != event.end() && owner->is_number_integer() && owner->get<std::int64_t>() >= 0 &&
      owner->get<std::int64_t>() <= std::numeric_limits<uid_t>::max()) {
    return static_cast<uid_t>(owner->get<std::int64_t>());
  }
  if (event.value("type", "") == "job" || event.contains("job")) return 0;
  return std::nullopt;
}

bool EventBus::Visible(const std::optional<uid_t>& owner, const Viewer& viewer) {
  return !viewer || !owner || *owner == *viewer;
}

void EventBus::Publish(const std::string& type, nlohmann::json fields) {
  if (!fields.is_object()) fields = nlohmann::json::object();
  const std::optional<uid_t> owner = OwnerOfEvent(type, fields);
  fields["type"] = type;
  fields["seq"] = ++seq_;
  fields["time"] = Now();
  fields["node"] = node_;
  // Readers elsewhere (the cluster-wide feed on other agents) filter by it as this bus does.
  if (owner) fields["owner_uid"] = *owner;
  std::string data = fields.dump();
  for (auto& listener : listeners_) listener(fields, data);
  for (auto& subscriber : streams_) {
    if (Visible(owner, subscriber.viewer)) subscriber.stream->Send(type, data);
  }
  std::erase_if(streams_, [](const auto& subscriber) { return !subscriber.stream->IsOpen(); });
  recent_.push_back({seq_, type, std::move(data), owner});
  if (recent_.size() > kRecent) recent_.pop_front();
}

void EventBus::Subscribe(std::shared_ptr<http::EventStream> stream, std::int64_t since,
                         Viewer viewer) {
  if (!stream) return;
  const std::size_t skip = recent_.size() > kReplay ? recent_.size() - kReplay : 0;
  for (std::size_t i = since < 0 ? skip : 0; i < recent_.size(); ++i) {
    const Kept& kept = recent_[i];
    if (since >= 0 && kept.seq <= static_cast<std::uint64_t>(since)) continue;
    if (!Visible(kept.owner, viewer)) continue;
    stream->Send(kept.type, kept.data);
  }
  streams_.push_back({std::move(stream), viewer});
}

std::vector<nlohmann::json> EventBus::Recent(std::uint64_t since, const std::string& type,
                                             std::size_t limit, Viewer viewer) const {
  std::vector<nlohmann::json> out;
  for (auto kept = recent_.rbegin(); kept != recent_.rend() && out.size() < limit; ++kept) {
    if (kept->seq <= since) break;
    if (!type.empty() && kept->type != type) continue;
    if (!Visible(kept->owner, viewer)) continue;
    out.push_back(nlohmann::json::parse(kept->data, nullptr, false));
  }
  std::reverse(out.begin(), out.end());
  return out;
}

}  // namespace tern::agent
