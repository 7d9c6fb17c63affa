#include "tern/migrate/migration_store.hpp"

#include <nlohmann/json.hpp>
#include <tern/json_integer.hpp>
#include <tern/json_text.hpp>

#include "tern/migrate/protocol_codec.hpp"

namespace tern::migrate {
namespace {

using nlohmann::json;

constexpr std::size_t kMaxRecord = 80ull << 20;  // the IPC state, at most 64 MiB, in hex-free JSON

}  // namespace

std::string_view ToString(SourceStage stage) {
  switch (stage) {
    case SourceStage::kFrozen:
      return "frozen";
    case SourceStage::kCommitted:
      return "committed";
    case SourceStage::kAborted:
      return "aborted";
  }
  return "unknown";
}

std::string_view ToString(DestinationStage stage) {
  switch (stage) {
    case DestinationStage::kPrepared:
      return "prepared";
    case DestinationStage::kRestored:
      return "restored";
    case DestinationStage::kResumed:
      return "resumed";
    case DestinationStage::kComplete:
      return "complete";
  }
  return "unknown";
}

std::string EncodeRecord(const MigrationRecord& record) {
  if (const auto* source = std::get_if<SourceRecord>(&record)) {
    // The IPC state is binary: it goes as a JSON array of bytes would be 4x, so as the
    // binary-safe tail after the JSON line instead.
    return json{{"side", "source"},
                {"id", source->id},
                {"job_id", source->job_id},
                {"destination", source->destination},
                {"mode", ToString(source->mode)},
                {"stage", ToString(source->stage)}}
               .dump() +
           "\n" + source->ipc_state;
  }
  const auto& destination = std::get<DestinationRecord>(record);
  json job = json::parse(destination.job, nullptr, false);
  return json{{"side", "destination"},
              {"id", destination.id},
              {"job", job.is_object() ? job : json::object()},
              {"source", destination.source},
              {"mode", ToString(destination.mode)},
              {"shared_dir", destination.shared_dir},
              {"stage", ToString(destination.stage)},
              {"copy_pid", destination.copy_pid}}
             .dump() +
         "\n";
}

Expected<MigrationRecord> DecodeRecord(std::string_view bytes) {
  if (bytes.size() > kMaxRecord) return Fail("migration record too long");
  const auto newline = bytes.find('\n');
  if (newline == std::string_view::npos) return Fail("migration record cut short");
  const json head = json::parse(bytes.substr(0, newline), nullptr, false);
  if (!head.is_object()) return Fail("migration record is not a JSON object");
  auto text = [&](const char* key) { return JsonText(head, key); };
  const std::string id = text("id");
  if (!IsMigrationId(id)) return Fail("migration record names no migration id");
  const std::string mode_text = text("mode");
  if (mode_text != "precopy" && mode_text != "postcopy")
    return Fail("record of " + id + ": bad mode");
  const MoveMode mode = mode_text == "postcopy" ? MoveMode::kPostCopy : MoveMode::kPreCopy;
  const std::string stage = text("stage");
  if (text("side") == "source") {
    SourceRecord record{id, text("job_id"), text("destination"), mode};
    if (stage == "frozen") {
      record.stage = SourceStage::kFrozen;
    } else if (stage == "committed") {
      record.stage = SourceStage::kCommitted;
    } else if (stage == "aborted") {
      record.stage = SourceStage::kAborted;
    } else {
      return Fail("record of " + id + ": unknown stage '" + stage + "'");
    }
    record.ipc_state = std::string(bytes.substr(newline + 1));
    return MigrationRecord{std::move(record)};
  }
  if (text("side") != "destination") return Fail("record of " + id + ": unknown side");
  DestinationRecord record;
  record.id = id;
  const auto job = head.find("job");
  if (job == head.end() || !job->is_object()) return Fail("record of " + id + ": no job");
  record.job = job->dump();
  record.source = text("source");
  record.mode = mode;
  const auto shared = head.find("shared_dir");
  record.shared_dir = shared != head.end() && shared->is_boolean() && shared->get<bool>();
  if (stage == "prepared") {
    record.stage = DestinationStage::kPrepared;
  } else if (stage == "restored") {
    record.stage = DestinationStage::kRestored;
  } else if (stage == "resumed") {
    record.stage = DestinationStage::kResumed;
  } else if (stage == "complete") {
    record.stage = DestinationStage::kComplete;
  } else {
    return Fail("record of " + id + ": unknown stage '" + stage + "'");
  }
  const auto pid = head.find("copy_pid");
  if (pid != head.end()) {
    const auto value = JsonInteger<std::int64_t>(*pid);
    if (!value || *value < 0) return Fail("record of " + id + ": bad copy_pid");
    record.copy_pid = *value;
  }
  return MigrationRecord{std::move(record)};
}

}  // namespace tern::migrate
