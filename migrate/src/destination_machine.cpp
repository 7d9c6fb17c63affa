#include "tern/migrate/destination_machine.hpp"

namespace tern::migrate {

std::string_view ToString(DestinationPhase phase) {
  switch (phase) {
    case DestinationPhase::kChecking:
      return "checking";
    case DestinationPhase::kStartingReceiver:
      return "starting_receiver";
    case DestinationPhase::kAwaitingImages:
      return "awaiting_images";
    case DestinationPhase::kRestoring:
      return "restoring";
    case DestinationPhase::kAbortingStep:
      return "aborting_step";
    case DestinationPhase::kRestored:
      return "restored";
    case DestinationPhase::kAskingOutcome:
      return "asking_outcome";
    case DestinationPhase::kFetchingIpcState:
      return "fetching_ipc_state";
    case DestinationPhase::kPullingPages:
      return "pulling_pages";
    case DestinationPhase::kDone:
      return "done";
    case DestinationPhase::kDryRunPassed:
      return "dry_run_passed";
    case DestinationPhase::kRefused:
      return "refused";
    case DestinationPhase::kAborted:
      return "aborted";
    case DestinationPhase::kBlockedSourceSilent:
      return "blocked_source_silent";
    case DestinationPhase::kBlockedPagesLost:
      return "blocked_pages_lost";
  }
  return "unknown";
}

DestinationMachine::DestinationMachine(std::string id, std::string job, std::string source,
                                       MoveMode mode, DestinationOptions options)
    : id_(std::move(id)),
      job_(std::move(job)),
      source_(std::move(source)),
      mode_(mode),
      options_(options) {}

void DestinationMachine::Arm(MachineActions& actions, Millis at) {
  actions.push_back(ArmTimerAction{id_, ++timer_, at});
}

DestinationRecord DestinationMachine::Record(DestinationStage stage) const {
  return {id_, job_, source_, mode_, shared_dir_, stage, copy_pid_};
}

std::pair<DestinationMachine, MachineActions> DestinationMachine::Start(PrepareRequest prepare,
                                                                        std::string source,
                                                                        DestinationOptions options,
                                                                        Millis now) {
  DestinationMachine machine(prepare.id, prepare.job, std::move(source), prepare.mode, options);
  machine.dry_run_ = prepare.dry_run;
  machine.last_heard_ = now;
  StepRequest check{prepare.id, StepKind::kCheck, prepare.mode};
  check.prepare = prepare;
  machine.prepare_ = std::move(prepare);
  return {std::move(machine), {RunStepAction{std::move(check)}}};
}

std::pair<DestinationMachine, MachineActions> DestinationMachine::Recover(
    const DestinationRecord& record, DestinationOptions options, Millis now) {
  DestinationMachine machine(record.id, record.job, record.source, record.mode, options);
  machine.shared_dir_ = record.shared_dir;
  machine.copy_pid_ = record.copy_pid;
  machine.last_heard_ = now;
  MachineActions actions;
  switch (record.stage) {
    case DestinationStage::kPrepared:
      // S was never told "restored", so it cannot have committed: whatever CRIU made goes.
      actions = machine.Drop("the agent restarted before the restore was confirmed");
      break;
    case DestinationStage::kRestored:
      machine.phase_ = DestinationPhase::kRestored;
      machine.Arm(actions, now);  // ask S at once: the commit may have come while we were down
      break;
    case DestinationStage::kResumed:
      if (record.mode == MoveMode::kPostCopy) {
        // The lazy-pages daemon ended with the agent: pages still at S cannot come any more.
        machine.phase_ = DestinationPhase::kBlockedPagesLost;
        machine.reason_ = "the agent restarted while the job's memory was still coming from " +
                          record.source + "; what had not arrived is lost (tern recover " +
                          "--discard)";
        actions.push_back(ReportAction{record.id, ReportKind::kBlocked, 500, machine.reason_});
      } else {
        machine.phase_ = DestinationPhase::kDone;
      }
      break;
    case DestinationStage::kComplete:
      machine.phase_ = DestinationPhase::kDone;
      break;
  }
  return {std::move(machine), std::move(actions)};
}

MachineActions DestinationMachine::Drop(std::string reason) {
  reason_ = std::move(reason);
  phase_ = DestinationPhase::kAborted;
  ++timer_;
  return {DiscardCopyAction{id_}, ForgetAction{id_}};
}

MachineActions DestinationMachine::AbortStep(StepKind running) {
  running_ = running;
  phase_ = DestinationPhase::kAbortingStep;
  ++timer_;
  return {CancelStepAction{id_, running}};
}

MachineActions DestinationMachine::Ask(DestinationPhase next, Millis now) {
  phase_ = next;
  MachineActions actions{SendAction{OutcomeQuery{id_}}};
  Arm(actions, now + (next == DestinationPhase::kBlockedSourceSilent ? options_.blocked_ask_interval
                                                                     : options_.answer_timeout));
  return actions;
}

MachineActions DestinationMachine::Resume(const std::string& ipc_state, bool reply_commit,
                                          Millis now) {
  MachineActions actions;
  // Its rights, and the answers it has not read, are in place before it runs again.
  if (!ipc_state.empty()) actions.push_back(InstallIpcStateAction{id_, ipc_state});
  actions.push_back(ResumeJobAction{id_});
  actions.push_back(PersistAction{Record(DestinationStage::kResumed)});
  if (reply_commit) actions.push_back(SendAction{CommitReply{id_, 200, "", job_}});
  actions.push_back(ReportAction{id_, ReportKind::kMoved, 200, "resumed here"});
  ++timer_;
  reason_.clear();
  if (mode_ == MoveMode::kPostCopy) {
    phase_ = DestinationPhase::kPullingPages;
    actions.push_back(RunStepAction{StepRequest{id_, StepKind::kPullPages, mode_}});
  } else {
    phase_ = DestinationPhase::kDone;
  }
  (void)now;
  return actions;
}

MachineActions DestinationMachine::OnStepDone(const StepResult& result, Millis now) {
  if (result.id != id_) return {};
  MachineActions actions;
  switch (phase_) {
    case DestinationPhase::kChecking:
      if (result.kind != StepKind::kCheck) break;
      checks_ = result.checks;
      shared_dir_ = result.shared_dir;
      if (!result.ok) {
        reason_ = result.error;
        phase_ = DestinationPhase::kRefused;
        return {SendAction{PrepareReply{id_, 409, result.error, checks_}}};
      }
      if (dry_run_) {
        phase_ = DestinationPhase::kDryRunPassed;
        return {SendAction{PrepareReply{id_, 200, "", checks_}}};
      }
      // Written before CRIU starts: a restart then knows to discard what it made.
      actions.push_back(PersistAction{Record(DestinationStage::kPrepared)});
      {
        StepRequest receive{id_, StepKind::kPrepareReceive, mode_};
        receive.prepare = prepare_;
        actions.push_back(RunStepAction{std::move(receive)});
      }
      phase_ = DestinationPhase::kStartingReceiver;
      return actions;
    case DestinationPhase::kStartingReceiver:
      if (result.kind != StepKind::kPrepareReceive) break;
      if (!result.ok) {
        actions = Drop(result.error);
        actions.push_back(SendAction{PrepareReply{id_, 500, result.error, checks_}});
        return actions;
      }
      actions.push_back(
          SendAction{PrepareReply{id_, 200, "", checks_, shared_dir_, result.page_server}});
      phase_ = DestinationPhase::kAwaitingImages;
      Arm(actions, now + options_.images_patience);
      return actions;
    case DestinationPhase::kRestoring:
      if (result.kind != StepKind::kRestore) break;
      if (!result.ok) {
        actions = Drop(result.error);
        actions.push_back(SendAction{RestoreReply{id_, 500, "restore failed: " + result.error}});
        return actions;
      }
      copy_pid_ = result.copy_pid;
      // Durable before S hears "restored": from then on S may commit.
      actions.push_back(PersistAction{Record(DestinationStage::kRestored)});
      actions.push_back(SendAction{RestoreReply{id_, 200, "", copy_pid_}});
      phase_ = DestinationPhase::kRestored;
      last_heard_ = now;
      Arm(actions, now + options_.silence);
      return actions;
    case DestinationPhase::kAbortingStep:
      if (result.kind != running_) break;
      actions = Drop(reason_.empty() ? "aborted by the source" : reason_);
      if (running_ == StepKind::kRestore) {
        actions.push_back(SendAction{RestoreReply{id_, 409, "aborted during the restore"}});
      } else {
        actions.push_back(SendAction{PrepareReply{id_, 409, "aborted while preparing", checks_}});
      }
      return actions;
    case DestinationPhase::kPullingPages:
      if (result.kind != StepKind::kPullPages) break;
      if (result.ok) {
        phase_ = DestinationPhase::kDone;
        return {PersistAction{Record(DestinationStage::kComplete)}};
      }
      phase_ = DestinationPhase::kBlockedPagesLost;
      reason_ = "part of the job's memory was still on " + source_ +
                ", which is gone: the job cannot run (" + result.error +
                "); tern recover --discard";
      return {ReportAction{id_, ReportKind::kBlocked, 500, reason_}};
    default:
      break;
  }
  return {};
}

MachineActions DestinationMachine::OnMessage(const Message& message, Millis now) {
  if (IdOf(message) != id_) return {};
  last_heard_ = now;
  MachineActions actions;
  if (const auto* restore = std::get_if<RestoreRequest>(&message)) {
    switch (phase_) {
      case DestinationPhase::kAwaitingImages: {
        StepRequest step{id_, StepKind::kRestore, mode_};
        step.restore = *restore;
        phase_ = DestinationPhase::kRestoring;
        ++timer_;
        return {RunStepAction{std::move(step)}};
      }
      case DestinationPhase::kRestored:  // a repeated request: the same answer
        return {SendAction{RestoreReply{id_, 200, "", copy_pid_}}};
      case DestinationPhase::kAborted:
      case DestinationPhase::kRefused:
        return {SendAction{RestoreReply{id_, 404, "no migration " + id_ + " is received here"}}};
      default:
        return {};
    }
  }
  if (const auto* commit = std::get_if<CommitRequest>(&message)) {
    switch (phase_) {
      case DestinationPhase::kRestored:
      case DestinationPhase::kAskingOutcome:
      case DestinationPhase::kFetchingIpcState:
      case DestinationPhase::kBlockedSourceSilent:
        return Resume(commit->ipc_state, true, now);
      case DestinationPhase::kPullingPages:
      case DestinationPhase::kDone:
      case DestinationPhase::kBlockedPagesLost:
        return {SendAction{CommitReply{id_, 200, "", job_}}};  // repeated: already resumed
      default:
        return {
            SendAction{CommitReply{id_, 404, "no restored copy of migration " + id_ + " here"}}};
    }
  }
  if (std::holds_alternative<AbortRequest>(message)) {
    switch (phase_) {
      case DestinationPhase::kChecking:
        reason_ = "aborted by the source";
        actions = AbortStep(StepKind::kCheck);
        break;
      case DestinationPhase::kStartingReceiver:
        reason_ = "aborted by the source";
        actions = AbortStep(StepKind::kPrepareReceive);
        break;
      case DestinationPhase::kRestoring:
        reason_ = "aborted by the source";
        actions = AbortStep(StepKind::kRestore);
        break;
      case DestinationPhase::kAwaitingImages:
      case DestinationPhase::kRestored:
      case DestinationPhase::kAskingOutcome:
      case DestinationPhase::kBlockedSourceSilent:
        actions = Drop("aborted by the source");
        break;
      case DestinationPhase::kFetchingIpcState:
      case DestinationPhase::kPullingPages:
      case DestinationPhase::kDone:
      case DestinationPhase::kBlockedPagesLost:
        // S said "committed" (or committed): an abort cannot be of this move's S. Kept.
        return {SendAction{AbortReply{id_, 409, "job resumed here already"}}};
      default:
        break;
    }
    actions.push_back(SendAction{AbortReply{id_}});
    return actions;
  }
  if (const auto* reply = std::get_if<OutcomeReply>(&message)) {
    const bool asking = phase_ == DestinationPhase::kRestored ||
                        phase_ == DestinationPhase::kAskingOutcome ||
                        phase_ == DestinationPhase::kBlockedSourceSilent;
    if (phase_ == DestinationPhase::kAwaitingImages) {
      if (reply->outcome == Outcome::kPending) return {};
      return Drop("the source is not moving the job any more (" +
                  std::string(ToString(reply->outcome)) + ")");
    }
    if (!asking) return {};
    switch (reply->outcome) {
      case Outcome::kCommitted:
        phase_ = DestinationPhase::kFetchingIpcState;
        committed_at_ = now;
        actions.push_back(SendAction{IpcStateQuery{id_}});
        Arm(actions, now + options_.answer_timeout);
        return actions;
      case Outcome::kAborted:
      case Outcome::kUnknown:
        actions = Drop("the source says the move is " + std::string(ToString(reply->outcome)));
        actions.push_back(ReportAction{id_, ReportKind::kFailed, 409, reason_});
        return actions;
      case Outcome::kPending:
        phase_ = DestinationPhase::kRestored;
        reason_.clear();
        Arm(actions, now + options_.silence);
        return actions;
    }
    return {};
  }
  if (const auto* reply = std::get_if<IpcStateReply>(&message)) {
    if (phase_ != DestinationPhase::kFetchingIpcState) return {};
    // 404: S kept none (the job held nothing to hand over): it resumes without.
    return Resume(reply->status == 200 ? reply->state : std::string(), false, now);
  }
  // A repeated prepare (a duplicate) changes nothing; its first answer stands.
  return {};
}

MachineActions DestinationMachine::OnTimer(std::uint64_t token, Millis now) {
  if (token != timer_) return {};
  MachineActions actions;
  switch (phase_) {
    case DestinationPhase::kAwaitingImages:
      actions.push_back(SendAction{OutcomeQuery{id_}});
      Arm(actions, now + options_.images_patience);
      return actions;
    case DestinationPhase::kRestored:
      return Ask(DestinationPhase::kAskingOutcome, now);
    case DestinationPhase::kAskingOutcome:
      if (now - last_heard_ >= options_.block_after) {
        reason_ = "a restored, stopped copy; its source " + source_ + " has not answered for " +
                  std::to_string((now - last_heard_).count() / 1000) +
                  " s, and only it knows whether the move committed (tern recover " +
                  "--resume-here|--discard once it is gone for good)";
        actions = Ask(DestinationPhase::kBlockedSourceSilent, now);
        actions.push_back(ReportAction{id_, ReportKind::kBlocked, 503, reason_});
        return actions;
      }
      return Ask(DestinationPhase::kAskingOutcome, now);
    case DestinationPhase::kBlockedSourceSilent:
      return Ask(DestinationPhase::kBlockedSourceSilent, now);
    case DestinationPhase::kFetchingIpcState:
      if (now - committed_at_ >= options_.ipc_patience) {
        // Committed for sure: the job runs here, without what it had not read yet.
        actions = Resume("", false, now);
        actions.push_back(
            ReportAction{id_, ReportKind::kMoved, 200,
                         "resumed without its IPC state: " + source_ + " did not send it"});
        return actions;
      }
      actions.push_back(SendAction{IpcStateQuery{id_}});
      Arm(actions, now + options_.answer_timeout);
      return actions;
    default:
      return {};
  }
}

MachineActions DestinationMachine::OnSourceLost(Millis /*now*/) {
  switch (phase_) {
    case DestinationPhase::kChecking:
      reason_ = "source " + source_ + " stopped answering";
      return AbortStep(StepKind::kCheck);
    case DestinationPhase::kStartingReceiver:
      reason_ = "source " + source_ + " stopped answering";
      return AbortStep(StepKind::kPrepareReceive);
    case DestinationPhase::kRestoring:
      reason_ = "source " + source_ + " stopped answering during the restore";
      return AbortStep(StepKind::kRestore);
    case DestinationPhase::kAwaitingImages:
      // Nothing restored, so S cannot have committed; if it comes back it finds the move gone.
      return Drop("source " + source_ + " stopped answering before the restore");
    default:
      return {};  // a restored copy waits for the commit or an answer
  }
}

MachineActions DestinationMachine::OnRecover(RecoverChoice choice, Millis now) {
  if (phase_ == DestinationPhase::kBlockedSourceSilent) {
    if (choice == RecoverChoice::kResumeHere) {
      MachineActions actions = Resume("", false, now);
      actions.push_back(
          ReportAction{id_, ReportKind::kRecovered, 200,
                       "resumed here by the user; its IPC state stayed on " + source_});
      return actions;
    }
    MachineActions actions = Drop("discarded by the user");
    actions.push_back(ReportAction{id_, ReportKind::kRecovered, 200, reason_});
    return actions;
  }
  if (phase_ == DestinationPhase::kBlockedPagesLost) {
    if (choice == RecoverChoice::kResumeHere) {
      return {ReportAction{id_, ReportKind::kFailed, 409,
                           "cannot resume: part of the job's memory is lost; --discard"}};
    }
    MachineActions actions{KillJobAction{id_}};
    for (auto& action : Drop("discarded by the user")) actions.push_back(std::move(action));
    actions.push_back(ReportAction{id_, ReportKind::kRecovered, 200, reason_});
    return actions;
  }
  return {ReportAction{id_, ReportKind::kFailed, 409,
                       "refused: migration " + id_ + " is " + std::string(ToString(phase_)) +
                           " and its outcome can still be learned"}};
}

}  // namespace tern::migrate
