// EventCursor: where a reader of the cluster-wide event stream is, one sequence number per node
// — the last event it has of each. It is the stream's SSE `id` and comes back as
// `Last-Event-ID` (or `?cursor=`) to resume: "node1:42,node2:7" (docs/api.md).
//
// Contract: Parse refuses text that is not comma-separated `name:seq` pairs (a name without
// ':' or ',', a seq that is a whole number), with a one-line reason; Format(Parse(x)) == x for
// a cursor Format made (names sorted). An empty text is the empty cursor.
//
// Thread-safety: a plain value; Parse and Format are pure.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <tern/expected.hpp>

namespace tern::agent {

struct EventCursor {
  std::map<std::string, std::uint64_t> seq;  // node name → last seq read

  std::uint64_t Of(const std::string& node) const {
    const auto found = seq.find(node);
    return found == seq.end() ? 0 : found->second;
  }
};

Expected<EventCursor> ParseEventCursor(const std::string& text);
std::string FormatEventCursor(const EventCursor& cursor);

}  // namespace tern::agent
