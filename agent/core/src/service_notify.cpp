#include "tern/agent/service_notify.hpp"

#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <cstring>

namespace tern::agent {
namespace {

void Send(const std::string& state) {
  // unset_environment = 0: jobs do not inherit the agent's environment, and a re-exec'd agent
  // (none today) would need the socket again.
  const int sent = sd_notify(0, state.c_str());
  if (sent < 0) spdlog::warn("cannot tell systemd '{}': {}", state, std::strerror(-sent));
  if (sent > 0) spdlog::debug("told systemd: {}", state);
}

}  // namespace

void ServiceNotify::Ready(const std::string& status) { Send("READY=1\nSTATUS=" + status); }

void ServiceNotify::Stopping() { Send("STOPPING=1"); }

}  // namespace tern::agent
