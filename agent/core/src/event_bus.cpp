#include "tern/agent/event_bus.hpp"

#include <algorithm>
#include <chrono>
#include <ctime>

namespace tern::agent {
namespace {

constexpr std::size_t kRecent = 256;

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
  for (auto& stream : streams_) stream->Send(type, data);
  std::erase_if(streams_, [](const auto& stream) { return !stream->IsOpen(); });
  recent_.emplace_back(type, std::move(data));
  if (recent_.size() > kRecent) recent_.pop_front();
}

void EventBus::Subscribe(std::shared_ptr<http::EventStream> stream) {
  if (!stream) return;
  for (const auto& [type, data] : recent_) stream->Send(type, data);
  streams_.push_back(std::move(stream));
}

}  // namespace tern::agent
