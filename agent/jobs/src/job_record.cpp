#include "tern/jobs/job_record.hpp"

#include <algorithm>
#include <cctype>
#include <ctime>
#include <tern/json_integer.hpp>

namespace tern::jobs {
namespace {

using nlohmann::json;

json TimeOrNull(const std::optional<TimePoint>& time) {
  return time ? json(FormatTime(*time)) : json(nullptr);
}

template <typename T>
json OrNull(const std::optional<T>& value) {
  return value ? json(*value) : json(nullptr);
}

std::optional<TimePoint> TimeField(const json& object, const char* key) {
  if (!object.contains(key) || !object[key].is_string()) return std::nullopt;
  return ParseTime(object[key].get<std::string>());
}

std::optional<int> IntField(const json& object, const char* key) {
  if (!object.contains(key)) return std::nullopt;
  return JsonInteger<int>(object[key]);
}

}  // namespace

std::string ToString(JobState state) {
  switch (state) {
    case JobState::kRunning:
      return "running";
    case JobState::kExited:
      return "exited";
    case JobState::kKilled:
      return "killed";
    case JobState::kCancelled:
      return "cancelled";
    case JobState::kFailed:
      return "failed";
    case JobState::kLost:
      return "lost";
  }
  return "unknown";
}

std::optional<JobState> ParseJobState(std::string_view text) {
  for (JobState state : {JobState::kRunning, JobState::kExited, JobState::kKilled,
                         JobState::kCancelled, JobState::kFailed, JobState::kLost}) {
    if (ToString(state) == text) return state;
  }
  return std::nullopt;
}

std::string FormatTime(TimePoint time) {
  const std::time_t seconds = Clock::to_time_t(time);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

std::optional<TimePoint> ParseTime(const std::string& text) {
  std::tm utc{};
  const char* end = strptime(text.c_str(), "%Y-%m-%dT%H:%M:%S", &utc);
  if (end == nullptr) return std::nullopt;
  // The text may be a job user's (status.json): a year the clock cannot count in its
  // nanoseconds (before 1678 or after 2261) is refused rather than overflowed.
  const std::time_t seconds = timegm(&utc);
  constexpr auto kLimit =
      std::chrono::duration_cast<std::chrono::seconds>(Clock::duration::max()).count();
  if (seconds >= kLimit || seconds <= -kLimit) return std::nullopt;
  return Clock::from_time_t(seconds);
}

std::optional<ExitStatus> ParseExitStatus(const std::string& text) {
  const json status = json::parse(text, nullptr, false);
  if (!status.is_object()) return std::nullopt;
  ExitStatus out;
  auto small_int = [&](const char* key, int low, int high) -> std::optional<int> {
    auto found = status.find(key);
    if (found == status.end() || !found->is_number_integer()) return std::nullopt;
    const auto value = found->get<std::int64_t>();
    if (value < low || value > high) return std::nullopt;
    return static_cast<int>(value);
  };
  out.exit_code = small_int("exit_code", 0, 255);
  out.signal = small_int("signal", 1, 64);
  if (out.exit_code.has_value() == out.signal.has_value()) return std::nullopt;
  if (auto ended = status.find("ended_at"); ended != status.end() && ended->is_string()) {
    out.ended_at = ParseTime(ended->get<std::string>());
  }
  return out;
}

bool IsValidJobId(std::string_view id) {
  const auto dot = id.rfind('.');
  if (dot == std::string_view::npos || dot == 0 || dot + 1 == id.size() || id.size() > 200) {
    return false;
  }
  for (size_t i = 0; i < id.size(); ++i) {
    const auto c = static_cast<unsigned char>(id[i]);
    const bool ok =
        i < dot ? (std::isalnum(c) || c == '-' || c == '_') : (i == dot || std::isdigit(c));
    if (!ok) return false;
  }
  return true;
}

bool IsValidMigrationId(std::string_view id) {
  const auto dash = id.rfind('-');
  if (dash == std::string_view::npos || id.size() - dash != 9) return false;
  if (!IsValidJobId(id.substr(0, dash))) return false;
  return std::all_of(id.begin() + static_cast<std::ptrdiff_t>(dash) + 1, id.end(),
                     [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; });
}

json ToJson(const JobRecord& job, TimePoint now) {
  const TimePoint since = job.started_at.value_or(job.submitted_at);
  const TimePoint until = job.ended_at.value_or(now);
  // In seconds as doubles: a record's times come from a file, and the difference of two
  // far-apart time points does not fit the clock's integer nanoseconds.
  const double age = std::chrono::duration<double>(now.time_since_epoch()).count() -
                     std::chrono::duration<double>(since.time_since_epoch()).count();
  (void)until;
  return json{{"id", job.id},
              {"name", job.name},
              {"user", job.user},
              {"uid", job.uid},
              {"gid", job.gid},
              {"node", job.node},
              {"home_node", job.home_node},
              {"state", ToString(job.state)},
              {"argv", job.argv},
              {"pid", job.state == JobState::kRunning ? job.pid : 0},
              {"exit_code", OrNull(job.exit_code)},
              {"signal", OrNull(job.signal)},
              {"submitted_at", FormatTime(job.submitted_at)},
              {"started_at", TimeOrNull(job.started_at)},
              {"ended_at", TimeOrNull(job.ended_at)},
              {"age_seconds", age < 0 ? 0.0 : age},
              {"cpu_seconds", job.cpu_seconds},
              {"rss_bytes", job.rss_bytes},
              {"dir", job.dir},
              {"error", job.error},
              {"migrations", job.migrations},
              {"pinned", job.pinned},
              {"address", job.net_address.empty() ? json(nullptr) : json(job.net_address)}};
}

json PersistentJson(const JobRecord& job) {
  json out = ToJson(job, job.submitted_at);
  out.erase("age_seconds");
  out["pid"] = job.pid;
  out["pid_start_ticks"] = job.pid_start_ticks;
  out["env"] = job.env;
  out["cancel_requested"] = job.cancel_requested;
  out["migrating_id"] = job.migrating_id;
  return out;
}

Expected<JobRecord> FromPersistentJson(const json& in) {
  try {
    JobRecord job;
    job.id = in.at("id").get<std::string>();
    job.name = in.value("name", "");
    job.user = in.value("user", "");
    job.uid = JsonIntegerAt<uid_t>(in, "uid");
    job.gid = JsonIntegerAt<gid_t>(in, "gid");
    job.node = in.value("node", "");
    job.home_node = in.value("home_node", "");
    auto state = ParseJobState(in.at("state").get<std::string>());
    if (!state) return Fail("job " + job.id + ": unknown state " + in.at("state").dump());
    job.state = *state;
    job.argv = in.value("argv", std::vector<std::string>{});
    job.pid = JsonIntegerAt<pid_t>(in, "pid", 0);
    job.exit_code = IntField(in, "exit_code");
    job.signal = IntField(in, "signal");
    job.submitted_at = TimeField(in, "submitted_at").value_or(TimePoint{});
    job.started_at = TimeField(in, "started_at");
    job.ended_at = TimeField(in, "ended_at");
    job.cpu_seconds = in.value("cpu_seconds", 0.0);
    job.rss_bytes = JsonIntegerAt<std::uint64_t>(in, "rss_bytes", 0);
    job.dir = in.value("dir", "");
    job.error = in.value("error", "");
    job.pid_start_ticks = JsonIntegerAt<std::uint64_t>(in, "pid_start_ticks", 0);
    job.env = in.value("env", std::map<std::string, std::string>{});
    job.cancel_requested = in.value("cancel_requested", false);
    job.migrating_id = in.value("migrating_id", "");
    job.pinned = in.contains("pinned") && in["pinned"].is_boolean() && in["pinned"].get<bool>();
    if (in.contains("address") && in["address"].is_string()) {
      job.net_address = in["address"].get<std::string>();
    }
    if (in.contains("migrations") && in["migrations"].is_array()) {
      for (const auto& entry : in["migrations"]) job.migrations.push_back(entry);
    }
    return job;
  } catch (const std::exception& error) {  // json::exception, or JsonIntegerAt's
    return Fail(std::string("malformed job record: ") + error.what());
  }
}

}  // namespace tern::jobs
