#include "job_usage.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <charconv>
#include <vector>

#include "taskstats.hpp"

namespace tern::agent {
namespace {

// Reads a /proc file of up to a page or so into `buffer` with one open and read (/proc files
// are produced whole by the first read); returns what was read, empty when it is gone.
std::string_view ReadProcFile(const char* path, std::array<char, 4096>& buffer) {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  const ssize_t length = ::read(fd, buffer.data(), buffer.size());
  ::close(fd);
  return length <= 0 ? std::string_view()
                     : std::string_view(buffer.data(), static_cast<std::size_t>(length));
}

std::optional<std::uint64_t> Unsigned(std::string_view text) {
  std::uint64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// Splits off the next field separated by blanks; empty at the end.
std::string_view NextField(std::string_view& text) {
  std::size_t begin = 0;
  while (begin < text.size() && (text[begin] == ' ' || text[begin] == '\n' || text[begin] == '\t'))
    ++begin;
  std::size_t end = begin;
  while (end < text.size() && text[end] != ' ' && text[end] != '\n' && text[end] != '\t') ++end;
  const std::string_view field = text.substr(begin, end - begin);
  text.remove_prefix(end);
  return field;
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
  std::string_view rest = text.substr(close + 2);
  std::string_view fields[18];  // fields 3..20
  for (auto& field : fields) {
    field = NextField(rest);
    if (field.empty()) return Fail("/proc stat has fewer than 20 fields");
  }
  ProcStat stat;
  if (fields[0].size() != 1)
    return Fail("/proc stat has a bad state '" + std::string(fields[0]) + "'");
  stat.state = fields[0][0];
  const auto utime = Unsigned(fields[11]);    // field 14
  const auto stime = Unsigned(fields[12]);    // field 15
  const auto cutime = Unsigned(fields[13]);   // field 16 (signed in proc(5), never negative)
  const auto cstime = Unsigned(fields[14]);   // field 17
  const auto threads = Unsigned(fields[17]);  // field 20
  if (!utime || !stime || !cutime || !cstime || !threads) {
    return Fail("/proc stat has non-numeric times or threads");
  }
  stat.cpu_ticks = *utime + *stime;
  stat.child_cpu_ticks = *cutime + *cstime;
  stat.threads = static_cast<int>(*threads);
  return stat;
}

Expected<std::uint64_t> ParseProcIo(std::string_view text) {
  std::optional<std::uint64_t> read, written;
  for (std::string_view key = NextField(text); !key.empty(); key = NextField(text)) {
    const std::string_view value = NextField(text);
    if (key == "rchar:") read = Unsigned(value);
    if (key == "wchar:") written = Unsigned(value);
  }
  if (!read || !written) return Fail("/proc io without rchar and wchar");
  return *read + *written;
}

Expected<std::uint64_t> ParseStatmRss(std::string_view text, std::uint64_t page_size) {
  const std::string_view size = NextField(text);
  const std::string_view resident = NextField(text);
  if (size.empty() || resident.empty()) return Fail("/proc statm has fewer than 2 fields");
  const auto pages = Unsigned(resident);
  if (!pages) return Fail("/proc statm has a non-numeric resident size");
  return *pages * page_size;
}

std::vector<pid_t> ParseChildren(std::string_view text) {
  std::vector<pid_t> pids;
  for (std::string_view field = NextField(text); !field.empty(); field = NextField(text)) {
    if (const auto pid = Unsigned(field); pid && *pid > 0 && *pid < (1u << 22))
      pids.push_back(static_cast<pid_t>(*pid));
  }
  return pids;
}

JobUsageSampler::JobUsageSampler(bool use_taskstats, SampleSchedule::Options schedule)
    : schedule_(schedule) {
  const std::string self = std::to_string(::getpid());
  children_files_ = ::access(("/proc/" + self + "/task/" + self + "/children").c_str(), R_OK) == 0;
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

JobUsageSampler::Totals JobUsageSampler::Measure(pid_t init,
                                                 const std::vector<pid_t>* namespace_pids) {
  static const std::uint64_t page_size = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  static const double ticks_per_s = static_cast<double>(::sysconf(_SC_CLK_TCK));
  Totals totals;
  std::array<char, 4096> buffer;
  char path[96];
  // Walk from the init: each process read once; its children found on the way.
  std::vector<pid_t> pending = namespace_pids ? *namespace_pids : std::vector<pid_t>{init};
  std::uint64_t ticks = 0;
  // A tree of more processes than this is not walked further (a fork bomb costs us nothing).
  constexpr std::size_t kMaxProcesses = 4096;
  std::size_t visited = 0;
  while (!pending.empty() && visited < kMaxProcesses) {
    const pid_t pid = pending.back();
    pending.pop_back();
    ++visited;
    std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
    const auto stat = ParseProcStat(ReadProcFile(path, buffer));
    if (!stat) continue;  // gone meanwhile
    ++totals.processes;
    ticks += stat->cpu_ticks + (pid == init ? stat->child_cpu_ticks : 0);
    std::snprintf(path, sizeof path, "/proc/%d/statm", pid);
    if (const auto rss = ParseStatmRss(ReadProcFile(path, buffer), page_size)) {
      totals.rss_bytes += *rss;
    }
    // One thread: the process's own state suffices. More: each thread's.
    std::vector<pid_t> tids{pid};
    if (stat->threads > 1) {
      tids = NumericEntries("/proc/" + std::to_string(pid) + "/task");
    }
    totals.runnable += stat->threads > 1 ? 0 : stat->state == 'R';
    for (pid_t tid : tids) {
      if (stat->threads > 1) {
        std::snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, tid);
        if (const auto task = ParseProcStat(ReadProcFile(path, buffer))) {
          totals.runnable += task->state == 'R';
        }
      }
      if (!namespace_pids) {
        std::snprintf(path, sizeof path, "/proc/%d/task/%d/children", pid, tid);
        for (pid_t child : ParseChildren(ReadProcFile(path, buffer))) pending.push_back(child);
      }
    }
    // I/O: taskstats gives every thread's bytes in one batch of requests; else /proc/PID/io.
    std::optional<std::uint64_t> io;
    if (taskstats_) io = taskstats_->IoBytes(tids);
    if (!io) {
      std::snprintf(path, sizeof path, "/proc/%d/io", pid);
      const auto proc_io = ParseProcIo(ReadProcFile(path, buffer));
      io = proc_io ? *proc_io : 0;
    }
    totals.io_bytes += *io;
  }
  totals.cpu_seconds = static_cast<double>(ticks) / ticks_per_s;
  return totals;
}

std::vector<std::string> JobUsageSampler::Sample(const std::map<std::string, pid_t>& jobs,
                                                 std::chrono::steady_clock::time_point now,
                                                 std::optional<double> node_cpu_seconds,
                                                 bool every_job) {
  std::vector<std::string> due;
  for (const auto& [id, init] : jobs) {
    if (every_job || schedule_.Due(id, now)) due.push_back(id);
  }
  // Without children files: one scan of /proc, every process by PID namespace (a job's tree is
  // its init's namespace).
  std::map<std::string, std::vector<pid_t>> pids_by_namespace;
  std::map<std::string, std::string> namespace_of_job;
  if (!children_files_ && !due.empty()) {
    for (const auto& id : due) {
      const std::string ns = PidNamespace(jobs.at(id));
      if (ns.empty()) continue;
      namespace_of_job[id] = ns;
      pids_by_namespace[ns];
    }
    for (pid_t pid : NumericEntries("/proc")) {
      const auto found = pids_by_namespace.find(PidNamespace(pid));
      if (found != pids_by_namespace.end()) found->second.push_back(pid);
    }
  }
  double sampled_cpu = 0;
  for (const auto& id : due) {
    const pid_t init = jobs.at(id);
    Totals totals;
    if (children_files_) {
      totals = Measure(init, nullptr);
    } else if (auto ns = namespace_of_job.find(id); ns != namespace_of_job.end()) {
      totals = Measure(init, &pids_by_namespace[ns->second]);
    }
    State& state = jobs_[id];
    const double seconds = std::chrono::duration<double>(now - state.at).count();
    const bool have_previous = state.at != std::chrono::steady_clock::time_point{} && seconds > 0;
    // A process that ended before its parent reaped it takes its counters with it: a drop is
    // not negative use.
    const double cpu_used = have_previous && totals.cpu_seconds >= state.last.cpu_seconds
                                ? totals.cpu_seconds - state.last.cpu_seconds
                                : 0;
    sampled_cpu += cpu_used;
    state.usage.cpu_share = have_previous ? cpu_used / seconds : 0;
    state.usage.io_bytes_per_s =
        have_previous && totals.io_bytes >= state.last.io_bytes
            ? static_cast<double>(totals.io_bytes - state.last.io_bytes) / seconds
            : 0;
    state.usage.cpu_seconds = totals.cpu_seconds;
    state.usage.rss_bytes = totals.rss_bytes;
    state.usage.processes = totals.processes;
    state.usage.sampled_at = now;
    state.runnable.push_back(totals.runnable);
    while (state.runnable.size() > kRunnableWindow) state.runnable.pop_front();
    double sum = 0;
    for (int count : state.runnable) sum += count;
    state.usage.runnable = sum / static_cast<double>(state.runnable.size());
    state.last = totals;
    state.at = now;
    schedule_.OnSampled(id, state.usage.cpu_share, totals.runnable, now);
  }
  // Forget the jobs that are gone.
  const auto running = [&](const std::string& id) { return jobs.count(id) != 0; };
  std::erase_if(jobs_, [&](const auto& entry) { return !running(entry.first); });
  schedule_.KeepOnly(running);
  if (node_cpu_seconds) schedule_.OnNodeCpu(*node_cpu_seconds, sampled_cpu, now);
  return due;
}

std::optional<JobUsage> JobUsageSampler::Get(const std::string& job) const {
  const auto found = jobs_.find(job);
  if (found == jobs_.end()) return std::nullopt;
  return found->second.usage;
}

}  // namespace tern::agent
