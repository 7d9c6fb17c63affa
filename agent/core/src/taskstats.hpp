// Taskstats: the kernel's per-task accounting over generic netlink (TASKSTATS_CMD_GET), a
// reply per task in place of three /proc files per process.
//
// Contract: Open() resolves the TASKSTATS family and fails with one line when it cannot (no
// CONFIG_TASKSTATS, no CAP_NET_ADMIN, or — as in the local cluster's nodes — a network
// namespace other than the first: the family is not namespace-aware). Get() asks for one task
// (a thread id) and fails when the task is gone or the reply is malformed.
//
// Thread-safety: not thread-safe (one netlink socket); use from one thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <tern/expected.hpp>

struct nl_sock;

namespace tern::agent {

struct TaskUsage {
  std::uint64_t cpu_ns = 0;    // time on a CPU (ac_utime + ac_stime)
  std::uint64_t io_bytes = 0;  // read_char + write_char: bytes through read/write calls
  std::uint64_t hiwater_rss_bytes = 0;
};

class Taskstats {
 public:
  static Expected<Taskstats> Open();
  Expected<TaskUsage> Get(pid_t tid);
  std::optional<std::uint64_t> IoBytes(std::span<const pid_t> tids);

 private:
  struct SocketDeleter {
    void operator()(nl_sock* socket) const;
  };
  std::unique_ptr<nl_sock, SocketDeleter> socket_;
  // Sends one TASKSTATS_CMD_GET for `tid`.
  Expected<void> Send(pid_t tid);
  // Discards whatever answers wait in the socket.
  void Drain();
  int family_ = 0;
};

}  // namespace tern::agent
