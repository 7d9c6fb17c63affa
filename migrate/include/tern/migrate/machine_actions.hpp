// The actions the migration machines (source_machine.hpp, destination_machine.hpp) return, for
// the agent's adapter to perform in the order given. Which copy each names: a machine runs on
// one node and speaks of the copy of the job on its own node only.
//
//   Send          a message to the peer agent (a request, or the reply to one it got)
//   RunStep       a CRIU step (checkpointer.hpp); its StepResult comes back as an event
//   CancelStep    ask the running step to end early (its result still comes back)
//   Persist       write the record durably before performing any later action
//   Forget        remove the record (nothing about this move needs deciding any more)
//   ResumeJob     SIGCONT the copy here (source: the frozen job; destination: the restored
//                 copy, after InstallIpcState, and adopt it)
//   KillJob       SIGKILL the copy here, by its pinned identity (never a reused pid)
//   DiscardCopy   destination: stop the parked/helper criu processes, remove the images and an
//                 unpacked job directory, kill a restored copy if there is one
//   HandOffIpc    source: take the job's IPC state out of this agent (OnHandOff answers)
//   InstallIpcState  destination: put the job's IPC state in place (before ResumeJob)
//   Report        tell the user's call / the event stream how the move ended or stands
//   ArmTimer      call OnTimer(token) at `at` (one timer per machine: a newer one replaces it)
//
// Thread-safety: plain values.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "tern/migrate/checkpointer.hpp"
#include "tern/migrate/migration_store.hpp"
#include "tern/migrate/protocol_messages.hpp"

namespace tern::migrate {

using Millis = std::chrono::milliseconds;  // a monotonic clock's reading, passed in

struct SendAction {
  Message message;
};
struct RunStepAction {
  StepRequest step;
};
struct CancelStepAction {
  std::string id;
  StepKind kind = StepKind::kDump;
};
struct PersistAction {
  MigrationRecord record;
};
struct ForgetAction {
  std::string id;
};
struct ResumeJobAction {
  std::string id;
};
struct KillJobAction {
  std::string id;
};
struct DiscardCopyAction {
  std::string id;
};
struct HandOffIpcAction {
  std::string id;
};
struct InstallIpcStateAction {
  std::string id;
  std::string state;
};
// Source, right after the commit record: the job's rights the hand-off took out leave this
// agent's IPC journal too. Until then a restart gives them back to the job here, so that a move
// that ends before its commit record resumes the job with its rights (docs/migration.md).
struct SettleIpcAction {
  std::string job_id;
};
// Source restarted with a commit record: the rights an unsettled hand-off left in the journal
// (restored with it) are the destination's now: out of this agent without releasing them,
// before the copy left here is killed (whose end would release them).
struct ForgetMovedIpcAction {
  std::string job_id;
};

enum class ReportKind {
  kMoved,  // the job runs at the destination
  kDryRunPassed,
  kFailed,       // the move is off; the job runs where it was
  kUnconfirmed,  // source: committed, the destination has not confirmed yet (it will ask)
  kBlocked,      // the job is stopped and this node cannot learn what to do (status says why)
  kRecovered,    // destination: the user chose (tern recover) and it was done
};
std::string_view ToString(ReportKind kind);

struct ReportAction {
  std::string id;
  ReportKind kind = ReportKind::kFailed;
  unsigned status = 200;  // for the user's call (HTTP-like)
  std::string message;
  bool retryable = false;  // kFailed: a fresh attempt a moment later usually works
};

struct ArmTimerAction {
  std::string id;
  std::uint64_t token = 0;
  Millis at{0};
};

using MachineAction = std::variant<SendAction, RunStepAction, CancelStepAction, PersistAction,
                                   ForgetAction, ResumeJobAction, KillJobAction, DiscardCopyAction,
                                   HandOffIpcAction, InstallIpcStateAction, SettleIpcAction,
                                   ForgetMovedIpcAction, ReportAction, ArmTimerAction>;
using MachineActions = std::vector<MachineAction>;

}  // namespace tern::migrate
