// FaultHook: one fault armed by the fault campaign (bench/faults), fired when a move of a job
// enters a named phase of the migration machines on this agent.
//
// The campaign needs faults that hit a chosen phase, not a point in time: a kill 150 ms into a
// move lands in a different phase on every machine. So the agent carries this hook in every
// build; it stays inert unless the node's config says `[testing] faults = true`, and even then
// it does nothing until an admin arms it (`POST /v1/faults`). A fault fires once, on the first
// phase entry that matches, and is then disarmed.
//
// What a fired fault does is the adapter's business (FaultAction): kill the agent with SIGKILL
// at once (the record of the hit is written and synced first, since the agent's memory goes
// with it), or cut the agent's links to every peer for a while (as a pulled cable would, both
// directions, peers see the silence).
//
// Plain class without I/O: Parse, Arm and OnPhase take and return values; the adapter writes the
// hit and acts on it.
//
// Thread-safety: not thread-safe; the agent calls it from its io thread only.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <tern/expected.hpp>

namespace tern::agent {

enum class FaultAction {
  kKillAgent,  // SIGKILL to the agent itself, as `kill -9` of ternd
  kCutLinks,   // drop every peer link and refuse new ones for `cut_for`
};
std::string_view ToString(FaultAction action);

enum class MoveSide { kSource, kDestination };
std::string_view ToString(MoveSide side);

struct FaultPlan {
  MoveSide side = MoveSide::kSource;
  std::string phase;  // as the machines name it: "dumping", "restoring", "committing"...
  FaultAction action = FaultAction::kKillAgent;
  std::chrono::milliseconds cut_for{0};  // kCutLinks only
  std::string job;                       // only moves of this job; empty: any

  // {"side": "source", "phase": "dumping", "action": "kill", "job": "node1.3"}
  // {"side": "destination", "phase": "restoring", "action": "cut", "cut_ms": 3000}
  // Unknown fields, sides, actions, and cut_ms outside 1..60000 are refused with the reason.
  static Expected<FaultPlan> FromJson(const nlohmann::json& body);
  nlohmann::json ToJson() const;
};

// A fault that fired: what it was and where it hit.
struct FaultHit {
  FaultPlan plan;
  std::string job;
  std::string migration;
  nlohmann::json ToJson() const;
};

class FaultHook {
 public:
  // `enabled`: `[testing] faults` of the node's config. Off, Arm refuses and nothing fires.
  explicit FaultHook(bool enabled) : enabled_(enabled) {}

  bool enabled() const { return enabled_; }
  Expected<void> Arm(FaultPlan plan);
  void Disarm() { armed_.reset(); }
  const std::optional<FaultPlan>& armed() const { return armed_; }
  const std::optional<FaultHit>& last_hit() const { return last_hit_; }

  // A move of `job` (migration `migration`) entered `phase` on this agent's `side`. Returns the
  // hit when the armed fault matches, and disarms it.
  std::optional<FaultHit> OnPhase(MoveSide side, std::string_view phase, std::string_view job,
                                  std::string_view migration);

  nlohmann::json StatusJson() const;

 private:
  bool enabled_;
  std::optional<FaultPlan> armed_;
  std::optional<FaultHit> last_hit_;
};

}  // namespace tern::agent
