// ServiceNotify: tells the service manager (systemd, Type=notify) how the agent is doing.
//
// Contract:
//  - Ready(status) sends READY=1 once the agent has adopted its jobs and listens on its API and
//    cluster sockets, so that `systemctl start ternd` returns when the node can be used.
//  - Stopping() sends STOPPING=1 when the agent begins to stop.
//  - Both do nothing without $NOTIFY_SOCKET (not started by systemd, or Type=simple): the agent
//    runs the same under any supervisor. A failure to send is logged, never fatal.
//
// Thread-safety: call from one thread (main). No state.
#pragma once

#include <string>

namespace tern::agent {

class ServiceNotify {
 public:
  static void Ready(const std::string& status);
  static void Stopping();
};

}  // namespace tern::agent
