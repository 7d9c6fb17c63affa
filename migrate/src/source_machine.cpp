#include "tern/migrate/source_machine.hpp"

namespace tern::migrate {

std::string_view ToString(SourcePhase phase) {
  switch (phase) {
    case SourcePhase::kPreflight:
      return "preflight";
    case SourcePhase::kPreparing:
      return "preparing";
    case SourcePhase::kPreDumping:
      return "pre_dumping";
    case SourcePhase::kDumping:
      return "dumping";
    case SourcePhase::kDumpRetryWait:
      return "dump_retry_wait";
    case SourcePhase::kDumpAbandoned:
      return "dump_abandoned";
    case SourcePhase::kTransferring:
      return "transferring";
    case SourcePhase::kHandingOff:
      return "handing_off";
    case SourcePhase::kCommitting:
      return "committing";
    case SourcePhase::kServingPages:
      return "serving_pages";
    case SourcePhase::kDone:
      return "done";
    case SourcePhase::kCommitUnacknowledged:
      return "commit_unacknowledged";
    case SourcePhase::kDryRunPassed:
      return "dry_run_passed";
    case SourcePhase::kRefused:
      return "refused";
    case SourcePhase::kAborted:
      return "aborted";
  }
  return "unknown";
}

SourceMachine::SourceMachine(SourcePlan plan, SourceOptions options)
    : plan_(std::move(plan)), options_(options) {}

void SourceMachine::Arm(MachineActions& actions, Millis at) {
  actions.push_back(ArmTimerAction{plan_.id, ++timer_, at});
}

SourceRecord SourceMachine::Record(SourceStage stage) const {
  return {plan_.id,   plan_.job_id, plan_.destination,
          plan_.mode, stage,        stage == SourceStage::kCommitted ? ipc_state_ : std::string()};
}

Outcome SourceMachine::outcome() const {
  switch (phase_) {
    case SourcePhase::kCommitting:
    case SourcePhase::kServingPages:
    case SourcePhase::kDone:
    case SourcePhase::kCommitUnacknowledged:
      return Outcome::kCommitted;
    case SourcePhase::kDryRunPassed:
    case SourcePhase::kRefused:
    case SourcePhase::kAborted:
      return Outcome::kAborted;
    default:
      return Outcome::kPending;
  }
}

bool SourceMachine::finished() const {
  switch (phase_) {
    case SourcePhase::kDone:
    case SourcePhase::kCommitUnacknowledged:
    case SourcePhase::kDryRunPassed:
    case SourcePhase::kRefused:
    case SourcePhase::kAborted:
      return true;
    default:
      return false;
  }
}

MachineActions SourceMachine::Start(Millis /*now*/) {
  Enter(SourcePhase::kPreflight);
  return {RunStepAction{StepRequest{plan_.id, StepKind::kCheck, plan_.mode}}};
}

void SourceMachine::Dump(MachineActions& actions, int attempt) {
  dump_attempt_ = attempt;
  Enter(SourcePhase::kDumping);
  actions.push_back(RunStepAction{StepRequest{plan_.id, StepKind::kDump, plan_.mode, attempt}});
}

MachineActions SourceMachine::Abort(std::string error, unsigned status, bool retryable) {
  error_ = std::move(error);
  MachineActions actions;
  // "aborted" is on disk before the job runs again here, so that D, asking, never hears
  // anything that lets it resume its copy.
  if (record_written_) actions.push_back(PersistAction{Record(SourceStage::kAborted)});
  // Resuming a job that runs (CRIU thawed it, or it was never frozen) does nothing.
  if (record_written_) actions.push_back(ResumeJobAction{plan_.id});
  actions.push_back(SendAction{AbortRequest{plan_.id}});
  actions.push_back(ReportAction{plan_.id, ReportKind::kFailed, status, error_, retryable});
  Enter(SourcePhase::kAborted);
  ++timer_;  // no timer of an earlier phase acts any more
  return actions;
}

void SourceMachine::SendCommit(MachineActions& actions, Millis now) {
  ++commit_attempt_;
  actions.push_back(SendAction{CommitRequest{plan_.id, "{}", ipc_state_}});
  Arm(actions, now + options_.commit_answer_timeout);
}

MachineActions SourceMachine::Committed(Millis now) {
  MachineActions actions;
  // The commit point: durable before the copy dies, so that a restart never resumes it.
  actions.push_back(PersistAction{Record(SourceStage::kCommitted)});
  actions.push_back(SettleIpcAction{plan_.job_id});
  actions.push_back(KillJobAction{plan_.id});
  Enter(SourcePhase::kCommitting);
  commit_attempt_ = 0;
  SendCommit(actions, now);
  return actions;
}

std::pair<SourceMachine, MachineActions> SourceMachine::Recover(const SourceRecord& record,
                                                                SourceOptions options, Millis now) {
  SourceMachine machine({record.id, record.job_id, record.destination, record.mode}, options);
  machine.record_written_ = true;
  MachineActions actions;
  switch (record.stage) {
    case SourceStage::kFrozen:
      actions = machine.Abort("the agent restarted during the move; the job resumes here", 500);
      break;
    case SourceStage::kCommitted:
      machine.ipc_state_ = record.ipc_state;
      // A restart between the commit record and SettleIpcAction restored the job's rights here.
      actions.push_back(ForgetMovedIpcAction{record.job_id});
      // A copy left frozen by the crash must not outlive the commit (the adapter kills only a
      // process it identifies as the job's).
      actions.push_back(KillJobAction{record.id});
      machine.Enter(SourcePhase::kCommitting);
      machine.SendCommit(actions, now);
      break;
    case SourceStage::kAborted:
      machine.Enter(SourcePhase::kAborted);
      actions.push_back(SendAction{AbortRequest{record.id}});  // D may never have heard
      // Without a record D's question is answered "unknown", which D takes as "aborted": the
      // record need not outlive this restart (nor be sent again at every one).
      actions.push_back(ForgetAction{record.id});
      break;
  }
  return {std::move(machine), std::move(actions)};
}

Reply SourceMachine::AnswerWithoutMachine(const Request& query, const SourceRecord* record) {
  const std::string id = IdOf(ToMessage(query));
  if (std::holds_alternative<IpcStateQuery>(query)) {
    if (record && record->stage == SourceStage::kCommitted) {
      return IpcStateReply{id, 200, record->ipc_state};
    }
    return IpcStateReply{id, 404, ""};
  }
  Outcome outcome = Outcome::kUnknown;
  if (record) {
    outcome = record->stage == SourceStage::kCommitted ? Outcome::kCommitted
              : record->stage == SourceStage::kAborted ? Outcome::kAborted
                                                       : Outcome::kPending;
  }
  return OutcomeReply{id, outcome};
}

MachineActions SourceMachine::OnStepDone(const StepResult& result, Millis now) {
  if (result.id != plan_.id) return {};
  if (result.kind == StepKind::kServePages) {
    // It may end before D confirms the commit (D went away): nothing then waits for it.
    serving_ = false;
    if (!result.ok) error_ = result.error;
    if (phase_ == SourcePhase::kServingPages) Enter(SourcePhase::kDone);
    return {};
  }
  MachineActions actions;
  switch (phase_) {
    case SourcePhase::kPreflight: {
      if (result.kind != StepKind::kCheck) break;
      if (!result.ok || !result.prepare) {
        error_ = result.ok ? "the pre-flight produced no request" : result.error;
        Enter(SourcePhase::kRefused);
        return {ReportAction{plan_.id, ReportKind::kFailed, 409, error_}};
      }
      PrepareRequest prepare = *result.prepare;
      prepare.id = plan_.id;
      prepare.mode = plan_.mode;
      prepare.dry_run = plan_.dry_run;
      actions.push_back(SendAction{std::move(prepare)});
      Enter(SourcePhase::kPreparing);
      Arm(actions, now + options_.prepare_timeout);
      return actions;
    }
    case SourcePhase::kPreDumping:
      if (result.kind != StepKind::kPreDump) break;
      if (!result.ok) return Abort(result.error, 500, result.transient);
      if (++pre_dump_round_ < plan_.pre_dumps) {
        actions.push_back(
            RunStepAction{StepRequest{plan_.id, StepKind::kPreDump, plan_.mode, pre_dump_round_}});
      } else {
        Dump(actions, 1);
      }
      return actions;
    case SourcePhase::kDumping:
      if (result.kind != StepKind::kDump) break;
      if (!result.ok) {
        if (result.transient && plan_.mode == MoveMode::kPreCopy) {
          // Not again against this move's page server: CRIU connects to it before it seizes
          // the job and it serves that one session, so a second dump finds nobody listening
          // ("Unable to detach ... No such process"). The move ends, retryable: the adapter
          // starts a fresh one, and D a fresh page server for it.
          return Abort(result.error, 500, /*retryable=*/true);
        }
        if (result.transient && dump_attempt_ < options_.dump_attempts) {
          Enter(SourcePhase::kDumpRetryWait);
          Arm(actions, now + options_.dump_retry);
          return actions;
        }
        return Abort(result.error, 500, result.transient);
      }
      actions.push_back(SendAction{result.restore ? *result.restore : RestoreRequest{}});
      std::get<RestoreRequest>(std::get<SendAction>(actions.back()).message).id = plan_.id;
      Enter(SourcePhase::kTransferring);
      Arm(actions, now + options_.restore_timeout);
      return actions;
    case SourcePhase::kDumpAbandoned:
      if (result.kind != StepKind::kDump) break;
      return Abort("node " + plan_.destination + " stopped answering during the dump", 502);
    default:
      break;
  }
  return {};
}

MachineActions SourceMachine::OnMessage(const Message& message, Millis now) {
  if (IdOf(message) != plan_.id) return {};
  if (const auto* query = std::get_if<OutcomeQuery>(&message)) {
    return {SendAction{OutcomeReply{query->id, outcome()}}};
  }
  if (const auto* query = std::get_if<IpcStateQuery>(&message)) {
    const bool committed = outcome() == Outcome::kCommitted;
    return {SendAction{
        IpcStateReply{query->id, committed ? 200u : 404u, committed ? ipc_state_ : std::string()}}};
  }
  MachineActions actions;
  if (const auto* reply = std::get_if<PrepareReply>(&message)) {
    if (phase_ != SourcePhase::kPreparing) return {};
    if (reply->status != 200) return Abort(reply->error, reply->status == 409 ? 409 : 502);
    if (plan_.dry_run) {
      Enter(SourcePhase::kDryRunPassed);
      ++timer_;
      return {ReportAction{plan_.id, ReportKind::kDryRunPassed, 200,
                           "job " + plan_.job_id + " can move to " + plan_.destination}};
    }
    // Written before anything freezes the job: a restart then knows to resume it.
    actions.push_back(PersistAction{Record(SourceStage::kFrozen)});
    record_written_ = true;
    ++timer_;
    if (plan_.pre_dumps > 0) {
      pre_dump_round_ = 0;
      Enter(SourcePhase::kPreDumping);
      actions.push_back(RunStepAction{StepRequest{plan_.id, StepKind::kPreDump, plan_.mode, 0}});
    } else {
      Dump(actions, 1);
    }
    return actions;
  }
  if (const auto* reply = std::get_if<RestoreReply>(&message)) {
    if (phase_ != SourcePhase::kTransferring) return {};
    if (reply->status != 200) return Abort(reply->error, 502);
    Enter(SourcePhase::kHandingOff);
    hand_off_deadline_ = now + options_.hand_off_patience;
    ++timer_;
    return {HandOffIpcAction{plan_.id}};
  }
  if (const auto* reply = std::get_if<CommitReply>(&message)) {
    if (phase_ != SourcePhase::kCommitting && phase_ != SourcePhase::kCommitUnacknowledged) {
      return {};
    }
    if (reply->status == 200) {
      ++timer_;
      // After a restart nothing serves the pages any more (the lazy dump ended with the agent).
      Enter(serving_ ? SourcePhase::kServingPages : SourcePhase::kDone);
      // D resumed its copy (and recorded so) before it answered: it never asks again, so the
      // record can go (a restart would otherwise send the commit once more).
      return {ReportAction{plan_.id, ReportKind::kMoved, 200,
                           "job " + plan_.job_id + " now runs on " + plan_.destination},
              ForgetAction{plan_.id}};
    }
    // No copy there (404) cannot follow a restore D confirmed; any other status is the
    // transport's: ask again a little later.
    if (phase_ == SourcePhase::kCommitting) Arm(actions, now + options_.commit_retry);
    error_ = reply->error;
    return actions;
  }
  return {};
}

MachineActions SourceMachine::OnHandOff(const HandOffResult& result, Millis now) {
  if (phase_ != SourcePhase::kHandingOff) return {};
  switch (result.outcome) {
    case HandOffOutcome::kExported: {
      ipc_state_ = result.state;
      MachineActions actions = Committed(now);
      if (plan_.mode == MoveMode::kPostCopy) {
        serving_ = true;
        actions.push_back(RunStepAction{StepRequest{plan_.id, StepKind::kServePages, plan_.mode}});
      }
      return actions;
    }
    case HandOffOutcome::kRefused:
      return Abort("the job's IPC rights cannot move: " + result.state, 409);
    case HandOffOutcome::kBusy:
      break;
  }
  if (now >= hand_off_deadline_) {
    return Abort("the job's IPC operations did not settle within " +
                     std::to_string(options_.hand_off_patience.count()) + " ms (" + result.state +
                     ")",
                 409);
  }
  MachineActions actions;
  Arm(actions, now + options_.hand_off_poll);
  return actions;
}

MachineActions SourceMachine::OnTimer(std::uint64_t token, Millis now) {
  if (token != timer_) return {};
  MachineActions actions;
  switch (phase_) {
    case SourcePhase::kPreparing:
      return Abort("node " + plan_.destination + " did not answer the prepare call", 502);
    case SourcePhase::kDumpRetryWait:
      Dump(actions, dump_attempt_ + 1);
      return actions;
    case SourcePhase::kTransferring:
      return Abort("node " + plan_.destination + " did not answer the restore call", 502);
    case SourcePhase::kHandingOff:
      return {HandOffIpcAction{plan_.id}};
    case SourcePhase::kCommitting:
      if (commit_attempt_ >= options_.commit_attempts) {
        Enter(SourcePhase::kCommitUnacknowledged);
        return {ReportAction{plan_.id, ReportKind::kUnconfirmed, 502,
                             "job " + plan_.job_id + " was handed to " + plan_.destination +
                                 ", which has not confirmed resuming it" +
                                 (error_.empty() ? "" : ": " + error_) +
                                 " (it resumes the job when it learns the outcome)"}};
      }
      SendCommit(actions, now);
      return actions;
    default:
      return {};
  }
}

MachineActions SourceMachine::OnPeerLost(Millis /*now*/) {
  const std::string reason = "node " + plan_.destination + " stopped answering";
  switch (phase_) {
    case SourcePhase::kPreparing:
    case SourcePhase::kPreDumping:
    case SourcePhase::kDumpRetryWait:
    case SourcePhase::kTransferring:
    case SourcePhase::kHandingOff:
      return Abort(reason, 502);
    case SourcePhase::kDumping:
      // CRIU may be streaming pages over a cut link (pre-copy) or waiting to serve them
      // (post-copy): cut it, and resume the job once the dump has returned.
      Enter(SourcePhase::kDumpAbandoned);
      return {CancelStepAction{plan_.id, StepKind::kDump}};
    default:
      return {};  // past the commit point D decides by asking; before Prepare nothing waits
  }
}

MachineActions SourceMachine::OnPersistFailed(Millis /*now*/) {
  switch (phase_) {
    case SourcePhase::kPreDumping:
    case SourcePhase::kDumping:
      // "frozen" was not written, so nothing was frozen.
      record_written_ = false;
      return Abort("cannot record the move; nothing was frozen", 500);
    case SourcePhase::kCommitting:
      if (commit_attempt_ <= 1) {
        // "committed" was not written, so the copy was not killed: the move is off.
        return Abort("cannot record the commit; the job resumes here", 500);
      }
      return {};
    default:
      return {};
  }
}

}  // namespace tern::migrate
