#include "tern/cli/event_follow.hpp"

#include <chrono>
#include <thread>

#include "tern/cli/commands.hpp"

namespace tern::cli {

Expected<void> FollowEvents(const AgentClient& client, bool reconnect,
                            const std::function<bool(const SseEvent&)>& on_event,
                            const std::function<void(const std::string& why)>& on_gap) {
  std::string cursor;
  bool stop = false;
  bool first = true;
  while (true) {
    SseEvent current;
    const std::string target =
        "/v1/events" + (cursor.empty() ? std::string() : "?cursor=" + EncodePathSegment(cursor));
    auto streamed = client.Stream(target, [&](const std::string& raw) {
      const std::string line =
          !raw.empty() && raw.back() == '\r' ? raw.substr(0, raw.size() - 1) : raw;
      if (line.empty()) {  // the end of one event
        if (!current.data.is_null()) {
          if (!current.id.empty()) cursor = current.id;
          if (!on_event(current)) {
            stop = true;
            return false;
          }
        }
        current = SseEvent{};
      } else if (line.rfind("id: ", 0) == 0) {
        current.id = line.substr(4);
      } else if (line.rfind("event: ", 0) == 0) {
        current.type = line.substr(7);
      } else if (line.rfind("data: ", 0) == 0) {
        current.data = nlohmann::json::parse(line.substr(6), nullptr, false);
        if (current.data.is_discarded()) current.data = nullptr;
      }
      return true;
    });
    if (stop) return {};
    // An agent that cannot be reached at all is the user's error to fix, not a restart to wait out.
    if (first && !streamed && cursor.empty()) return streamed;
    first = false;
    if (!reconnect) return streamed ? Fail("the agent closed the event stream") : streamed;
    if (on_gap) on_gap(streamed ? "the agent closed the event stream" : streamed.error().message);
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

}  // namespace tern::cli
