#include "tern/cli/doctor.hpp"

#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <regex>

#include "tern/cli/format.hpp"

namespace tern::cli {
namespace {

struct CommandResult {
  int exit_code = -1;
  std::string output;
};

std::string Quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

CommandResult Run(const std::string& command) {
  CommandResult result;
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(
      ::popen(("timeout 20 " + command + " 2>&1 </dev/null").c_str(), "r"), ::pclose);
  if (!pipe) return result;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe.get())) > 0)
    result.output.append(buffer, n);
  const int status = ::pclose(pipe.release());
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string FirstLineWith(const std::string& text, const std::string& needle) {
  std::istringstream lines(text);
  std::string line, last;
  while (std::getline(lines, line)) {
    if (line.find(needle) != std::string::npos) return line;
    if (!line.empty()) last = line;
  }
  return last;
}

}  // namespace

std::pair<int, int> ParseCriuVersion(const std::string& text) {
  std::smatch match;
  if (std::regex_search(text, match, std::regex(R"(Version:\s*(\d+)\.(\d+))"))) {
    return {std::stoi(match[1]), std::stoi(match[2])};
  }
  return {0, 0};
}

std::string FindCriu() {
  if (const char* env = std::getenv("TERN_CRIU"); env != nullptr && *env != '\0') return env;
  if (::access("/opt/tern/criu/bin/criu", X_OK) == 0) return "/opt/tern/criu/bin/criu";
  auto found = Run("sh -c 'command -v criu'");
  if (found.exit_code == 0 && !found.output.empty()) {
    return found.output.substr(0, found.output.find('\n'));
  }
  return "";
}

