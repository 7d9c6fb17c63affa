#include "tern/process_tree.hpp"

#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <tern/unique_fd.hpp>

namespace tern {
namespace {

std::string NamespaceOf(pid_t pid) {
  char target[64] = {};
  const std::string link = "/proc/" + std::to_string(pid) + "/ns/pid";
  const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
  return n > 0 ? std::string(target, static_cast<size_t>(n)) : "";
}

}  // namespace

std::vector<pid_t> NamespacePids(pid_t init_pid) {
  std::vector<pid_t> pids;
  const std::string ns = NamespaceOf(init_pid);
  if (ns.empty()) return pids;
  std::unique_ptr<DIR, int (*)(DIR*)> proc(::opendir("/proc"), ::closedir);
  if (!proc) return pids;
  while (dirent* entry = ::readdir(proc.get())) {
    char* end = nullptr;
    const long pid = std::strtol(entry->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    if (NamespaceOf(static_cast<pid_t>(pid)) == ns) pids.push_back(static_cast<pid_t>(pid));
  }
  return pids;
}

void ResumeTree(pid_t init_pid) {
  for (pid_t pid : NamespacePids(init_pid)) ::kill(pid, SIGCONT);
}

int EndTcpRepair(pid_t init_pid) {
  int ended = 0;
  for (pid_t pid : NamespacePids(init_pid)) {
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    if (!pidfd.valid()) continue;
    std::error_code error;
    for (const auto& entry :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", error)) {
      std::error_code link_error;
      const auto target = std::filesystem::read_symlink(entry.path(), link_error).string();
      if (link_error || target.rfind("socket:", 0) != 0) continue;
      const int number = std::atoi(entry.path().filename().c_str());
      UniqueFd socket(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), number, 0)));
      if (!socket.valid()) continue;
      int repair = 0;
      socklen_t length = sizeof repair;
      // Only TCP sockets answer TCP_REPAIR; every other socket refuses it and is left alone.
      if (::getsockopt(socket.get(), SOL_TCP, TCP_REPAIR, &repair, &length) != 0 || repair == 0) {
        continue;
      }
      const int off = TCP_REPAIR_OFF;
      if (::setsockopt(socket.get(), SOL_TCP, TCP_REPAIR, &off, sizeof off) == 0) ++ended;
    }
  }
  return ended;
}

}  // namespace tern
