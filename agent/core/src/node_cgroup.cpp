#include "node_cgroup.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace tern::agent {
namespace {

std::string_view Trim(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) {
    text.remove_prefix(1);
  }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) {
    text.remove_suffix(1);
  }
  return text;
}

std::vector<std::string> Split(std::string_view text, char separator) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (start <= text.size()) {
    const auto end = text.find(separator, start);
    parts.emplace_back(text.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return parts;
}

template <typename T>
std::optional<T> Number(std::string_view text) {
  T value{};
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

std::string ReadSmallFile(const std::string& path) {
  std::ifstream file(path);
  std::string text;
  std::getline(file, text, '\0');
  return text;
}

std::string Quote(std::string_view text) {
  std::string shown(text.substr(0, 40));
  return "'" + shown + (text.size() > 40 ? "...'" : "'");
}

std::string JoinPath(std::string_view base, std::string_view name) {
  std::string joined(base);
  while (!joined.empty() && joined.back() == '/') joined.pop_back();
  if (!name.empty() && name.front() != '/') joined += '/';
  joined += name;
  return joined.empty() ? "/" : joined;
}

}  // namespace

std::vector<CgroupMount> ParseCgroupMounts(std::string_view mounts) {
  std::vector<CgroupMount> found;
  std::istringstream lines{std::string(mounts)};
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string device, path, type, options;
    if (!(fields >> device >> path >> type >> options)) continue;
    if (type != "cgroup" && type != "cgroup2") continue;
    CgroupMount mount;
    mount.path = path;
    mount.v2 = type == "cgroup2";
    if (!mount.v2) {
      for (auto& option : Split(options, ',')) {
        // Mount flags are not controllers; every controller option is a bare lower-case word.
        static const char* const kFlags[] = {"rw",      "ro",     "nosuid",
                                             "nodev",   "noexec", "relatime",
                                             "noatime", "xattr",  "clone_children"};
        if (std::find(std::begin(kFlags), std::end(kFlags), option) != std::end(kFlags)) continue;
        if (option.rfind("name=", 0) == 0) {
          mount.name = option.substr(5);
          continue;
        }
        if (option.find('=') != std::string::npos) continue;
        mount.controllers.push_back(option);
      }
    }
    found.push_back(std::move(mount));
  }
  return found;
}

std::map<std::string, std::string> ParseProcCgroup(std::string_view text) {
  std::map<std::string, std::string> paths;
  std::istringstream lines{std::string(text)};
  std::string line;
  while (std::getline(lines, line)) {
    // "ID:CONTROLLERS:PATH"; the path may itself hold ':'.
    const auto first = line.find(':');
    if (first == std::string::npos) continue;
    const auto second = line.find(':', first + 1);
    if (second == std::string::npos) continue;
    paths[line.substr(first + 1, second - first - 1)] = line.substr(second + 1);
  }
  return paths;
}

Expected<double> ParseCpuMax(std::string_view text) {
  const auto parts = Split(Trim(text), ' ');
  if (parts.size() != 2) return Fail("cpu.max is not 'QUOTA PERIOD': " + Quote(text));
  const auto period = Number<std::uint64_t>(parts[1]);
  if (!period || *period == 0) return Fail("cpu.max has a bad period: " + Quote(text));
  if (parts[0] == "max") return 0.0;
  const auto quota = Number<std::uint64_t>(parts[0]);
  if (!quota) return Fail("cpu.max has a bad quota: " + Quote(text));
  return static_cast<double>(*quota) / static_cast<double>(*period);
}

Expected<double> ParseCfsQuota(std::string_view quota_text, std::string_view period_text) {
  const auto quota = Number<std::int64_t>(Trim(quota_text));
  const auto period = Number<std::int64_t>(Trim(period_text));
  if (!quota || !period || *period <= 0) {
    return Fail("cpu.cfs_quota_us/cpu.cfs_period_us are not numbers: " + Quote(quota_text) + " " +
                Quote(period_text));
  }
  if (*quota < 0) return 0.0;
  return static_cast<double>(*quota) / static_cast<double>(*period);
}

Expected<std::uint64_t> ParseMemoryLimit(std::string_view text) {
  const auto trimmed = Trim(text);
  if (trimmed == "max") return std::uint64_t{0};
  const auto value = Number<std::uint64_t>(trimmed);
  if (!value) return Fail("memory limit is not a number: " + Quote(text));
  // v1 writes "no limit" as LONG_MAX rounded down to a page.
  if (*value >= (std::uint64_t{1} << 62)) return std::uint64_t{0};
  return *value;
}

Expected<std::uint64_t> ParseCount(std::string_view text) {
  const auto value = Number<std::uint64_t>(Trim(text));
  if (!value) return Fail("not a number: " + Quote(text));
  return *value;
}

