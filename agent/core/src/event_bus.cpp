#include "tern/agent/event_bus.hpp"

#include <algorithm>
#include <chrono>
#include <ctime>

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

void EventBus::Publish(const std::string& type, nlohmann::json fields) {
  if (!fields.is_object()) fields = nlohmann::json::object();
  fields["type"] = type;
  fields["seq"] = ++seq_;
  fields["time"] = Now();
  fields["node"] = node_;
  std::string data = fields.dump();
  for (auto& listener : listeners_) listener(fields, data);
  for (auto& stream : streams_) stream->Send(type, data);
  std::erase_if(streams_, [](const auto& stream) { return !stream->IsOpen(); });
  recent_.push_back({seq_, type, std::move(data)});
  if (recent_.size() > kRecent) recent_.pop_front();
}

void EventBus::Subscribe(std::shared_ptr<http::EventStream> stream, std::int64_t since) {
  if (!stream) return;
  const std::size_t skip = recent_.size() > kReplay ? recent_.size() - kReplay : 0;
  for (std::size_t i = since < 0 ? skip : 0; i < recent_.size(); ++i) {
    const Kept& kept = recent_[i];
    if (since >= 0 && kept.seq <= static_cast<std::uint64_t>(since)) continue;
    stream->Send(kept.type, kept.data);
  }
  streams_.push_back(std::move(stream));
}

std::vector<nlohmann::json> EventBus::Recent(std::uint64_t since, const std::string& type,
                                             std::size_t limit) const {
  std::vector<nlohmann::json> out;
  for (auto kept = recent_.rbegin(); kept != recent_.rend() && out.size() < limit; ++kept) {
    if (kept->seq <= since) break;
    if (!type.empty() && kept->type != type) continue;
    out.push_back(nlohmann::json::parse(kept->data, nullptr, false));
  }
  std::reverse(out.begin(), out.end());
  return out;
}

}  // namespace tern::agent
