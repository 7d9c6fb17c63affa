// FaultHook: one fault armed by the fault campaign (bench/faults), fired when a move of a job
// enters a named phase of the migration machines on this agent.
//
// The campaign needs faults that hit a chosen phase, not a point in time: a kill 150 ms into a
// move lands in a different phase on every machine. So the agent carries this hook in every
// build; it stays inert unless the node's config says `[testing] faults = true`, and even then
// it does nothing until an admin arms it (`POST /v1/faults`). Up to kMaxArmed faults may be
// armed at once (a fault that only a first one's failure reaches: a cut that makes the source
// give up waiting for the commit's answer, then a kill there); each fires once, on the first
// phase entry that matches it, and is then disarmed. The owner may keep the armed list across
// restarts (SetOnChange/Restore): a fault armed for a phase that a restarted agent enters (a
// destination fetching the IPC state after a kill) must still be there after the kill.
//
// What a fired fault does is the adapter's business (FaultAction): kill the agent with SIGKILL
// at once (the record of the hit is written and synced first, since the agent's memory goes
// with it), cut the agent's links to every peer for a while (as a pulled cable would, both
// directions, peers see the silence), degrade them for a while (a share of the packets lost
// and/or the node's sending rate capped: a bad cable, link_degrade.hpp), or lose every one of
// this agent's migration requests of one kind for a while (the commit, say: sent into a network
// that drops it while the links stay up, so the peer hears of the move only by asking; the one
// way to reach the phases that come from such a question, which a cut cannot: a cut drops the
// question too, and TCP delivers the held requests when it ends).
//
// Plain class without I/O: Parse, Arm and OnPhase take and return values; the adapter writes the
// hit and acts on it.
//
// Thread-safety: not thread-safe; the agent calls it from its io thread only.
#pragma once

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <utility>
#include <vector>

namespace tern::agent {

enum class FaultAction {
  kKillAgent,     // SIGKILL to the agent itself, as `kill -9` of ternd
  kCutLinks,      // drop every packet in and out (but loopback) for `lasts_for`
  kDegradeLinks,  // lose `loss_pct` of them and/or send at `rate_kbit` for `lasts_for`
  kLoseMessages,  // drop this agent's migration requests of kind `message` for `lasts_for`
};
std::string_view ToString(FaultAction action);

enum class MoveSide { kSource, kDestination };
std::string_view ToString(MoveSide side);

struct FaultPlan {
  MoveSide side = MoveSide::kSource;
  std::string phase;  // as the machines name it: "dumping", "restoring", "committing"...
  FaultAction action = FaultAction::kKillAgent;
  std::chrono::milliseconds lasts_for{0};  // kCutLinks and kDegradeLinks
  int loss_pct = 0;                        // kDegradeLinks: 0 (none) or 1..100
  int rate_kbit = 0;                       // kDegradeLinks: 0 (uncapped) or 8..10,000,000
  std::string job;                         // only moves of this job; empty: any
  std::string message;  // kLoseMessages: a request's name, "CommitRequest"... (RequestNames)

  // {"side": "source", "phase": "dumping", "action": "kill", "job": "node1.3"}
  // {"side": "destination", "phase": "restoring", "action": "cut", "cut_ms": 3000}
  // {"side": "source", "phase": "transferring", "action": "degrade", "for_ms": 3000,
  //  "loss_pct": 10, "rate_kbit": 20000}
  // {"side": "source", "phase": "committing", "action": "lose", "message": "CommitRequest",
  //  "for_ms": 30000}
  // Unknown fields, sides, actions, durations outside 1..60000 ms, a degrade that changes
  // nothing, and fields of another action are refused with the reason.
  static Expected<FaultPlan> FromJson(const nlohmann::json& body);
  // One plan as above, or an array of 1..kMaxArmed of them.
  static Expected<std::vector<FaultPlan>> ListFromJson(const nlohmann::json& body);
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
  static constexpr std::size_t kMaxArmed = 4;
  using OnChange = std::function<void(const std::vector<FaultPlan>& armed)>;

  // `enabled`: `[testing] faults` of the node's config. Off, Arm refuses and nothing fires.
  explicit FaultHook(bool enabled) : enabled_(enabled) {}

  bool enabled() const { return enabled_; }
  // Replaces what was armed.
  Expected<void> Arm(std::vector<FaultPlan> plans);
  Expected<void> Arm(FaultPlan plan) { return Arm(std::vector<FaultPlan>{std::move(plan)}); }
  void Disarm();
  const std::vector<FaultPlan>& armed() const { return armed_; }
  // Called with the armed list after every change (Arm, Disarm, a fault that fired), before the
  // fired fault is acted on.
  void SetOnChange(OnChange on_change) { on_change_ = std::move(on_change); }
  // What a predecessor had armed (no OnChange call); ignored when off.
  void Restore(std::vector<FaultPlan> plans);
  const std::optional<FaultHit>& last_hit() const { return last_hit_; }

  // A kLoseMessages fault that fired at `now`: its kind of request is lost until its time is up.
  void StartLosing(const FaultPlan& plan, std::chrono::steady_clock::time_point now);
  // Whether this agent's next migration request of kind `message` is to be dropped unsent.
  bool Loses(std::string_view message, std::chrono::steady_clock::time_point now) const;

  // A move of `job` (migration `migration`) entered `phase` on this agent's `side`. Returns the
  // hit when the armed fault matches, and disarms it.
  std::optional<FaultHit> OnPhase(MoveSide side, std::string_view phase, std::string_view job,
                                  std::string_view migration);

  nlohmann::json StatusJson() const;

 private:
  void Changed() const {
    if (on_change_) on_change_(armed_);
  }

  bool enabled_;
  std::vector<FaultPlan> armed_;
  OnChange on_change_;
  std::optional<FaultHit> last_hit_;
  std::vector<std::pair<std::string, std::chrono::steady_clock::time_point>> losing_;
};

}  // namespace tern::agent
