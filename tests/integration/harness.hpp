// Small process and polling helpers for the integration tests.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace tern::it {

struct Result {
  int exit_code = -1;  // -1: killed by timeout or by a signal
  std::string out;
  std::string err;
  bool timed_out = false;
  // "argv[0] ... -> exit N; stdout: ...; stderr: ..." for failure messages
  std::string Describe() const;
  std::string command;
};

// Runs argv (PATH is searched), with stdin /dev/null, capturing stdout and stderr; kills the
// process group after `timeout`.
Result RunCmd(const std::vector<std::string>& argv,
              std::chrono::milliseconds timeout = std::chrono::seconds(30),
              const std::map<std::string, std::string>& extra_env = {});

// Starts argv in its own session in the background, stdin /dev/null, stdout+stderr appended to
// log_path. Returns the pid (the caller reaps it with Reap or it is reaped at exit).
pid_t Spawn(const std::vector<std::string>& argv, const std::string& log_path);
// Sends sig to pid and waits up to timeout for it to end; true if it ended.
bool StopAndReap(pid_t pid, int sig, std::chrono::milliseconds timeout);

// Polls pred every `every` until it returns true or `timeout` passes; returns its last answer.
bool WaitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout,
             std::chrono::milliseconds every = std::chrono::milliseconds(200));

// The integration cluster's name: $TERN_IT_CLUSTER, else "ternit" (so that two build trees can
// run their integration tests side by side).
std::string ItClusterName();

// The suite's 3-node local cluster (deploy/tern-cluster, named ItClusterName()) and where its
// files are; every test file of the binary uses the same one.
inline const std::string kSourceDir = TERN_SOURCE_DIR;
inline const std::string kBinDir = TERN_BUILD_BIN_DIR;
inline const std::string kClusterName = ItClusterName();
inline const std::string kClusterBase = "/var/lib/" + kClusterName + "-cluster";
inline const std::vector<std::string> kNodes = {"node1", "node2", "node3"};
inline std::string Script() { return kSourceDir + "/deploy/tern-cluster"; }
inline std::string NodeDir(const std::string& node) { return kClusterBase + "/" + node; }
inline std::string Config(const std::string& node) { return NodeDir(node) + "/ternd.toml"; }
inline std::string Socket(const std::string& node) { return NodeDir(node) + "/run/ternd.sock"; }

std::string ReadFile(const std::string& path);
std::string Trim(const std::string& s);
std::vector<std::string> Lines(const std::string& s);
bool ProcessAlive(pid_t pid);

// The last `lines` non-empty lines of `text`, indented, for failure messages.
std::string Tail(const std::string& text, size_t lines);

// Brings the suite's cluster up (again, --force) with `extra` arguments to `tern-cluster up 3`
// (e.g. --cpus-per-node 1), after setting the environment tern-cluster reads (name, binaries,
// debug logs unless TERN_LOG_LEVEL says otherwise). "" when it is up, else why not, with the
// tail of each node's log.
std::string UpCluster(const std::vector<std::string>& extra = {});

}  // namespace tern::it
