// The tern commands, each a function from parsed options to an exit code
// (0 ok, 1 error — one line on `err` says why; usage errors (2) are caught by the parser).
//
// Thread-safety: each call uses its own Context.
#pragma once

#include <functional>
#include <iosfwd>
#include <map>
#include <string>
#include <vector>

#include "tern/cli/agent_client.hpp"

namespace tern::cli {

enum class Output { kTable, kJson };

struct Context {
  AgentClient client;
  std::ostream& out;
  std::ostream& err;
};

struct SubmitOptions {
  std::string node;
  std::string name;
  std::string user;
  std::vector<std::string> env;  // K=V overrides
  bool quiet = false;
  std::vector<std::string> argv;
};

// The JSON body `tern submit` sends: argv, the caller's environment overridden by --env, and
// the optional fields. Returns an error for a malformed --env.
Expected<std::string> SubmitBody(const SubmitOptions& options,
                                 const std::map<std::string, std::string>& environment);

int Submit(Context& context, const SubmitOptions& options);
int Ps(Context& context, bool all, Output output);
int Status(Context& context, const std::string& id, Output output);
int Logs(Context& context, const std::string& id, bool follow, const std::string& stream);
int Cancel(Context& context, const std::vector<std::string>& ids);
int Nodes(Context& context, Output output);
int Migrate(Context& context, const std::string& id, const std::string& node,
            const std::string& mode, bool dry_run, Output output);
int Version(Context& context);
// Follows the agent's event stream (jobs, migrations, nodes) until interrupted.
int Events(Context& context, Output output);

// Runs `render` every `interval_seconds` until interrupted: on a terminal it clears and redraws
// like watch(1); otherwise it prints each snapshot followed by a blank line (or, for JSON, one
// document per line).
int Watch(Context& context, double interval_seconds, bool json,
          const std::function<int(Context&)>& render);

std::string EncodePathSegment(const std::string& text);

}  // namespace tern::cli
