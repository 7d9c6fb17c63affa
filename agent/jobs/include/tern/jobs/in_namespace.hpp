// InNetNamespace: runs a callable with its sockets made in a given network namespace.
//
// A Unix socket belongs to the network namespace it was made in, and CRIU finds a job's
// sockets (its IPC channel among them, dumped as an external socket) through sock_diag in the
// job's own namespace. So the agent makes a `--net` job's channel in that namespace: the
// callable runs on a fresh thread that entered `netns_fd` first, while the caller waits; the
// caller's thread never changes namespace. With netns_fd < 0 it runs on the caller's thread.
//
// Thread-safety: the caller blocks until the callable returns, so the callable runs alone with
// respect to the caller (an io_context thread may call this for state only it touches). If the
// namespace cannot be entered, `failed` is returned and the callable is not run.
#pragma once

#include <sched.h>

#include <thread>
#include <utility>

namespace tern::jobs {

template <typename F, typename R>
R InNetNamespace(int netns_fd, F&& work, R failed) {
  if (netns_fd < 0) return std::forward<F>(work)();
  R result = std::move(failed);
  std::thread([&] {
    if (::setns(netns_fd, CLONE_NEWNET) == 0) result = std::forward<F>(work)();
  }).join();
  return result;
}

}  // namespace tern::jobs
