#include "tern/migrate/migration.hpp"

namespace tern::migrate {

std::string_view ToString(MigrationPhase phase) {
  switch (phase) {
    case MigrationPhase::kPreflight:
      return "preflight";
    case MigrationPhase::kPreparing:
      return "preparing";
    case MigrationPhase::kDumping:
      return "dumping";
    case MigrationPhase::kTransferring:
      return "transferring";
    case MigrationPhase::kHandingOff:
      return "handing_off";
    case MigrationPhase::kCommitting:
      return "committing";
    case MigrationPhase::kDone:
      return "done";
    case MigrationPhase::kRefused:
      return "refused";
    case MigrationPhase::kAborted:
      return "aborted";
  }
  return "unknown";
}

std::vector<MigrationAction> SourceMigration::Start() { return {}; }

RunnableCopy SourceMigration::runnable() const {
  switch (phase_) {
    case MigrationPhase::kPreflight:
    case MigrationPhase::kPreparing:
    case MigrationPhase::kRefused:
    case MigrationPhase::kAborted:
      return RunnableCopy::kSource;
    case MigrationPhase::kDumping:
    case MigrationPhase::kTransferring:
    case MigrationPhase::kHandingOff:
      return RunnableCopy::kNone;
    case MigrationPhase::kCommitting:
    case MigrationPhase::kDone:
      return RunnableCopy::kDestination;
  }
  return RunnableCopy::kSource;
}

std::vector<MigrationAction> SourceMigration::Abort(bool frozen) {
  phase_ = MigrationPhase::kAborted;
  std::vector<MigrationAction> actions;
  if (frozen) actions.push_back(MigrationAction::kResumeSource);
  actions.push_back(MigrationAction::kAbortDestination);
  actions.push_back(MigrationAction::kReportFailure);
  return actions;
}

std::vector<MigrationAction> SourceMigration::On(MigrationEvent event) {
  using A = MigrationAction;
  using E = MigrationEvent;
  switch (phase_) {
    case MigrationPhase::kPreflight:
      if (event == E::kPreflightPassed) {
        phase_ = MigrationPhase::kPreparing;
        return {A::kPrepareDestination};
      }
      if (event == E::kPreflightRefused) {
        phase_ = MigrationPhase::kRefused;
        return {A::kReportFailure};
      }
      break;
    case MigrationPhase::kPreparing:
      if (event == E::kDestinationReady) {
        phase_ = MigrationPhase::kDumping;
        return {A::kDump};
      }
      if (event == E::kDestinationFailed) return Abort(false);
      break;
    case MigrationPhase::kDumping:
      if (event == E::kDumped) {
        phase_ = MigrationPhase::kTransferring;
        return {A::kSendImages};
      }
      // CRIU thaws the tree when a dump fails; resuming again is harmless and covers a crash.
      if (event == E::kDumpFailed || event == E::kDestinationFailed) return Abort(true);
      break;
    case MigrationPhase::kTransferring:
      if (event == E::kRestored) {
        phase_ = MigrationPhase::kHandingOff;
        return {A::kHandOff};
      }
      if (event == E::kDestinationFailed) return Abort(true);
      break;
    case MigrationPhase::kHandingOff:
      if (event == E::kHandedOff) {
        phase_ = MigrationPhase::kCommitting;
        return {A::kKillSource, A::kSendCommit};
      }
      if (event == E::kHandOffFailed || event == E::kDestinationFailed) return Abort(true);
      break;
    case MigrationPhase::kCommitting:
      if (event == E::kCommitted) {
        phase_ = MigrationPhase::kDone;
        return {A::kReportSuccess};
      }
      // Past the commit point nothing resumes the source: keep telling the destination.
      if (event == E::kCommitUnacknowledged || event == E::kDestinationFailed) {
        return {A::kSendCommit};
      }
      break;
    default:
      break;
  }
  return {};
}

}  // namespace tern::migrate
