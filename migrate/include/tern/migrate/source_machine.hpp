// SourceMachine: one move of a job as its source agent (S) sees it, without I/O. Events in
// (a CRIU step's result, a message from the destination D, the IPC hand-off's result, a timer,
// D lost), actions out (machine_actions.hpp); the agent's adapter performs them in order.
//
//   kPreflight ─ok─► kPreparing ─ready─► [kPreDumping ─►] kDumping ─dumped─► kTransferring
//      │                 │ dry run: kDryRunPassed        │ ▲ transient failure        │ restored
//      ▼ refused         ▼ refused/silent/lost           ▼ │                          ▼
//   kRefused          kAborted ◄──────────────── kDumpRetryWait (post-copy)   kHandingOff
//                        ▲  ▲ D lost during the dump:                              │ handed off
//                        │  └── kDumpAbandoned (CRIU's dump cut; resume once it returns)
//                        └──── any failure before the commit point ◄──────────────┤
//                                                                                 ▼ (commit point:
//   kCommitUnacknowledged ◄─ 10 unanswered commits ─ kCommitting ◄── persisted "committed",
//        │ late answer                                   │ answered        source copy killed)
//        └──────────────────────────────────────────────►├─► kServingPages (post-copy) ─► kDone
//                                                        └─► kDone
//
// Never two, never zero: before the commit point only S's copy may run, and every failure
// resumes it (after a persisted "aborted"); the commit point persists "committed" before the
// copy is killed, and from there nothing resumes it. Decide after silence: when D does not
// confirm the commit, S stops asking (kCommitUnacknowledged, reported) and answers D's
// questions "committed" from its record; D, which holds a stopped copy, asks
// (destination_machine.hpp). Retry rules: a post-copy dump failing transiently is tried again
// (kDumpRetryWait, at most dump_attempts); a pre-copy one is not (D's page server serves one
// session): the move aborts with a retryable report, and the adapter starts a fresh move, with
// a fresh page server at D (kLockRetries moves for a held lock); the hand-off is polled while the
// job's IPC operations settle (up to hand_off_patience); the commit is sent again every
// commit_retry up to commit_attempts times.
//
// Restart: SourceMachine::Recover rebuilds it from its record (migration_store.hpp). A move
// that has no record was never frozen, or is settled: the adapter answers D's questions
// "unknown" (AnswerWithoutMachine), which D takes as "aborted", and nothing else is owed. The
// record is forgotten once D confirmed the commit (D recorded its resumed copy before it
// answered, so it never asks again) and when a restart found it "aborted" (and told D again).
//
// Thread-safety: not thread-safe; the adapter drives one instance from one thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "tern/migrate/machine_actions.hpp"

namespace tern::migrate {

enum class SourcePhase {
  kPreflight,
  kPreparing,
  kPreDumping,
  kDumping,
  kDumpRetryWait,
  kDumpAbandoned,
  kTransferring,
  kHandingOff,
  kCommitting,
  kServingPages,
  kDone,
  kCommitUnacknowledged,
  kDryRunPassed,
  kRefused,
  kAborted,
};
std::string_view ToString(SourcePhase phase);
inline constexpr int kSourcePhaseCount = 15;

struct SourcePlan {
  std::string id;
  std::string job_id;
  std::string destination;
  MoveMode mode = MoveMode::kPreCopy;
  bool dry_run = false;
  int pre_dumps = 0;  // iterative pre-copy rounds before the dump (needs dirty tracking)
};

struct SourceOptions {
  Millis prepare_timeout{30000};
  Millis restore_timeout{120000};
  int dump_attempts = 5;
  Millis dump_retry{30};
  Millis hand_off_patience{3000};
  Millis hand_off_poll{2};
  Millis commit_answer_timeout{5000};
  Millis commit_retry{1000};
  int commit_attempts = 10;
};

enum class HandOffOutcome { kExported, kBusy, kRefused };
struct HandOffResult {
  HandOffOutcome outcome = HandOffOutcome::kExported;
  std::string state;  // kExported: the IPC state; else why not
};

class SourceMachine {
 public:
  explicit SourceMachine(SourcePlan plan, SourceOptions options = {});

  // Runs the pre-flight (RunStep kCheck).
  MachineActions Start(Millis now);
  // The machine of a move found in the store after a restart, and what it does first.
  static std::pair<SourceMachine, MachineActions> Recover(const SourceRecord& record,
                                                          SourceOptions options, Millis now);
  // D's answer to a question about a move that has no machine here (a record, or none).
  static Reply AnswerWithoutMachine(const Request& query, const SourceRecord* record);

  MachineActions OnStepDone(const StepResult& result, Millis now);
  // Replies from D, and D's questions (OutcomeQuery, IpcStateQuery). Others are ignored.
  MachineActions OnMessage(const Message& message, Millis now);
  MachineActions OnHandOff(const HandOffResult& result, Millis now);
  MachineActions OnTimer(std::uint64_t token, Millis now);
  // D turned suspect or dead, or a call to it failed in the transport.
  MachineActions OnPeerLost(Millis now);
  // The last Persist could not be written; the actions after it were not performed.
  MachineActions OnPersistFailed(Millis now);

  SourcePhase phase() const { return phase_; }
  const SourcePlan& plan() const { return plan_; }
  // What D is told when it asks.
  Outcome outcome() const;
  // True in a phase that waits for nothing (kServingPages still waits for CRIU).
  bool finished() const;
  const std::string& error() const { return error_; }

 private:
  void Enter(SourcePhase phase) { phase_ = phase; }
  void Arm(MachineActions& actions, Millis at);
  void Dump(MachineActions& actions, int attempt);
  MachineActions Abort(std::string error, unsigned status, bool retryable = false);
  MachineActions Committed(Millis now);
  void SendCommit(MachineActions& actions, Millis now);
  SourceRecord Record(SourceStage stage) const;

  SourcePlan plan_;
  SourceOptions options_;
  SourcePhase phase_ = SourcePhase::kPreflight;
  std::uint64_t timer_ = 0;
  bool record_written_ = false;  // a kFrozen record exists: the job may be frozen
  bool serving_ = false;         // post-copy: this agent's lazy dump serves the job's memory
  int dump_attempt_ = 1;
  int pre_dump_round_ = 0;
  int commit_attempt_ = 0;
  Millis hand_off_deadline_{0};
  std::string ipc_state_;
  std::string error_;
};

}  // namespace tern::migrate
