// The migration protocol, source side, as a state machine with no I/O: events in, actions out
// (Chromium's mojo/core/ports shape). The agent's MigrationDriver performs the actions — CRIU
// runs, messages to the destination agent — and feeds their outcomes back as events.
//
//   kPreflight ─ok─► kPreparing ─ready─► kDumping ─dumped─► kTransferring ─restored─► kCommitting
//   ─committed─► kDone
//        │ refused        │ failed           │ failed            │ failed/lost               │
//        lost: keep telling ▼                ▼                  ▼                   ▼ ▼ (the
//        destination decides
//     kRefused         kAborted ◄──────── kAborted ◄────────── kAborted (source resumed)      to
//     resume on commit)
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
};

enum class MigrationAction {
  kPrepareDestination,
  kDump,
  kSendImages,
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