std::vector<Check> RunDoctor(const AgentClient& client) {
  std::vector<Check> checks;
  const bool root = ::geteuid() == 0;
  checks.push_back({"root", root ? "ok" : "warn",
                    root ? "running as root" : "not root: CRIU and namespace checks may fail",
                    root ? "" : "run `sudo tern doctor` for the full picture"});

  utsname uts{};
  ::uname(&uts);
  checks.push_back({"kernel", "ok", std::string(uts.sysname) + " " + uts.release, ""});

  const std::string criu = FindCriu();
  const std::string install_fix =
      "/usr/lib/tern/install-criu (installed by the .deb) or deploy/install-deps installs a "
      "private CRIU 4.2 into /opt/tern/criu (or set TERN_CRIU)";
  if (criu.empty()) {
    checks.push_back(
        {"criu", "fail", "no criu found ($TERN_CRIU, /opt/tern/criu/bin/criu, PATH)", install_fix});
  } else {
    auto version_output = Run(Quote(criu) + " --version");
    auto [major, minor] = ParseCriuVersion(version_output.output);
    const bool new_enough = major > 4 || (major == 4 && minor >= 2);
    checks.push_back(
        {"criu version", new_enough ? "ok" : "fail",
         criu + ": " + std::to_string(major) + "." + std::to_string(minor),
         new_enough ? ""
                    : "CRIU < 4.2 cannot dump TCP sockets on kernels >= 6.16; " + install_fix});
    auto check = Run(Quote(criu) + " check");
    const bool good = check.output.find("Looks good") != std::string::npos;
    std::string detail = good ? "criu check: Looks good" : FirstLineWith(check.output, "Error");
    std::string fix;
    if (!good) {
      fix = check.output.find("vDSO") != std::string::npos
                ? "Debian 12's criu 3.17 fails on kernels >= 6.13 (\"Unexpected rt vDSO area "
                  "bounds\"): " +
                      install_fix
                : install_fix + "; run `" + criu + " check` as root for details";
    }
    checks.push_back({"criu check", good ? "ok" : "fail", detail, fix});
    auto dirty = Run(Quote(criu) + " check --feature mem_dirty_track");
    checks.push_back({"iterative pre-dump", dirty.exit_code == 0 ? "ok" : "warn",
                      dirty.exit_code == 0 ? "the kernel tracks dirty memory"
                                           : "no soft-dirty tracking: pre-copy uses one dump",
                      dirty.exit_code == 0 ? "" : "nothing to do; migrations still work"});
    auto uffd = Run(Quote(criu) + " check --feature uffd-noncoop");
    long pipe_max = 0;
    std::ifstream("/proc/sys/fs/pipe-max-size") >> pipe_max;
    const bool lazy_ok = uffd.exit_code == 0 && pipe_max >= 4194304;
    checks.push_back(
        {"lazy pages (post-copy)", lazy_ok ? "ok" : "warn",
         "userfaultfd: " + std::string(uffd.exit_code == 0 ? "yes" : "no") +
             ", fs.pipe-max-size=" + std::to_string(pipe_max),
         lazy_ok ? "" : "sysctl -w fs.pipe-max-size=4194304 (post-copy migration needs it)"});
  }

  auto pidns = Run("unshare --pid --fork true");
  checks.push_back({"pid namespaces", pidns.exit_code == 0 ? "ok" : "fail",
                    pidns.exit_code == 0 ? "a new PID namespace can be made"
                                         : FirstLineWith(pidns.output, "unshare"),
                    pidns.exit_code == 0 ? "" : "jobs need CLONE_NEWPID: run ternd as root"});

  const long pidfd = ::syscall(SYS_pidfd_open, ::getpid(), 0);
  const int pidfd_errno = errno;
  if (pidfd >= 0) ::close(static_cast<int>(pidfd));
  checks.push_back(
      {"pidfd", pidfd >= 0 ? "ok" : "fail",
       pidfd >= 0 ? "pidfd_open works" : std::string("pidfd_open: ") + std::strerror(pidfd_errno),
       pidfd >= 0 ? "" : "tern needs Linux >= 5.3"});

  namespace fs = std::filesystem;
  std::string cgroup_detail;
  std::string cgroup_status = "ok";
  if (fs::exists("/sys/fs/cgroup/cgroup.controllers")) {
    std::string controllers;
    std::getline(std::ifstream("/sys/fs/cgroup/cgroup.controllers"), controllers);
    cgroup_detail = "cgroup v2 (" + controllers + ")";
    if (controllers.find("cpu") == std::string::npos) cgroup_status = "warn";
  } else if (fs::exists("/sys/fs/cgroup/cpu")) {
    cgroup_detail = "cgroup v1 with the cpu controller";
  } else {
    cgroup_detail = "no cpu cgroup controller found";
    cgroup_status = "warn";
  }
  checks.push_back(
      {"cgroups", cgroup_status, cgroup_detail,
       cgroup_status == "ok" ? "" : "CPU caps for local-cluster nodes are unavailable"});

  auto ip = Run("ip netns list");
  checks.push_back({"network namespaces", ip.exit_code == 0 ? "ok" : "warn",
                    ip.exit_code == 0 ? "ip netns works" : FirstLineWith(ip.output, ""),
                    ip.exit_code == 0 ? ""
                                      : "install iproute2 (deploy/install-deps); the local "
                                        "cluster needs it"});

  auto info = client.Request("GET", "/v1/info");
  if (!info) {
    checks.push_back({"agent", "fail", info.error().message,
                      "start ternd (or `deploy/tern-cluster up 3`), or pass --node-socket"});
  } else if (!info->ok()) {
    checks.push_back({"agent", "fail", info->ErrorMessage(), "see the agent's log"});
  } else {
    auto body = nlohmann::json::parse(info->body, nullptr, false);
    checks.push_back({"agent", "ok",
                      "ternd " + body.value("version", "?") + " on node " +
                          body.value("node", "?") + " at " + client.socket_path(),
                      ""});
    // The agent's own view: taskstats and cgroups depend on its namespaces, not the CLI's.
    const auto measurement = body.is_object() ? body.value("measurement", nlohmann::json::object())
                                              : nlohmann::json::object();
    if (measurement.is_object() && measurement.contains("taskstats")) {
      const auto& taskstats = measurement["taskstats"];
      const bool ok = taskstats.is_object() && taskstats.value("ok", false);
      checks.push_back({"taskstats", ok ? "ok" : "warn",
                        taskstats.is_object() ? taskstats.value("detail", "?") : "?",
                        ok ? ""
                           : "per-job CPU and I/O come from /proc instead (same figures, "
                             "coarser CPU time)"});
    }
    if (measurement.is_object() && measurement.contains("cgroup")) {
      const auto& cgroup = measurement["cgroup"];
      const bool ok = cgroup.is_object() && cgroup.value("ok", false);
      checks.push_back({"node cgroup", ok ? "ok" : "warn",
                        cgroup.is_object() ? cgroup.value("detail", "?") : "?",
                        ok ? ""
                           : "capacity is the CPU count and jobs are not capped; set "
                             "[node] cgroup to a cgroup with a CPU quota"});
    }
  }
  return checks;
}

int PrintDoctor(const std::vector<Check>& checks, bool json, std::ostream& out) {
  bool failed = false;
  for (const auto& check : checks) failed |= check.status == "fail";
  if (json) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& check : checks) {
      list.push_back({{"check", check.name},
                      {"status", check.status},
                      {"detail", check.detail},
                      {"fix", check.fix}});
    }
    out << list.dump(2) << "\n";
    return failed ? 1 : 0;
  }
  Table table({"CHECK", "STATUS", "DETAIL"});
  for (const auto& check : checks) table.Add({check.name, check.status, check.detail});
  out << table.Render();
  bool header = false;
  for (const auto& check : checks) {
    if (check.fix.empty()) continue;
    if (!header) out << "\nTo fix:\n";
    header = true;
    out << "  " << check.name << ": " << check.fix << "\n";
  }
  return failed ? 1 : 0;
}

}  // namespace tern::cli
