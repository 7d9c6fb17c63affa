// A deterministic, in-memory world for one move driven by a SourceMachine and a
// DestinationMachine: two agents with their stores, the job's copies, a link between them, a
// scripted Checkpointer, and simulated time (an event queue; nothing sleeps). Every message
// goes through the protocol codec on its way. A seeded generator picks message latencies, so a
// scenario and its seed replay exactly.
//
// Faults are keyed to a phase: when the chosen side's machine first enters that phase the
// fault fires (the agent killed and restarted from its store, or killed for good with its
// node; the link cut for a while; the next message lost, duplicated, delayed or held back
// behind the one after it; the CRIU step running or next started failing, for good or
// transiently). A scenario may carry a second, built-in fault that shapes the run (to reach
// phases like kCommitUnacknowledged or the blocked ones).
//
// At the end Verdict says how many copies of the job run, whether that is allowed, and why:
// exactly one running copy (and no frozen or stopped leftover), or none with the destination
// blocked and saying why while the only node that knew the outcome is gone, or none because the
// node that held the only copy died for good. It also checks at every step that two copies
// never run at once.
//
// Thread-safety: single-threaded test code.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "tern/migrate/destination_machine.hpp"
#include "tern/migrate/source_machine.hpp"

namespace tern::migrate::testing {

enum class Fault {
  kNone,
  kKillSourceRestart,
  kKillSourceForever,
  kKillDestinationRestart,
  kKillDestinationForever,
  kCutLink,
  kLoseMessage,
  kDuplicateMessage,
  kDelayMessage,
  kReorderMessages,
  kStepFails,
  kStepFailsTransiently,
};
inline constexpr int kFaultCount = 12;
std::string ToString(Fault fault);

enum class Side { kSource, kDestination };

struct FaultAt {
  Fault fault = Fault::kNone;
  Side side = Side::kSource;
  int phase = 0;  // a SourcePhase or DestinationPhase, by side
  // How long a cut link stays cut.
  std::int64_t cut_ms = 10000;
};

struct Scenario {
  MoveMode mode = MoveMode::kPreCopy;
  bool dry_run = false;
  int pre_dumps = 0;
  bool first_dump_transient_failure = false;
  bool destination_refuses = false;
  FaultAt built_in;
  FaultAt injected;
  std::uint64_t seed = 1;
};

struct Verdict {
  bool ok = false;
  std::string why;  // when not ok
  bool injected_fired = false;
  std::string outcome;  // "one copy on the source", "blocked: ...", ...
  std::string source_phase;
  std::string destination_phase;
  // S reported its move failed and worth a fresh attempt (the adapter starts one).
  bool source_asked_for_a_fresh_move = false;
  std::set<std::string> source_phases_seen;
  std::set<std::string> destination_phases_seen;
  std::vector<std::string> log;  // what happened, for a failing scenario's message
};

Verdict RunScenario(const Scenario& scenario);

std::string Describe(const Scenario& scenario);

}  // namespace tern::migrate::testing
