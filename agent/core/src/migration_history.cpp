#include "tern/agent/migration_history.hpp"

#include <algorithm>

#include "tern/json_text.hpp"

namespace tern::agent {

using nlohmann::json;

namespace {

double Number(const json& event, const char* key) {
  const auto found = event.find(key);
  return found != event.end() && found->is_number() ? found->get<double>() : 0.0;
}

}  // namespace

void MigrationHistory::Histogram::Observe(double ms) {
  ++count;
  sum_ms += ms;
  for (std::size_t i = 0; i < kBucketsMs.size(); ++i) {
    if (ms <= kBucketsMs[i]) {
      ++buckets[i];
      return;
    }
  }
}

json* MigrationHistory::Find(const std::string& id) {
  for (auto it = records_.rbegin(); it != records_.rend(); ++it) {
    if ((*it)["id"] == id) return &*it;
  }
  return nullptr;
}

void MigrationHistory::OnEvent(const json& event) {
  if (!event.is_object()) return;
  const std::string type = JsonText(event, "type");
  if (type == "balancer" && JsonText(event, "action") == "migrate") {
    balancer_moves_[JsonText(event, "job")] = {JsonText(event, "to"), JsonText(event, "kind"),
                                               JsonText(event, "reason")};
    return;
  }
  if (type != "migration") return;
  const std::string what = JsonText(event, "event");
  const std::string id = JsonText(event, "id");
  if (id.empty()) return;
  if (what == "started") {
    const std::string job = JsonText(event, "job");
    json record = {{"id", id},
                   {"job", job},
                   {"from", JsonText(event, "from")},
                   {"to", JsonText(event, "to")},
                   {"mode", JsonText(event, "mode")},
                   {"kind", "manual"},
                   {"reason", "asked for by a user (tern migrate or the dashboard)"},
                   {"outcome", "running"},
                   {"started_at", JsonText(event, "time")},
                   {"ended_at", nullptr},
                   {"freeze_ms", nullptr},
                   {"total_ms", nullptr},
                   {"phases_ms", json::object()},
                   {"bytes", 0},
                   {"error", ""}};
    // The balancer announces a move just before it asks for it.
    if (auto why = balancer_moves_.find(job);
        why != balancer_moves_.end() && why->second.to == JsonText(event, "to")) {
      record["kind"] = why->second.kind;
      record["reason"] = why->second.reason;
      balancer_moves_.erase(why);
    }
    records_.push_back(std::move(record));
    if (records_.size() > kKeep) records_.pop_front();
    return;
  }
  if (what != "moved" && what != "failed") return;
  json* record = Find(id);
  if (record == nullptr) {  // started before the history began (or fell off): keep what we know
    records_.push_back({{"id", id},
                        {"job", JsonText(event, "job")},
                        {"from", JsonText(event, "from")},
                        {"to", JsonText(event, "to")},
                        {"mode", JsonText(event, "mode")},
                        {"kind", "unknown"},
                        {"reason", ""},
                        {"started_at", nullptr},
                        {"phases_ms", json::object()},
                        {"bytes", 0},
                        {"error", ""}});
    if (records_.size() > kKeep) records_.pop_front();
    record = &records_.back();
  }
  (*record)["ended_at"] = JsonText(event, "time");
  const std::string mode = JsonText(*record, "mode");
  if (what == "failed") {
    (*record)["outcome"] = "failed";
    (*record)["error"] = JsonText(event, "error");
    ++outcomes_[{"failed", mode}];
    return;
  }
  (*record)["outcome"] = "moved";
  const double freeze_ms = Number(event, "freeze_ms");
  const double total_ms = Number(event, "total_ms");
  const auto bytes = static_cast<std::uint64_t>(std::max(0.0, Number(event, "bytes")));
  (*record)["freeze_ms"] = freeze_ms;
  (*record)["total_ms"] = total_ms;
  (*record)["bytes"] = bytes;
  if (event.contains("phases_ms") && event["phases_ms"].is_object()) {
    (*record)["phases_ms"] = event["phases_ms"];
  }
  ++outcomes_[{"moved", mode}];
  freeze_.Observe(freeze_ms);
  total_.Observe(total_ms);
  bytes_moved_ += bytes;
}

json MigrationHistory::Recent(std::size_t limit) const {
  json out = json::array();
  for (auto it = records_.rbegin(); it != records_.rend() && out.size() < limit; ++it) {
    out.push_back(*it);
  }
  return out;
}

std::size_t MigrationHistory::running() const {
  return static_cast<std::size_t>(
      std::count_if(records_.begin(), records_.end(),
                    [](const json& r) { return r.value("outcome", "") == "running"; }));
}

}  // namespace tern::agent