Expected<double> ParseCpuStatUsage(std::string_view text) {
  std::istringstream lines{std::string(text)};
  std::string key;
  std::string value;
  while (lines >> key >> value) {
    if (key != "usage_usec") continue;
    const auto usec = Number<std::uint64_t>(value);
    if (!usec) break;
    return static_cast<double>(*usec) / 1e6;
  }
  return Fail("cpu.stat has no usage_usec");
}

Expected<NodeCgroup> NodeCgroup::Open(const std::string& name, bool create) {
  return Open(name, ReadSmallFile("/proc/self/mounts"), ReadSmallFile("/proc/self/cgroup"), create);
}

Expected<NodeCgroup> NodeCgroup::Open(const std::string& name, std::string_view mounts_text,
                                      std::string_view self_cgroup, bool create) {
  if (name.empty()) return Fail("no cgroup named");
  if (name.find("..") != std::string::npos) return Fail("cgroup '" + name + "' contains '..'");
  // A relative cgroup would be created inside the agent's own (its service's), which is what
  // creating one is meant to leave.
  if (create && name.front() != '/') {
    return Fail("cgroup '" + name + "' must start with '/' to be created outside the agent's");
  }
  const auto mounts = ParseCgroupMounts(mounts_text);
  const auto own = ParseProcCgroup(self_cgroup);
  NodeCgroup cgroup;
  cgroup.name_ = name;
  cgroup.created_ = create;
  auto v1_mount = [&](const std::string& controller) -> const CgroupMount* {
    for (const auto& mount : mounts) {
      if (mount.v2) continue;
      const auto& list = mount.controllers;
      if (std::find(list.begin(), list.end(), controller) != list.end()) return &mount;
    }
    return nullptr;
  };
  // The hierarchy's key in /proc/PID/cgroup ("cpu,cpuacct") and this process's path there.
  auto own_path =
      [&](const std::string& controller) -> std::optional<std::pair<std::string, std::string>> {
    for (const auto& [controllers, path] : own) {
      const auto list = Split(controllers, ',');
      if (std::find(list.begin(), list.end(), controller) != list.end()) {
        return std::make_pair(controllers, path);
      }
    }
    return std::nullopt;
  };
  // `controller`: a v1 controller hierarchy, which a created cgroup may leave as it is.
  auto add = [&](const std::string& controllers, const std::string& mount_path,
                 const std::string& base, bool controller = false) -> Expected<void> {
    Dir dir;
    dir.controllers = controllers;
    dir.path = name.front() == '/' ? name : JoinPath(base, name);
    dir.dir = JoinPath(mount_path, dir.path);
    for (const auto& known : cgroup.dirs_) {
      if (known.dir == dir.dir) return {};  // co-mounted controllers share one directory
    }
    std::error_code error;
    if (create && !std::filesystem::is_directory(dir.dir, error)) {
      std::filesystem::create_directories(dir.dir, error);
      if (error && controller && !base.empty()) {
        dir.placed = false;
        dir.path = base;
        dir.dir = JoinPath(mount_path, base);
        cgroup.dirs_.push_back(std::move(dir));
        return {};
      }
      if (error) return Fail("cannot create cgroup " + dir.dir + ": " + error.message());
    }
    if (!std::filesystem::is_directory(dir.dir, error)) {
      return Fail("cgroup " + dir.dir + " does not exist (create it, or fix [node] cgroup)");
    }
    cgroup.dirs_.push_back(std::move(dir));
    return {};
  };
  if (v1_mount("cpu") != nullptr) {
    cgroup.version_ = 1;
    for (const std::string controller : {"cpu", "cpuacct", "memory"}) {
      const CgroupMount* mount = v1_mount(controller);
      if (mount == nullptr) {
        if (controller == "cpuacct") continue;  // only CPU usage is lost
        return Fail("cgroup v1 has no " + controller + " hierarchy mounted");
      }
      const auto base = own_path(controller);
      if (!base) return Fail("this process is in no " + controller + " cgroup (/proc/self/cgroup)");
      if (auto added = add(base->first, mount->path, base->second, true); !added) {
        return Unexpected<Error>{added.error()};
      }
    }
    if (!create) return cgroup;
    // Out of the service in the hierarchies systemd kills (name=systemd, or hybrid cgroup2) and
    // limits tasks by (pids, where the agent's own path is the fallback of a read-only mount).
    for (const auto& mount : mounts) {
      std::string key;
      std::string base;
      if (mount.v2) {
        key = "";
      } else if (mount.name == "systemd") {
        key = "name=systemd";
      } else if (std::find(mount.controllers.begin(), mount.controllers.end(), "pids") !=
                 mount.controllers.end()) {
        const auto own_pids = own_path("pids");
        if (!own_pids) continue;
        key = own_pids->first;
        base = own_pids->second;
      } else {
        continue;
      }
      if (auto added = add(key, mount.path, base, !base.empty()); !added) {
        return Unexpected<Error>{added.error()};
      }
    }
    return cgroup;
  }
  for (const auto& mount : mounts) {
    if (!mount.v2) continue;
    cgroup.version_ = 2;
    const auto base = own.find("");
    if (auto added = add("", mount.path, base == own.end() ? "/" : base->second); !added) {
      return Unexpected<Error>{added.error()};
    }
    return cgroup;
  }
  return Fail("no cgroup hierarchy with a cpu controller is mounted");
}

