// The source and destination machines one event at a time: the rules a newcomer reads in their
// headers, checked where a wrong action would leave two copies or none.
#include <gtest/gtest.h>

#include "tern/migrate/destination_machine.hpp"
#include "tern/migrate/source_machine.hpp"

namespace tern::migrate {
namespace {

constexpr char kId[] = "job-1.1-0000abcd";

template <typename T>
int Count(const MachineActions& actions) {
  int n = 0;
  for (const auto& action : actions) n += std::holds_alternative<T>(action);
  return n;
}

template <typename T>
std::size_t IndexOf(const MachineActions& actions) {
  for (std::size_t i = 0; i < actions.size(); ++i) {
    if (std::holds_alternative<T>(actions[i])) return i;
  }
  return actions.size();
}

StepResult Ok(StepKind kind) { return {kId, kind, true}; }

// A source driven to kHandingOff along the happy path.
SourceMachine SourceAtHandOff(MoveMode mode) {
  SourceMachine source({kId, "job-1.1", "d", mode});
  Millis now{0};
  (void)source.Start(now);
  StepResult check = Ok(StepKind::kCheck);
  check.prepare = PrepareRequest{kId, "{}"};
  (void)source.OnStepDone(check, now);
  (void)source.OnMessage(PrepareReply{kId}, now);
  StepResult dumped = Ok(StepKind::kDump);
  dumped.restore = RestoreRequest{kId};
  (void)source.OnStepDone(dumped, now);
  (void)source.OnMessage(RestoreReply{kId}, now);
  EXPECT_EQ(source.phase(), SourcePhase::kHandingOff);
  return source;
}

TEST(SourceMachineTest, TheCommitPointPersistsBeforeItKills) {
  SourceMachine source = SourceAtHandOff(MoveMode::kPreCopy);
  EXPECT_EQ(source.outcome(), Outcome::kPending);
  const auto actions = source.OnHandOff({HandOffOutcome::kExported, "IPC"}, Millis{10});
  ASSERT_LT(IndexOf<PersistAction>(actions), IndexOf<KillJobAction>(actions));
  ASSERT_LT(IndexOf<KillJobAction>(actions), IndexOf<SendAction>(actions));
  // The hand-off's rights leave the journal only once the commit record holds them.
  ASSERT_EQ(Count<SettleIpcAction>(actions), 1);
  EXPECT_EQ(IndexOf<SettleIpcAction>(actions), IndexOf<PersistAction>(actions) + 1);
  EXPECT_EQ(std::get<SettleIpcAction>(actions[IndexOf<SettleIpcAction>(actions)]).job_id,
            "job-1.1");
  const auto& record = std::get<SourceRecord>(std::get<PersistAction>(actions[0]).record);
  EXPECT_EQ(record.stage, SourceStage::kCommitted);
  EXPECT_EQ(record.ipc_state, "IPC");
  EXPECT_EQ(source.phase(), SourcePhase::kCommitting);
  EXPECT_EQ(source.outcome(), Outcome::kCommitted);
  // Past the commit point a lost destination resumes nothing here.
  EXPECT_EQ(Count<ResumeJobAction>(source.OnPeerLost(Millis{11})), 0);
}

TEST(SourceMachineTest, AFailureBeforeTheCommitPersistsAbortedThenResumes) {
  SourceMachine source = SourceAtHandOff(MoveMode::kPreCopy);
  const auto actions = source.OnPeerLost(Millis{5});
  ASSERT_EQ(Count<ResumeJobAction>(actions), 1);
  EXPECT_LT(IndexOf<PersistAction>(actions), IndexOf<ResumeJobAction>(actions));
  EXPECT_EQ(source.phase(), SourcePhase::kAborted);
  EXPECT_EQ(source.outcome(), Outcome::kAborted);
}

TEST(SourceMachineTest, ADestinationLostDuringTheDumpResumesOnlyOnceTheDumpReturns) {
  SourceMachine source({kId, "job-1.1", "d", MoveMode::kPreCopy});
  (void)source.Start(Millis{0});
  StepResult check = Ok(StepKind::kCheck);
  check.prepare = PrepareRequest{kId, "{}"};
  (void)source.OnStepDone(check, Millis{0});
  (void)source.OnMessage(PrepareReply{kId}, Millis{0});
  ASSERT_EQ(source.phase(), SourcePhase::kDumping);
  auto actions = source.OnPeerLost(Millis{1});
  EXPECT_EQ(source.phase(), SourcePhase::kDumpAbandoned);
  EXPECT_EQ(Count<CancelStepAction>(actions), 1);
  EXPECT_EQ(Count<ResumeJobAction>(actions), 0);  // CRIU still holds the tree
  actions = source.OnStepDone({kId, StepKind::kDump, false, false, "cancelled"}, Millis{2});
  EXPECT_EQ(Count<ResumeJobAction>(actions), 1);
  EXPECT_EQ(source.phase(), SourcePhase::kAborted);
}

// A held file lock: pre-copy ends the move (its page server served its one session) and asks
// for a fresh one; post-copy, whose dump needs no page server, tries again within the move.
TEST(SourceMachineTest, ATransientPreCopyDumpFailureAsksForAFreshMoveNotASecondDump) {
  for (MoveMode mode : {MoveMode::kPreCopy, MoveMode::kPostCopy}) {
    SourceMachine source({kId, "job-1.1", "d", mode});
    (void)source.Start(Millis{0});
    StepResult check = Ok(StepKind::kCheck);
    check.prepare = PrepareRequest{kId, "{}"};
    (void)source.OnStepDone(check, Millis{0});
    (void)source.OnMessage(PrepareReply{kId}, Millis{0});
    ASSERT_EQ(source.phase(), SourcePhase::kDumping);
    const auto actions = source.OnStepDone(
        {kId, StepKind::kDump, false, true, "Dumping of file locks failed"}, Millis{1});
    if (mode == MoveMode::kPostCopy) {
      EXPECT_EQ(source.phase(), SourcePhase::kDumpRetryWait);
      EXPECT_EQ(Count<ArmTimerAction>(actions), 1);
      continue;
    }
    EXPECT_EQ(source.phase(), SourcePhase::kAborted);
    EXPECT_EQ(Count<RunStepAction>(actions), 0);
    EXPECT_EQ(Count<ResumeJobAction>(actions), 1);
    ASSERT_LT(IndexOf<ReportAction>(actions), actions.size());
    const auto& report = std::get<ReportAction>(actions[IndexOf<ReportAction>(actions)]);
    EXPECT_EQ(report.kind, ReportKind::kFailed);
    EXPECT_TRUE(report.retryable);
  }
}

TEST(SourceMachineTest, ARestartResumesAFrozenMoveAndRepeatsACommittedOne) {
  auto [frozen, resume] = SourceMachine::Recover(
      {kId, "job-1.1", "d", MoveMode::kPreCopy, SourceStage::kFrozen}, {}, Millis{0});
  EXPECT_EQ(frozen.phase(), SourcePhase::kAborted);
  EXPECT_EQ(Count<ResumeJobAction>(resume), 1);
  auto [committed, commit] = SourceMachine::Recover(
      {kId, "job-1.1", "d", MoveMode::kPreCopy, SourceStage::kCommitted, "IPC"}, {}, Millis{0});
  EXPECT_EQ(committed.phase(), SourcePhase::kCommitting);
  EXPECT_EQ(Count<ResumeJobAction>(commit), 0);
  EXPECT_EQ(Count<KillJobAction>(commit), 1);
  // Rights an unsettled hand-off left in the journal go without release, before the kill.
  ASSERT_EQ(Count<ForgetMovedIpcAction>(commit), 1);
  EXPECT_LT(IndexOf<ForgetMovedIpcAction>(commit), IndexOf<KillJobAction>(commit));
  EXPECT_EQ(Count<ForgetMovedIpcAction>(resume), 0) << "a frozen record: the job resumes here";
  ASSERT_EQ(Count<SendAction>(commit), 1);
  const auto& sent = std::get<SendAction>(commit[IndexOf<SendAction>(commit)]).message;
  EXPECT_EQ(std::get<CommitRequest>(sent).ipc_state, "IPC");
}

TEST(SourceMachineTest, QuestionsAboutAMoveWithoutAMachineAreAnsweredFromTheRecord) {
  const SourceRecord committed{kId,  "job-1.1", "d", MoveMode::kPreCopy, SourceStage::kCommitted,
                               "IPC"};
  auto reply = SourceMachine::AnswerWithoutMachine(OutcomeQuery{kId}, &committed);
  EXPECT_EQ(std::get<OutcomeReply>(reply).outcome, Outcome::kCommitted);
  reply = SourceMachine::AnswerWithoutMachine(IpcStateQuery{kId}, &committed);
  EXPECT_EQ(std::get<IpcStateReply>(reply).state, "IPC");
  reply = SourceMachine::AnswerWithoutMachine(OutcomeQuery{kId}, nullptr);
  EXPECT_EQ(std::get<OutcomeReply>(reply).outcome, Outcome::kUnknown);
}

TEST(SourceMachineTest, ACommitNobodyConfirmsEndsUnacknowledgedAfterItsAttempts) {
  SourceOptions options;
  SourceMachine source = SourceAtHandOff(MoveMode::kPreCopy);
  auto actions = source.OnHandOff({HandOffOutcome::kExported, ""}, Millis{0});
  int sends = 1;
  for (int round = 0; round < 20 && source.phase() == SourcePhase::kCommitting; ++round) {
    const auto& timer = std::get<ArmTimerAction>(actions.back());
    actions = source.OnTimer(timer.token, timer.at);
    sends += Count<SendAction>(actions);
  }
  EXPECT_EQ(source.phase(), SourcePhase::kCommitUnacknowledged);
  EXPECT_EQ(sends, options.commit_attempts);
  EXPECT_EQ(std::get<ReportAction>(actions.back()).kind, ReportKind::kUnconfirmed);
  EXPECT_EQ(source.outcome(), Outcome::kCommitted);
}

// The timer the last restore armed (the silence before D asks).
std::uint64_t restored_timer = 0;

DestinationMachine DestinationRestored(MoveMode mode) {
  PrepareRequest prepare{kId, "{}"};
  prepare.mode = mode;
  auto [destination, ignored] = DestinationMachine::Start(prepare, "s", {}, Millis{0});
  (void)destination.OnStepDone(Ok(StepKind::kCheck), Millis{1});
  (void)destination.OnStepDone(Ok(StepKind::kPrepareReceive), Millis{2});
  (void)destination.OnMessage(RestoreRequest{kId}, Millis{3});
  StepResult restored = Ok(StepKind::kRestore);
  restored.copy_pid = 77;
  const auto actions = destination.OnStepDone(restored, Millis{4});
  // "restored" is durable before the source hears of it.
  EXPECT_LT(IndexOf<PersistAction>(actions), IndexOf<SendAction>(actions));
  EXPECT_EQ(destination.phase(), DestinationPhase::kRestored);
  restored_timer = std::get<ArmTimerAction>(actions[IndexOf<ArmTimerAction>(actions)]).token;
  return std::move(destination);
}

TEST(DestinationMachineTest, AnAbortDuringTheRestoreWaitsForItThenDiscards) {
  PrepareRequest prepare{kId, "{}"};
  auto [destination, ignored] = DestinationMachine::Start(prepare, "s", {}, Millis{0});
  (void)destination.OnStepDone(Ok(StepKind::kCheck), Millis{1});
  (void)destination.OnStepDone(Ok(StepKind::kPrepareReceive), Millis{2});
  (void)destination.OnMessage(RestoreRequest{kId}, Millis{3});
  auto actions = destination.OnMessage(AbortRequest{kId}, Millis{4});
  EXPECT_EQ(destination.phase(), DestinationPhase::kAbortingStep);
  EXPECT_EQ(Count<CancelStepAction>(actions), 1);
  EXPECT_EQ(Count<DiscardCopyAction>(actions), 0);
  actions = destination.OnStepDone(Ok(StepKind::kRestore), Millis{5});
  EXPECT_EQ(Count<DiscardCopyAction>(actions), 1);
  EXPECT_EQ(destination.phase(), DestinationPhase::kAborted);
}

TEST(DestinationMachineTest, ARestoredCopyIsNeverDecidedWithoutTheSource) {
  DestinationMachine destination = DestinationRestored(MoveMode::kPreCopy);
  // S lost: nothing changes, a restored copy waits.
  EXPECT_TRUE(destination.OnSourceLost(Millis{5}).empty());
  // tern recover is refused while the outcome can still be learned.
  auto refused = destination.OnRecover(RecoverChoice::kResumeHere, Millis{6});
  ASSERT_EQ(refused.size(), 1u);
  EXPECT_EQ(std::get<ReportAction>(refused[0]).status, 409u);
  EXPECT_EQ(destination.phase(), DestinationPhase::kRestored);
  // Silence: it asks, then keeps asking, and only after block_after says it is blocked.
  DestinationOptions options;
  Millis now{4};
  std::uint64_t token = restored_timer;
  MachineActions actions;
  for (int round = 0; round < 40 && !destination.blocked(); ++round) {
    now += Millis{options.silence};
    actions = destination.OnTimer(token, now);
    ASSERT_EQ(Count<ResumeJobAction>(actions) + Count<DiscardCopyAction>(actions), 0);
    ASSERT_EQ(Count<ArmTimerAction>(actions), 1);
    token = std::get<ArmTimerAction>(actions[IndexOf<ArmTimerAction>(actions)]).token;
  }
  ASSERT_EQ(destination.phase(), DestinationPhase::kBlockedSourceSilent);
  EXPECT_NE(destination.reason().find("has not answered"), std::string::npos);
  // An answer still resolves it; here the user does.
  actions = destination.OnRecover(RecoverChoice::kResumeHere, now);
  EXPECT_EQ(Count<ResumeJobAction>(actions), 1);
  EXPECT_EQ(destination.phase(), DestinationPhase::kDone);
}

TEST(DestinationMachineTest, AnswersOfTheSourceDecideARestoredCopy) {
  DestinationMachine pending = DestinationRestored(MoveMode::kPreCopy);
  EXPECT_TRUE(pending.OnMessage(OutcomeReply{kId, Outcome::kPending}, Millis{5}).size() == 1);
  EXPECT_EQ(pending.phase(), DestinationPhase::kRestored);

  DestinationMachine aborted = DestinationRestored(MoveMode::kPreCopy);
  EXPECT_EQ(
      Count<DiscardCopyAction>(aborted.OnMessage(OutcomeReply{kId, Outcome::kAborted}, Millis{5})),
      1);

  DestinationMachine committed = DestinationRestored(MoveMode::kPostCopy);
  (void)committed.OnMessage(OutcomeReply{kId, Outcome::kCommitted}, Millis{5});
  EXPECT_EQ(committed.phase(), DestinationPhase::kFetchingIpcState);
  const auto actions = committed.OnMessage(IpcStateReply{kId, 200, "IPC"}, Millis{6});
  EXPECT_LT(IndexOf<InstallIpcStateAction>(actions), IndexOf<ResumeJobAction>(actions));
  EXPECT_EQ(committed.phase(), DestinationPhase::kPullingPages);
  // The pages' source dies: blocked, and only a discard is offered.
  (void)committed.OnStepDone({kId, StepKind::kPullPages, false, false, "EOF"}, Millis{7});
  EXPECT_EQ(committed.phase(), DestinationPhase::kBlockedPagesLost);
  auto refused = committed.OnRecover(RecoverChoice::kResumeHere, Millis{8});
  EXPECT_EQ(std::get<ReportAction>(refused[0]).status, 409u);
  auto discarded = committed.OnRecover(RecoverChoice::kDiscard, Millis{9});
  EXPECT_EQ(Count<KillJobAction>(discarded), 1);
  EXPECT_EQ(committed.phase(), DestinationPhase::kAborted);
}

TEST(SourceMachineTest, TheRecordIsForgottenOnceTheDestinationConfirmedTheCommit) {
  SourceMachine source = SourceAtHandOff(MoveMode::kPreCopy);
  auto actions = source.OnHandOff({HandOffOutcome::kExported, ""}, Millis{0});
  EXPECT_EQ(Count<ForgetAction>(actions), 0) << "D may still ask before it confirms";
  actions = source.OnMessage(CommitReply{kId, 200}, Millis{1});
  EXPECT_EQ(source.phase(), SourcePhase::kDone);
  // Reported first: D resumed (and recorded so) before it answered, so it never asks again.
  EXPECT_LT(IndexOf<ReportAction>(actions), IndexOf<ForgetAction>(actions));
  EXPECT_EQ(Count<ForgetAction>(actions), 1);
  // A restart that finds "aborted" tells D once more and lets the record go.
  auto [aborted, recovered] = SourceMachine::Recover(
      {kId, "job-1.1", "d", MoveMode::kPreCopy, SourceStage::kAborted}, {}, Millis{0});
  EXPECT_LT(IndexOf<SendAction>(recovered), IndexOf<ForgetAction>(recovered));
  EXPECT_EQ(Count<ResumeJobAction>(recovered), 0);
  // Without the record, D's question gets "unknown", which a destination drops its copy on.
  EXPECT_EQ(std::get<OutcomeReply>(SourceMachine::AnswerWithoutMachine(OutcomeQuery{kId}, nullptr))
                .outcome,
            Outcome::kUnknown);
}

TEST(DestinationMachineTest, TheCheckSaysWhetherTheJobDirectoryIsShared) {
  PrepareRequest prepare{kId, "{}"};
  auto [destination, ignored] = DestinationMachine::Start(prepare, "s", {}, Millis{0});
  StepResult checked = Ok(StepKind::kCheck);
  checked.shared_dir = true;
  auto actions = destination.OnStepDone(checked, Millis{1});
  ASSERT_EQ(Count<PersistAction>(actions), 1);
  EXPECT_TRUE(std::get<DestinationRecord>(
                  std::get<PersistAction>(actions[IndexOf<PersistAction>(actions)]).record)
                  .shared_dir);
  actions = destination.OnStepDone(Ok(StepKind::kPrepareReceive), Millis{2});
  const auto& reply = std::get<SendAction>(actions[IndexOf<SendAction>(actions)]).message;
  EXPECT_TRUE(std::get<PrepareReply>(reply).shared_dir);
}

TEST(DestinationMachineTest, RecoverActsOnlyOnABlockedCopyAndSaysWhy) {
  // Before it is blocked: refused, with the phase named, and nothing touched.
  DestinationMachine asking = DestinationRestored(MoveMode::kPreCopy);
  auto refused = asking.OnRecover(RecoverChoice::kDiscard, Millis{5});
  ASSERT_EQ(refused.size(), 1u);
  const auto& refusal = std::get<ReportAction>(refused[0]);
  EXPECT_EQ(refusal.kind, ReportKind::kFailed);
  EXPECT_NE(refusal.message.find("can still be learned"), std::string::npos) << refusal.message;
  EXPECT_NE(refusal.message.find("restored"), std::string::npos) << refusal.message;

  // Blocked (its source silent past block_after): --discard drops the stopped copy.
  DestinationOptions options;
  Millis now{4};
  std::uint64_t token = restored_timer;
  MachineActions actions;
  for (int round = 0; round < 40 && !asking.blocked(); ++round) {
    now += options.silence;
    actions = asking.OnTimer(token, now);
    token = std::get<ArmTimerAction>(actions[IndexOf<ArmTimerAction>(actions)]).token;
  }
  ASSERT_EQ(asking.phase(), DestinationPhase::kBlockedSourceSilent);
  ASSERT_EQ(Count<ReportAction>(actions), 1);
  EXPECT_EQ(std::get<ReportAction>(actions[IndexOf<ReportAction>(actions)]).kind,
            ReportKind::kBlocked);
  EXPECT_NE(asking.reason().find("tern recover"), std::string::npos) << asking.reason();
  actions = asking.OnRecover(RecoverChoice::kDiscard, now);
  EXPECT_EQ(Count<DiscardCopyAction>(actions), 1);
  EXPECT_EQ(Count<ResumeJobAction>(actions), 0);
  EXPECT_EQ(Count<ForgetAction>(actions), 1);
  EXPECT_EQ(std::get<ReportAction>(actions.back()).kind, ReportKind::kRecovered);
  EXPECT_EQ(asking.phase(), DestinationPhase::kAborted);
  // Decided: a second recover is refused.
  EXPECT_EQ(std::get<ReportAction>(asking.OnRecover(RecoverChoice::kResumeHere, now)[0]).status,
            409u);

  // A post-copy copy whose pages are lost after a restart: blocked at once, --discard only.
  auto [lost, reported] = DestinationMachine::Recover(
      {kId, "{}", "s", MoveMode::kPostCopy, false, DestinationStage::kResumed, 77}, {}, Millis{0});
  EXPECT_EQ(lost.phase(), DestinationPhase::kBlockedPagesLost);
  ASSERT_EQ(Count<ReportAction>(reported), 1);
  EXPECT_EQ(std::get<ReportAction>(reported[0]).kind, ReportKind::kBlocked);
  EXPECT_EQ(std::get<ReportAction>(lost.OnRecover(RecoverChoice::kResumeHere, now)[0]).status,
            409u);
  EXPECT_EQ(lost.phase(), DestinationPhase::kBlockedPagesLost);
}

}  // namespace
}  // namespace tern::migrate
