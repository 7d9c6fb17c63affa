#include "harness.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

namespace tern::it {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<char*> CArgv(const std::vector<std::string>& argv) {
  std::vector<char*> out;
  out.reserve(argv.size() + 1);
  for (const auto& a : argv) out.push_back(const_cast<char*>(a.c_str()));
  out.push_back(nullptr);
  return out;
}

std::string Join(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) {
    if (!s.empty()) s += ' ';
    if (a.find_first_of(" \t'\"$;&|") != std::string::npos) {
      s += "'" + a + "'";
    } else {
      s += a;
    }
  }
  return s;
}

}  // namespace

std::string Result::Describe() const {
  std::ostringstream os;
  os << "`" << command << "` -> ";
  if (timed_out) {
    os << "timed out";
  } else {
    os << "exit " << exit_code;
  }
  os << "\n  stdout: " << (out.empty() ? "(empty)" : out)
     << "\n  stderr: " << (err.empty() ? "(empty)" : err);
  return os.str();
}

Result RunCmd(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
              const std::map<std::string, std::string>& extra_env) {
  Result result;
  result.command = Join(argv);
  int out_pipe[2];
  int err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) {
    result.err = std::string("pipe: ") + std::strerror(errno);
    return result;
  }
  auto args = CArgv(argv);
  const pid_t pid = fork();
  if (pid < 0) {
    result.err = std::string("fork: ") + std::strerror(errno);
    return result;
  }
  if (pid == 0) {
    setpgid(0, 0);
    const int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    for (const auto& [key, value] : extra_env) setenv(key.c_str(), value.c_str(), 1);
    execvp(args[0], args.data());
    dprintf(2, "exec %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  const auto deadline = Clock::now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  char buf[65536];
  while (open_fds > 0) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      kill(-pid, SIGKILL);
      kill(pid, SIGKILL);
      break;
    }
    const int n = poll(fds, 2, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t got = read(fds[i].fd, buf, sizeof buf);
      if (got > 0) {
        (i == 0 ? result.out : result.err).append(buf, static_cast<size_t>(got));
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& fd : fds) {
    if (fd.fd >= 0) close(fd.fd);
  }
  int status = 0;
  // The pipes may close before the process ends (or it may leave children holding them).
  while (true) {
    const pid_t w = waitpid(pid, &status, result.timed_out ? 0 : WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) break;
    if (w == 0) {
      if (Clock::now() > deadline) {
        result.timed_out = true;
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
  }
  if (!result.timed_out && WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  return result;
}

pid_t Spawn(const std::vector<std::string>& argv, const std::string& log_path) {
  auto args = CArgv(argv);
  const pid_t pid = fork();
  if (pid != 0) return pid;
  setsid();
  const int devnull = open("/dev/null", O_RDONLY);
  const int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  dup2(devnull, 0);
  dup2(log, 1);
  dup2(log, 2);
  execvp(args[0], args.data());
  dprintf(2, "exec %s: %s\n", args[0], std::strerror(errno));
  _exit(127);
}

bool StopAndReap(pid_t pid, int sig, std::chrono::milliseconds timeout) {
  kill(pid, sig);
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    int status = 0;
    const pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid || (w < 0 && errno == ECHILD)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  return false;
}

std::string ItClusterName() {
  const char* name = std::getenv("TERN_IT_CLUSTER");
  return name != nullptr && *name != 0 ? name : "ternit";
}

bool WaitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout,
             std::chrono::milliseconds every) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (pred()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(every);
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

std::string Trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

bool ProcessAlive(pid_t pid) {
  if (pid <= 0 || kill(pid, 0) != 0) return false;
  // a zombie is not alive
  const std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  const auto close_paren = stat.rfind(')');
  return close_paren != std::string::npos && close_paren + 2 < stat.size() &&
         stat[close_paren + 2] != 'Z';
}

std::string Tail(const std::string& text, size_t lines) {
  auto all = Lines(text);
  const size_t from = all.size() > lines ? all.size() - lines : 0;
  std::string out;
  for (size_t i = from; i < all.size(); ++i) out += "    " + all[i] + "\n";
  return out;
}

std::string UpCluster(const std::vector<std::string>& extra) {
  for (const char* binary : {"ternd", "tern"}) {
    if (access((kBinDir + "/" + binary).c_str(), X_OK) != 0) {
      return kBinDir + "/" + binary + " is missing: build the project first";
    }
  }
  setenv("TERN_CLUSTER_NAME", kClusterName.c_str(), 1);
  setenv("TERN_BIN_DIR", kBinDir.c_str(), 1);
  if (getenv("TERN_LOG_LEVEL") == nullptr) setenv("TERN_LOG_LEVEL", "debug", 1);
  std::vector<std::string> argv = {Script(), "up", "3", "--force"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto r = RunCmd(argv, std::chrono::seconds(180));
  if (r.exit_code == 0) return "";
  std::string error = "`tern-cluster up 3` failed: " + r.Describe();
  for (const auto& node : kNodes) {
    error += "\n  log of " + node + ":\n" +
             Tail(ReadFile(kClusterBase + "/failed-logs/" + node + ".log"), 40);
  }
  return error;
}

}  // namespace tern::it
