#include "tern/jobs/process_identity.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "tern/jobs/job_launcher.hpp"

namespace tern::jobs {

std::string CurrentBootId() {
  std::string id;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> id;
  return id;
}

std::optional<ProcessIdentity> IdentifyProcess(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  const std::uint64_t ticks = ProcessStartTicks(pid);
  if (ticks == 0) return std::nullopt;
  return ProcessIdentity{pid, ticks, CurrentBootId()};
}

bool IsSameProcess(const ProcessIdentity& identity) {
  if (identity.pid <= 0 || identity.start_ticks == 0 || identity.boot_id.empty()) return false;
  auto now = IdentifyProcess(identity.pid);
  return now && *now == identity;
}

UniqueFd OpenPidfd(const ProcessIdentity& identity) {
  if (!IsSameProcess(identity)) return UniqueFd();
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, identity.pid, 0)));
  // The pid may have changed hands between the check and the open: the pidfd now pins one
  // process, so checking once more settles which.
  if (!pidfd.valid() || !IsSameProcess(identity)) return UniqueFd();
  return pidfd;
}

bool SignalPidfd(int pidfd, int signal) {
  return pidfd >= 0 && ::syscall(SYS_pidfd_send_signal, pidfd, signal, nullptr, 0) == 0;
}

std::string ToJsonText(const ProcessIdentity& identity) {
  return nlohmann::json{
      {"pid", identity.pid}, {"start_ticks", identity.start_ticks}, {"boot_id", identity.boot_id}}
      .dump();
}

std::optional<ProcessIdentity> ParseProcessIdentity(const std::string& text) {
  const auto json = nlohmann::json::parse(text, nullptr, false);
  if (!json.is_object() || !json.contains("pid") || !json["pid"].is_number_integer() ||
      !json.contains("start_ticks") || !json["start_ticks"].is_number_unsigned() ||
      !json.contains("boot_id") || !json["boot_id"].is_string()) {
    return std::nullopt;
  }
  ProcessIdentity identity{json["pid"].get<pid_t>(), json["start_ticks"].get<std::uint64_t>(),
                           json["boot_id"].get<std::string>()};
  if (identity.pid <= 0 || identity.start_ticks == 0 || identity.boot_id.empty()) {
    return std::nullopt;
  }
  return identity;
}

}  // namespace tern::jobs
