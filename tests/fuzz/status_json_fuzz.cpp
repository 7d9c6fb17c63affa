// Fuzz target: a job's status.json (agent/jobs/src/job_record.cpp). The file is the job
// user's to write, and the root agent reads it when the job ends (ParseExitStatus); the same
// bytes also go through the other parsers of job_record: times, states, id shapes, and a
// persisted job record (FromPersistentJson; records travel between nodes with a migrating job).
//
// Properties checked: ParseExitStatus never throws and accepts only what tern-init writes
// (exit_code 0..255 or signal 1..64); a record FromPersistentJson accepts survives
// PersistentJson and back with the same id, state and argv.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <tern/jobs/job_record.hpp>

#include "fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  if (auto status = tern::jobs::ParseExitStatus(text)) {
    FUZZ_CHECK(status->exit_code.has_value() || status->signal.has_value(),
               "an exit status with neither an exit code nor a signal");
    if (status->exit_code)
      FUZZ_CHECK(*status->exit_code >= 0 && *status->exit_code <= 255, "exit code range");
    if (status->signal) FUZZ_CHECK(*status->signal >= 1 && *status->signal <= 64, "signal range");
  }
  (void)tern::jobs::ParseTime(text);
  (void)tern::jobs::ParseJobState(text);
  (void)tern::jobs::IsValidJobId(text);
  (void)tern::jobs::IsValidMigrationId(text);

  const nlohmann::json json = nlohmann::json::parse(text, nullptr, false);
  if (json.is_discarded()) return 0;
  auto record = tern::jobs::FromPersistentJson(json);
  if (!record) return 0;
  (void)tern::jobs::ToJson(*record, tern::jobs::Clock::now()).dump();
  auto again = tern::jobs::FromPersistentJson(tern::jobs::PersistentJson(*record));
  FUZZ_CHECK(again.has_value(), "a persisted record does not load again");
  FUZZ_CHECK(
      again->id == record->id && again->state == record->state && again->argv == record->argv,
      "a record changes when persisted and loaded again");
  return 0;
}
