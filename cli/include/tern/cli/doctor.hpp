// tern doctor: what tern needs on this machine, what it found, and how to fix what is missing.
//
// Each check runs locally (subprocesses with a 20 s limit, so doctor never hangs) and yields
// ok / warn / fail with a detail line and, when not ok, a fix.
//
// Thread-safety: RunDoctor is reentrant.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

#include "tern/cli/agent_client.hpp"

namespace tern::cli {

struct Check {
  std::string name;
  std::string status;  // "ok", "warn", "fail"
  std::string detail;
  std::string fix;
};

std::vector<Check> RunDoctor(const AgentClient& client);
// Prints the checks; returns 1 if any failed, else 0.
int PrintDoctor(const std::vector<Check>& checks, bool json, std::ostream& out);

// "criu" as tern finds it: $TERN_CRIU, /opt/tern/criu/bin/criu, criu on PATH; "" if none.
std::string FindCriu();
// Parses "Version: 4.2.1" (criu --version); {0,0} when absent.
std::pair<int, int> ParseCriuVersion(const std::string& text);

}  // namespace tern::cli
