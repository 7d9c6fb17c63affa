#include "tern/agent/restored_copy.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <tern/jobs/job_store.hpp>

namespace tern::agent {
namespace {

std::string ReadSmall(const std::string& path) {
  std::ifstream file(path);
  std::string text(4096, '\0');
  file.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(file.gcount()));
  return text;
}

// Seconds since the epoch at which this boot began (btime in /proc/stat).
std::optional<double> BootTime() {
  std::ifstream stat("/proc/stat");
  std::string key;
  while (stat >> key) {
    if (key == "btime") {
      double seconds = 0;
      if (stat >> seconds) return seconds;
      return std::nullopt;
    }
    stat.ignore(1 << 20, '\n');
  }
  return std::nullopt;
}

std::optional<double> ModifiedAt(const std::string& path) {
  struct stat info {};
  if (::lstat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) return std::nullopt;
  return static_cast<double>(info.st_mtim.tv_sec) + info.st_mtim.tv_nsec / 1e9;
}

// CRIU's --pidfile, believed only for a process that started inside the restore's window.
std::optional<jobs::ProcessIdentity> FromPidfile(const std::string& dir) {
  const auto window_start = ModifiedAt(dir + "/incoming.json");
  const auto window_end = ModifiedAt(dir + "/images/restored.pid");
  const auto boot = BootTime();
  if (!window_start || !window_end || !boot || *window_end < *boot) return std::nullopt;
  std::istringstream text(ReadSmall(dir + "/images/restored.pid"));
  pid_t pid = 0;
  if (!(text >> pid) || pid <= 0) return std::nullopt;
  auto identity = jobs::IdentifyProcess(pid);
  if (!identity) return std::nullopt;
  const double started = *boot + static_cast<double>(identity->start_ticks) /
                                     static_cast<double>(sysconf(_SC_CLK_TCK));
  // btime is whole seconds and start times are ticks: a second of slack on each side.
  if (started < *window_start - 1.0 || started > *window_end + 1.0) return std::nullopt;
  return identity;
}

}  // namespace

Expected<void> RecordRestoredCopy(const std::string& dir, const jobs::ProcessIdentity& identity) {
  return jobs::WriteFileAtomically(dir + "/restored.json", jobs::ToJsonText(identity) + "\n");
}

std::optional<jobs::ProcessIdentity> FindRestoredCopy(const std::string& dir) {
  struct stat info {};
  if (::lstat((dir + "/restored.json").c_str(), &info) == 0) {
    // A record that names another process (or none) settles it: the pid file is not asked.
    auto recorded = jobs::ParseProcessIdentity(ReadSmall(dir + "/restored.json"));
    if (recorded && jobs::IsSameProcess(*recorded)) return recorded;
    return std::nullopt;
  }
  return FromPidfile(dir);
}

}  // namespace tern::agent
