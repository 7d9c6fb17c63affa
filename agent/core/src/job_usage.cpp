#include "job_usage.hpp"

#include <dirent.h>
#include <unistd.h>

#include <charconv>
#include <fstream>
#include <sstream>
#include <vector>

#include "taskstats.hpp"

namespace tern::agent {
namespace {

std::string ReadSmallFile(const std::string& path) {
  std::ifstream file(path);
  std::string text;
  std::getline(file, text, '\0');
  return text;
}

std::optional<std::uint64_t> Unsigned(std::string_view text) {
  std::uint64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// The numeric entries of a /proc directory.
std::vector<pid_t> NumericEntries(const std::string& path) {
  std::vector<pid_t> ids;
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(path.c_str()), ::closedir);
  if (!dir) return ids;
  while (dirent* entry = ::readdir(dir.get())) {
    if (const auto id = Unsigned(entry->d_name); id && *id > 0)
      ids.push_back(static_cast<pid_t>(*id));
  }
  return ids;
}

std::string PidNamespace(pid_t pid) {
  char target[64];
  const std::string link = "/proc/" + std::to_string(pid) + "/ns/pid";
  const ssize_t length = ::readlink(link.c_str(), target, sizeof target - 1);
  return length <= 0 ? std::string() : std::string(target, static_cast<std::size_t>(length));
}

}  // namespace

Expected<ProcStat> ParseProcStat(std::string_view text) {
  // The command (field 2) may hold spaces and parentheses: fields restart after the last ')'.
  const auto close = text.rfind(')');
  if (close == std::string_view::npos || close + 2 >= text.size()) {
    return Fail("/proc stat without a command field");
  }
  std::istringstream rest{std::string(text.substr(close + 2))};
  std::string fields[19];  // fields 3..21
  for (auto& field : fields) {
    if (!(rest >> field)) return Fail("/proc stat has fewer than 21 fields");
  }
  ProcStat stat;
  if (fields[0].size() != 1) return Fail("/proc stat has a bad state '" + fields[0] + "'");
  stat.state = fields[0][0];
  const auto utime = Unsigned(fields[11]);    // field 14
  const auto stime = Unsigned(fields[12]);    // field 15
  const auto threads = Unsigned(fields[17]);  // field 20
  if (!utime || !stime || !threads) return Fail("/proc stat has non-numeric times or threads");
  stat.cpu_ticks = *utime + *stime;
  stat.threads = static_cast<int>(*threads);
  return stat;
}

Expected<std::uint64_t> ParseProcIo(std::string_view text) {
  std::istringstream lines{std::string(text)};
  std::string key, value;
  std::optional<std::uint64_t> read, written;
  while (lines >> key >> value) {
    if (key == "rchar:") read = Unsigned(value);
    if (key == "wchar:") written = Unsigned(value);
  }
  if (!read || !written) return Fail("/proc io without rchar and wchar");
  return *read + *written;
}

Expected<std::uint64_t> ParseStatmRss(std::string_view text, std::uint64_t page_size) {
  std::istringstream fields{std::string(text)};
  std::string size, resident;
  if (!(fields >> size >> resident)) return Fail("/proc statm has fewer than 2 fields");
  const auto pages = Unsigned(resident);
  if (!pages) return Fail("/proc statm has a non-numeric resident size");
  return *pages * page_size;
}

JobUsageSampler::JobUsageSampler(bool use_taskstats) {
  if (!use_taskstats) {
    source_ = "/proc (taskstats not tried)";
    return;
  }
  auto opened = Taskstats::Open();
  if (opened) {
    taskstats_ = std::make_unique<Taskstats>(std::move(*opened));
    source_ = "taskstats";
  } else {
    source_ = "/proc (taskstats: " + opened.error().message + ")";
  }
}

JobUsageSampler::~JobUsageSampler() = default;

JobUsageSampler::Totals JobUsageSampler::Measure(const std::vector<pid_t>& pids) {
  static const std::uint64_t page_size = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  static const double ticks_per_s = static_cast<double>(::sysconf(_SC_CLK_TCK));
  Totals totals;
  for (pid_t pid : pids) {
    const std::string dir = "/proc/" + std::to_string(pid);
    const auto stat = ParseProcStat(ReadSmallFile(dir + "/stat"));
    if (!stat) continue;  // gone meanwhile
    ++totals.processes;
    if (const auto rss = ParseStatmRss(ReadSmallFile(dir + "/statm"), page_size)) {
      totals.rss_bytes += *rss;
    }
    // One thread: the process's own state and times suffice. More: each thread's.
    std::vector<pid_t> tids = stat->threads > 1 ? NumericEntries(dir + "/task") : std::vector{pid};
    // CPU time from /proc: taskstats' per-task CPU figures read off by up to a second's worth
    // between samples of a job under a CPU quota (0 and 0.97 CPU in turns for a steady 0.25),
    // where /proc's are steady. taskstats gives the I/O bytes of every thread in one reply each.
    const double cpu = static_cast<double>(stat->cpu_ticks) / ticks_per_s;
    bool from_taskstats = taskstats_ != nullptr;
    std::uint64_t io = 0;
    for (pid_t tid : tids) {
      if (tid == pid) {
        totals.runnable += stat->state == 'R';
      } else if (const auto task =
                     ParseProcStat(ReadSmallFile(dir + "/task/" + std::to_string(tid) + "/stat"))) {
        totals.runnable += task->state == 'R';
      }
      if (from_taskstats) {
        const auto usage = taskstats_->Get(tid);
        if (usage) {
          io += usage->io_bytes;
        } else {
          from_taskstats = false;  // this process from /proc, whole
        }
      }
    }
    if (!from_taskstats) {
      const auto proc_io = ParseProcIo(ReadSmallFile(dir + "/io"));
      io = proc_io ? *proc_io : 0;
    }
    totals.cpu_seconds += cpu;
    totals.io_bytes += io;
  }
  return totals;
}

void JobUsageSampler::Sample(const std::map<std::string, pid_t>& jobs,
                             std::chrono::steady_clock::time_point now) {
  // One scan of /proc: every process by PID namespace (a job's tree is its init's namespace).
  std::map<std::string, pid_t> namespace_of_job;
  std::map<std::string, std::vector<pid_t>> pids_by_namespace;
  for (const auto& [id, init] : jobs) {
    const std::string ns = PidNamespace(init);
    if (!ns.empty()) pids_by_namespace[ns];
  }
  if (!pids_by_namespace.empty()) {
    for (pid_t pid : NumericEntries("/proc")) {
      const auto found = pids_by_namespace.find(PidNamespace(pid));
      if (found != pids_by_namespace.end()) found->second.push_back(pid);
    }
  }
  std::map<std::string, State> sampled;
  for (const auto& [id, init] : jobs) {
    const auto pids = pids_by_namespace.find(PidNamespace(init));
    const Totals totals = pids == pids_by_namespace.end() ? Totals{} : Measure(pids->second);
    State state;
    if (auto previous = jobs_.find(id); previous != jobs_.end())
      state = std::move(previous->second);
    const double seconds = std::chrono::duration<double>(now - state.at).count();
    const bool have_previous = state.at != std::chrono::steady_clock::time_point{} && seconds > 0;
    // A process that ended takes its counters with it: a drop is not negative use.
    state.usage.cpu_share = have_previous && totals.cpu_seconds >= state.last.cpu_seconds
                                ? (totals.cpu_seconds - state.last.cpu_seconds) / seconds
                                : 0;
    state.usage.io_bytes_per_s =
        have_previous && totals.io_bytes >= state.last.io_bytes
            ? static_cast<double>(totals.io_bytes - state.last.io_bytes) / seconds
            : 0;
    state.usage.cpu_seconds = totals.cpu_seconds;
    state.usage.rss_bytes = totals.rss_bytes;
    state.usage.processes = totals.processes;
    state.runnable.push_back(totals.runnable);
    while (state.runnable.size() > kRunnableWindow) state.runnable.pop_front();
    double sum = 0;
    for (int count : state.runnable) sum += count;
    state.usage.runnable = sum / static_cast<double>(state.runnable.size());
    state.last = totals;
    state.at = now;
    sampled.emplace(id, std::move(state));
  }
  jobs_ = std::move(sampled);
}

std::optional<JobUsage> JobUsageSampler::Get(const std::string& job) const {
  const auto found = jobs_.find(job);
  if (found == jobs_.end()) return std::nullopt;
  return found->second.usage;
}

}  // namespace tern::agent
