// `tern top`: a live terminal view of the cluster in the spirit of MOSIX's mmon — every node
// with a load bar, the running jobs, and migrations as they happen — redrawn from the
// cluster-wide event stream (GET /v1/events), quitting on `q`.
//
// TopModel is the view's state and rendering, with no I/O: it takes the answers of GET
// /v1/nodes and /v1/jobs and the events, and renders a screen of a given size. Top() drives it
// from the agent and the terminal.
//
// Thread-safety: TopModel is not thread-safe (Top() guards it with a mutex).
#pragma once

#include <cstddef>
#include <deque>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "tern/cli/commands.hpp"

namespace tern::cli {

class TopModel {
 public:
  void SetNodes(const nlohmann::json& nodes);  // the "nodes" array of GET /v1/nodes
  void SetJobs(const nlohmann::json& jobs);    // the "jobs" array of GET /v1/jobs
  void OnEvent(const nlohmann::json& event);
  void SetStatus(std::string status) { status_ = std::move(status); }
  // The screen, `width` columns and at most `height` lines, ending in a newline per line.
  std::string Render(std::size_t width, std::size_t height, const std::string& clock) const;

 private:
  std::map<std::string, nlohmann::json> nodes_;
  std::map<std::string, nlohmann::json> jobs_;
  std::deque<std::string> migrations_;             // lines, newest first
  std::map<std::string, nlohmann::json> started_;  // migration id → its started event
  std::string status_;
};

int Top(Context& context);

}  // namespace tern::cli
