#include "tern/migrate/preflight.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "tern/migrate/criu.hpp"

namespace tern::migrate {
namespace fs = std::filesystem;

OpenFileKind ClassifyOpenFile(const std::string& target, const std::string& job_dir) {
  if (target.rfind("socket:", 0) == 0) return OpenFileKind::kSocket;
  if (target.rfind("pipe:", 0) == 0 || target.rfind("anon_inode:", 0) == 0) {
    return OpenFileKind::kFine;
  }
  if (target.rfind("/dev/pts/", 0) == 0 || target.rfind("/dev/tty", 0) == 0 ||
      target == "/dev/console" || target == "/dev/ptmx") {
    return OpenFileKind::kTerminal;
  }
  static const std::set<std::string> harmless = {"/dev/null", "/dev/zero", "/dev/random",
                                                 "/dev/urandom", "/dev/full"};
  if (target.rfind("/dev/", 0) == 0) {
    return harmless.count(target) ? OpenFileKind::kFine : OpenFileKind::kDevice;
  }
  if (target.rfind(job_dir + "/", 0) == 0 || target == job_dir) return OpenFileKind::kInsideJob;
  if (!target.empty() && target[0] == '/') return OpenFileKind::kOutsideJob;
  return OpenFileKind::kFine;
}

std::string JobChannelSocket(pid_t init_pid) {
  std::error_code error;
  const std::string target =
      fs::read_symlink("/proc/" + std::to_string(init_pid) + "/fd/3", error).string();
  return !error && target.rfind("socket:[", 0) == 0 ? target : std::string();
}

std::string ExternalUnixSocket(const std::string& channel) {
  const auto open = channel.find('[');
  const auto close = channel.find(']');
  if (open == std::string::npos || close == std::string::npos) return "";
  return "unix[" + channel.substr(open + 1, close - open - 1) + "]";
}

JobScan ScanJob(pid_t init_pid, const std::string& job_dir, const std::set<std::string>& direct) {
  JobScan scan;
  scan.channel = JobChannelSocket(init_pid);
  std::set<std::string> seen;
  const long page = sysconf(_SC_PAGESIZE);
  for (pid_t pid : NamespacePids(init_pid)) {
    ++scan.processes;
    std::ifstream statm("/proc/" + std::to_string(pid) + "/statm");
    std::uint64_t size = 0, resident = 0;
    if (statm >> size >> resident) scan.rss_bytes += resident * static_cast<std::uint64_t>(page);
    std::error_code error;
    for (const auto& entry :
         fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", error)) {
      std::error_code link_error;
      const std::string target = fs::read_symlink(entry.path(), link_error).string();
      if (link_error) continue;
      const std::string where =
          "fd " + entry.path().filename().string() + " of pid " + std::to_string(pid);
      if (!scan.channel.empty() && target == scan.channel) continue;
      if (direct.contains(target)) {
        ++scan.direct_sockets;
        continue;
      }
      switch (ClassifyOpenFile(target, job_dir)) {
        case OpenFileKind::kTerminal:
          scan.blockers.push_back(where + " is a terminal (" + target +
                                  "); a terminal cannot follow the job");
          break;
        case OpenFileKind::kSocket:
          scan.blockers.push_back(where + " is a socket (" + target +
                                  "); its other end would stay behind");
          break;
        case OpenFileKind::kDevice:
          scan.blockers.push_back(where + " is the device " + target +
                                  ", which cannot follow the job");
          break;
        case OpenFileKind::kOutsideJob:
          if (seen.insert(target).second) {
            struct stat info {};
            if (::stat(target.c_str(), &info) == 0) {
              scan.outside.push_back({target, static_cast<std::uint64_t>(info.st_size),
                                      static_cast<std::int64_t>(info.st_mtime)});
            } else {
              scan.blockers.push_back(where + " is " + target + ", which no longer exists");
            }
          }
          break;
        default:
          break;
      }
    }
  }
  if (scan.processes == 0) scan.blockers.push_back("the job has no running process");
  return scan;
}

std::vector<std::string> CompareFiles(const std::vector<OutsideFile>& files,
                                      const std::string& node_name) {
  std::vector<std::string> problems;
  for (const auto& file : files) {
    struct stat info {};
    if (::stat(file.path.c_str(), &info) != 0) {
      problems.push_back("the job holds " + file.path + " open, and " + node_name +
                         " has no such file");
      continue;
    }
    if (static_cast<std::uint64_t>(info.st_size) != file.size ||
        static_cast<std::int64_t>(info.st_mtime) != file.mtime) {
      problems.push_back("the job holds " + file.path + " open, and " + node_name +
                         "'s copy differs (size " + std::to_string(info.st_size) + " vs " +
                         std::to_string(file.size) + ")");
    }
  }
  return problems;
}

}  // namespace tern::migrate
