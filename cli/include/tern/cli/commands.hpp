// The tern commands, each a function from parsed options to an exit code
// (0 ok, 1 error — one line on `err` says why; usage errors (2) are caught by the parser).
//
// Thread-safety: each call uses its own Context.
#pragma once

#include <functional>
#include <iosfwd>
#include <map>
#include <nlohmann/json.hpp>
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
  bool pin = false;  // the balancer never moves the job
  bool net = false;  // its own network namespace and cluster-routable address
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
// `tern recover JOB --resume-here|--discard`: what to do with a blocked move's copy (root).
int Recover(Context& context, const std::string& id, bool resume_here);
int Version(Context& context);
// `tern pin` / `tern unpin`: sets or clears the pinned flag of each job.
int Pin(Context& context, const std::vector<std::string>& ids, bool pin);
// `tern drain` / `tern undrain`: a node moves its jobs away and takes no new ones (or again does).
int Drain(Context& context, const std::string& node, bool drain);

struct EventsOptions {
  bool follow = false;     // keep printing new events until interrupted
  bool all_nodes = false;  // with follow: every node's (polled), not only this node's stream
  std::string type;        // only events of this type (job, migration, node, balancer)
  std::size_t limit = 1000;
  Output output = Output::kTable;
};
// Recent events of the whole cluster merged by time, or (follow) this node's or every node's.
int Events(Context& context, const EventsOptions& options);
// One event as `tern events` prints it: time, node, type and what happened.
std::string EventLine(const nlohmann::json& event);

// Runs `render` every `interval_seconds` until interrupted: on a terminal it clears and redraws
// like watch(1); otherwise it prints each snapshot followed by a blank line (or, for JSON, one
// document per line).
int Watch(Context& context, double interval_seconds, bool json,
          const std::function<int(Context&)>& render);

std::string EncodePathSegment(const std::string& text);

}  // namespace tern::cli
