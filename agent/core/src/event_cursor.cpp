#include "tern/agent/event_cursor.hpp"

#include <charconv>

namespace tern::agent {

Expected<EventCursor> ParseEventCursor(const std::string& text) {
  EventCursor cursor;
  if (!text.empty() && text.back() == ',') return Fail("event cursor ends with ','");
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string pair = text.substr(start, end - start);
    const auto colon = pair.rfind(':');
    if (colon == std::string::npos || colon == 0) {
      return Fail("event cursor entry '" + pair + "' is not node:seq");
    }
    std::uint64_t seq = 0;
    const char* first = pair.data() + colon + 1;
    const char* last = pair.data() + pair.size();
    const auto parsed = std::from_chars(first, last, seq);
    if (first == last || parsed.ec != std::errc{} || parsed.ptr != last) {
      return Fail("event cursor entry '" + pair + "' has no whole-number seq");
    }
    cursor.seq[pair.substr(0, colon)] = seq;
    start = end + 1;
  }
  return cursor;
}

std::string FormatEventCursor(const EventCursor& cursor) {
  std::string out;
  for (const auto& [node, seq] : cursor.seq) {
    if (!out.empty()) out += ',';
    out += node + ':' + std::to_string(seq);
  }
  return out;
}

}  // namespace tern::agent
