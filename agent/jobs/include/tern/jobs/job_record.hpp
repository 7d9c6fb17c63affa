// JobRecord: everything an agent knows about one job, and its two JSON forms — the public
// Job object of docs/api.md (ToJson) and the persistent form kept in the state dir, which adds
// what only the agent needs (PersistentJson / FromPersistentJson).
//
// Thread-safety: plain values; the functions are pure.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <vector>

namespace tern::jobs {

using Clock = std::chrono::system_clock;
using TimePoint = Clock::time_point;

enum class JobState { kRunning, kExited, kKilled, kCancelled, kFailed, kLost };
std::string ToString(JobState state);
std::optional<JobState> ParseJobState(std::string_view text);
inline bool IsFinal(JobState state) { return state != JobState::kRunning; }

struct JobRecord {
  std::string id;    // "<home node>.<serial>"
  std::string name;  // --name, default basename of argv[0]
  std::string user;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string node;       // where it runs now
  std::string home_node;  // where it was submitted
  JobState state = JobState::kRunning;
  std::vector<std::string> argv;
  pid_t pid = 0;  // host pid of the job's tern-init; 0 when not running
  std::optional<int> exit_code;
  std::optional<int> signal;
  TimePoint submitted_at{};
  std::optional<TimePoint> started_at;
  std::optional<TimePoint> ended_at;
  double cpu_seconds = 0;
  std::uint64_t rss_bytes = 0;
  std::string dir;
  std::string error;
  // Internal: the init's start time in clock ticks (/proc/PID/stat field 22), so that a reused
  // pid is never mistaken for the job.
  std::uint64_t pid_start_ticks = 0;
  std::map<std::string, std::string> env;
  bool cancel_requested = false;
  // Every completed migration's record (mode, phases, freeze, bytes), oldest first.
  std::vector<nlohmann::json> migrations;
  // Set on the source from the moment the job is frozen for a migration until it is resumed
  // there (abort) or handed over (commit): an agent restarted in between resumes the job.
  std::string migrating_id;
  // `tern pin` / `submit --pin`: the balancer never moves the job (`tern migrate` still does).
  // Part of the record, so it travels with the job when it moves.
  bool pinned = false;
  // `tern submit --net`: the job's own address (docs/networking.md), "" when it shares its
  // node's network. Chosen by its home node; it travels with the job.
  std::string net_address;
};

std::string FormatTime(TimePoint time);  // RFC 3339 UTC, e.g. 2026-11-24T12:00:00Z
std::optional<TimePoint> ParseTime(const std::string& text);

// How a job's command ended, as tern-init reports it in status.json. That file is the job
// user's to write, so anything but an object with "exit_code" 0..255 or "signal" 1..64 (and
// an optional RFC 3339 "ended_at" string) is nullopt: the agent then goes by the init's own
// wait status. Never throws.
struct ExitStatus {
  std::optional<int> exit_code;
  std::optional<int> signal;
  std::optional<TimePoint> ended_at;
};
std::optional<ExitStatus> ParseExitStatus(const std::string& text);

// Ids become file and directory names under the state directory, so only their known shapes
// are accepted from requests and peers: a job id is "NODE.SERIAL" (the node name's letters,
// digits, '-' and '_', a dot, decimal digits); a migration id is "JOB-XXXXXXXX" (8 hex digits).
bool IsValidJobId(std::string_view id);
bool IsValidMigrationId(std::string_view id);

nlohmann::json ToJson(const JobRecord& job, TimePoint now);
nlohmann::json PersistentJson(const JobRecord& job);
Expected<JobRecord> FromPersistentJson(const nlohmann::json& json);

}  // namespace tern::jobs
