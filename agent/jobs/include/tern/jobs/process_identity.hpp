// ProcessIdentity: a process named so that a reused pid does not pass for it.
//
// A pid alone names whatever process holds that number now: after a reboot, or once the process
// ended and was reaped, it may be anyone's. A ProcessIdentity adds the process's start time
// (field 22 of /proc/PID/stat, clock ticks since boot) and the boot's id
// (/proc/sys/kernel/random/boot_id), both read when it is recorded; it matches a live process
// only if all three agree. OpenPidfd checks the identity again after pidfd_open, so the pidfd it
// returns is the recorded process (a pid reused between the check and the open is caught);
// signals sent through that pidfd cannot reach another process.
//
// Thread-safety: stateless functions and plain values; reentrant.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tern/unique_fd.hpp>

namespace tern::jobs {

struct ProcessIdentity {
  pid_t pid = 0;
  std::uint64_t start_ticks = 0;
  std::string boot_id;

  bool operator==(const ProcessIdentity&) const = default;
};

// This boot's id; "" if the kernel does not say.
std::string CurrentBootId();

// The identity of the live process `pid`; nullopt if there is none.
std::optional<ProcessIdentity> IdentifyProcess(pid_t pid);

// True while the very process `identity` names is alive (a zombie counts as alive).
bool IsSameProcess(const ProcessIdentity& identity);

// A pidfd for the process `identity` names; invalid (with no error) when that process is gone
// or its pid now belongs to another process.
UniqueFd OpenPidfd(const ProcessIdentity& identity);

// Sends `signal` through `pidfd`; false if the process is gone.
bool SignalPidfd(int pidfd, int signal);

// One line of JSON ({"pid":..,"start_ticks":..,"boot_id":".."}) and back; nullopt for anything
// that is not exactly that shape.
std::string ToJsonText(const ProcessIdentity& identity);
std::optional<ProcessIdentity> ParseProcessIdentity(const std::string& text);

}  // namespace tern::jobs