const NodeCgroup::Dir* NodeCgroup::Find(std::string_view controller) const {
  for (const auto& dir : dirs_) {
    if (!dir.placed) continue;
    if (version_ == 2) return &dir;
    const auto list = Split(dir.controllers, ',');
    if (std::find(list.begin(), list.end(), controller) != list.end()) return &dir;
  }
  return nullptr;
}

double NodeCgroup::CpuQuota() const {
  const Dir* dir = Find("cpu");
  if (dir == nullptr) return 0;
  Expected<double> quota = version_ == 2
                               ? ParseCpuMax(ReadSmallFile(dir->dir + "/cpu.max"))
                               : ParseCfsQuota(ReadSmallFile(dir->dir + "/cpu.cfs_quota_us"),
                                               ReadSmallFile(dir->dir + "/cpu.cfs_period_us"));
  return quota ? *quota : 0;
}

std::optional<double> NodeCgroup::CpuSeconds() const {
  if (version_ == 2) {
    const auto usage = ParseCpuStatUsage(ReadSmallFile(dirs_.front().dir + "/cpu.stat"));
    if (usage) return *usage;
    return std::nullopt;
  }
  // cpuacct may share the cpu hierarchy's directory.
  for (const auto& dir : dirs_) {
    if (!dir.placed) continue;
    const auto nanoseconds = ParseCount(ReadSmallFile(dir.dir + "/cpuacct.usage"));
    if (nanoseconds) return static_cast<double>(*nanoseconds) / 1e9;
  }
  return std::nullopt;
}

std::uint64_t NodeCgroup::MemoryLimit() const {
  const Dir* dir = Find("memory");
  if (dir == nullptr) return 0;
  const auto limit = ParseMemoryLimit(
      ReadSmallFile(dir->dir + (version_ == 2 ? "/memory.max" : "/memory.limit_in_bytes")));
  return limit ? *limit : 0;
}

std::optional<std::uint64_t> NodeCgroup::MemoryUsage() const {
  const Dir* dir = Find("memory");
  if (dir == nullptr) return std::nullopt;
  const auto usage = ParseCount(
      ReadSmallFile(dir->dir + (version_ == 2 ? "/memory.current" : "/memory.usage_in_bytes")));
  if (!usage) return std::nullopt;
  return *usage;
}

std::vector<std::string> NodeCgroup::ProcsFiles() const {
  std::vector<std::string> files;
  for (const auto& dir : dirs_) {
    if (dir.placed) files.push_back(dir.dir + "/cgroup.procs");
  }
  return files;
}

Expected<void> NodeCgroup::Place(pid_t pid) const {
  const std::string text = std::to_string(pid);
  for (const auto& file : ProcsFiles()) {
    const int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return Fail("cannot open " + file + ": " + std::strerror(errno));
    const ssize_t wrote = ::write(fd, text.data(), text.size());
    const int error = errno;
    ::close(fd);
    if (wrote != static_cast<ssize_t>(text.size())) {
      return Fail("cannot move pid " + text + " into " + file + ": " + std::strerror(error));
    }
  }
  return {};
}

bool NodeCgroup::Holds(pid_t pid) const {
  const auto paths = ParseProcCgroup(ReadSmallFile("/proc/" + std::to_string(pid) + "/cgroup"));
  const Dir* dir = Find("cpu");
  if (dir == nullptr) return false;
  for (const auto& [controllers, path] : paths) {
    if (version_ == 2 ? controllers.empty() : controllers == dir->controllers) {
      return path == dir->path;
    }
  }
  return false;
}

std::vector<std::string> NodeCgroup::CriuRoots() const {
  std::vector<std::string> roots;
  for (const auto& dir : dirs_) {
    if (version_ == 2) {
      roots.push_back(dir.path);
    } else {
      // One root per hierarchy we hold, named as CRIU names it: the first controller
      // ("cpu"), "name=systemd", and "" for a hybrid system's cgroup2. Not a default root
      // for all: it would also move the job in hierarchies no one manages here (freezer,
      // devices, cpuset), where CRIU then makes the directory itself (a cpuset copying the
      // parent's cpu_exclusive, which fails every later restore into a sibling).
      roots.push_back(Split(dir.controllers, ',').front() + ":" + dir.path);
    }
  }
  return roots;
}

std::string NodeCgroup::Describe() const {
  std::string text = "v" + std::to_string(version_);
  for (const auto& dir : dirs_) {
    const std::string key =
        dir.controllers.empty() ? (version_ == 1 ? "cgroup2:" : "") : dir.controllers + ":";
    text += " " + key + (dir.placed ? dir.path : "(left at " + dir.path + ")");
  }
  return text;
}

}  // namespace tern::agent
