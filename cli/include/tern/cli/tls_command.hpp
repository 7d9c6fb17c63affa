// `tern tls init` and `tern tls issue`: the cluster CA and node certificates (docs/security.md),
// made locally with OpenSSL; no agent is involved.
//
// Thread-safety: CLI set-up and one run from main(); not for concurrent use.
#pragma once

#include <CLI/CLI.hpp>
#include <iosfwd>
#include <string>
#include <vector>

namespace tern::cli {

struct TlsCommand {
  CLI::App* tls = nullptr;
  CLI::App* init = nullptr;
  CLI::App* issue = nullptr;
  std::string dir = "/etc/tern/tls";
  std::string out;
  std::string node;
  std::vector<std::string> ips;
  bool force = false;
};

// Adds `tls init` and `tls issue` to `app`; `command` must outlive the parse.
void AddTlsCommands(CLI::App& app, TlsCommand& command);
// Runs the one that was parsed; the exit code (0 done, 1 failed, with why on `err`).
int RunTlsCommand(const TlsCommand& command, std::ostream& out, std::ostream& err);

}  // namespace tern::cli
