// The migration protocol, source side, as a state machine with no I/O: events in, actions out
// (Chromium's mojo/core/ports shape). The agent's MigrationDriver performs the actions — CRIU
// runs, messages to the destination agent — and feeds their outcomes back as events.
//
//   kPreflight ─ok─► kPreparing ─ready─► kDumping ─dumped─► kTransferring ─restored─►
//   kHandingOff ─handed off─► kCommitting ─committed─► kDone
//
//   Refused at pre-flight: kRefused. Any failure before kCommitting (destination lost, dump or
//   restore failed, the job's IPC state could not be handed off): kAborted, the source copy
//   resumed. A failure in kCommitting: keep telling the destination, which resumes on commit.
//
// Invariant "never two, never zero": until the source kills its frozen copy (the commit point,
// entered on kRestored) only the source copy may run, and every failure resumes it there; from
// the commit point on only the destination copy may run, and nothing may resume the source.
// `RunnableCopy()` says which copy may run in each state; tests walk every failure at every
// phase against it.
//
// Thread-safety: not thread-safe; one driver thread owns an instance.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tern::migrate {

enum class MigrationPhase {
  kPreflight,
  kPreparing,
  kDumping,
  kTransferring,
  kHandingOff,  // the job's IPC rights and channel bytes are taken out of the source agent
  kCommitting,
  kDone,
  kRefused,
  kAborted,
};
std::string_view ToString(MigrationPhase phase);

enum class MigrationEvent {
  kPreflightPassed,
  kPreflightRefused,
  kDestinationReady,
  kDestinationFailed,  // prepare refused, restore failed, or the destination agent unreachable
  kDumped,
  kDumpFailed,
  kRestored,  // the destination holds a stopped copy
  kCommitted,
  kCommitUnacknowledged,  // link lost after the commit point: retry; the destination resumes
  kHandedOff,             // the job's IPC state is out of the source agent, ready to travel
  kHandOffFailed,         // its IPC operations did not settle, or it holds what cannot move
};

enum class MigrationAction {
  kPrepareDestination,
  kDump,
  kSendImages,
  kHandOff,     // take the job's IPC state out of the source agent (retried while busy)
  kKillSource,  // the commit point
  kSendCommit,
  kResumeSource,
  kAbortDestination,
  kReportSuccess,
  kReportFailure,
};

enum class RunnableCopy { kSource, kNone, kDestination };

class SourceMigration {
 public:
  std::vector<MigrationAction> Start();
  std::vector<MigrationAction> On(MigrationEvent event);

  MigrationPhase phase() const { return phase_; }
  // Which copy of the job may be running now (kNone: frozen on the source while it is dumped
  // and restored; neither runs).
  RunnableCopy runnable() const;
  bool finished() const {
    return phase_ == MigrationPhase::kDone || phase_ == MigrationPhase::kRefused ||
           phase_ == MigrationPhase::kAborted;
  }

 private:
  std::vector<MigrationAction> Abort(bool frozen);
  MigrationPhase phase_ = MigrationPhase::kPreflight;
};

}  // namespace tern::migrate
