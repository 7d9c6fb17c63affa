// DestinationMachine: one move of a job as its destination agent (D) sees it, without I/O. It
// is made by the source's prepare request (Start) or from its record after a restart
// (Recover); events in (a message from the source S, a CRIU step's result, a timer, S lost,
// the user's `tern recover`), actions out (machine_actions.hpp).
//
//   kChecking ─ok─► kStartingReceiver ─ready─► kAwaitingImages ─images─► kRestoring ─restored─►
//     │ refused: kRefused; dry run: kDryRunPassed    │ S lost / S says        │ abort, S lost:
//     │                                              │ it is not moving       ▼
//     │          abort or S lost while a step runs:  │           kAbortingStep ─step ends─►
//     kAborted │          kAbortingStep                       ▼ │ kAborted ◄─ abort / "aborted" /
//     "unknown" ─┐
//   kRestored ─silence─► kAskingOutcome ─"committed"─► kFetchingIpcState ─state or patience─┤
//     │  ▲  "pending"       │ silent for block_after                                        │
//     │  └──────────────────┤                                                               │
//     │                     ▼                                                               │
//     │               kBlockedSourceSilent (stopped; `tern recover --resume-here|--discard`)│
//     └── commit ──► resume ─► kDone (pre-copy)                                 ◄───────────┘
//                          └─► kPullingPages (post-copy) ─pages in─► kDone
//                                                        └─source gone─► kBlockedPagesLost
//
// Never two, never zero: D resumes its copy only on the commit, or when S answers "committed"
// (decide after silence: a D holding a restored, stopped copy that hears nothing asks S; no
// answer is no decision). It drops a copy only on an abort or on S's "aborted"/"unknown". A
// move that has restored nothing yet is dropped when S goes: S commits only after D said
// "restored". When S stays silent for block_after the copy stays stopped in
// kBlockedSourceSilent, reported with the reason, and D keeps asking; only then does the user's
// `tern recover` act (it is refused while the outcome can still be learned).
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

enum class DestinationPhase {
  kChecking,
  kStartingReceiver,
  kAwaitingImages,
  kRestoring,
  kAbortingStep,
  kRestored,
  kAskingOutcome,
  kFetchingIpcState,
  kPullingPages,
  kDone,
  kDryRunPassed,
  kRefused,
  kAborted,
  kBlockedSourceSilent,
  kBlockedPagesLost,
};
std::string_view ToString(DestinationPhase phase);
inline constexpr int kDestinationPhaseCount = 15;

struct DestinationOptions {
  Millis images_patience{30000};  // prepared, no images: ask S whether it still moves the job
  Millis silence{20000};          // restored, no commit: ask S
  Millis answer_timeout{5000};
  Millis block_after{60000};  // restored and S silent this long: blocked (still asking)
  Millis blocked_ask_interval{10000};
  Millis ipc_patience{30000};  // committed, IPC state not fetched: resume without it
};

enum class RecoverChoice { kResumeHere, kDiscard };

class DestinationMachine {
 public:
  static std::pair<DestinationMachine, MachineActions> Start(PrepareRequest prepare,
                                                             std::string source,
                                                             DestinationOptions options,
                                                             Millis now);
  static std::pair<DestinationMachine, MachineActions> Recover(const DestinationRecord& record,
                                                               DestinationOptions options,
                                                               Millis now);

  // Requests from S and S's replies to D's questions.
  MachineActions OnMessage(const Message& message, Millis now);
  MachineActions OnStepDone(const StepResult& result, Millis now);
  MachineActions OnTimer(std::uint64_t token, Millis now);
  // S turned suspect or dead.
  MachineActions OnSourceLost(Millis now);
  // `tern recover JOB --resume-here|--discard`: acted on only in a blocked phase.
  MachineActions OnRecover(RecoverChoice choice, Millis now);

  DestinationPhase phase() const { return phase_; }
  const std::string& id() const { return id_; }
  const std::string& source() const { return source_; }
  bool blocked() const {
    return phase_ == DestinationPhase::kBlockedSourceSilent ||
           phase_ == DestinationPhase::kBlockedPagesLost;
  }
  // Why it is blocked or failed ("" otherwise): what `tern status` shows.
  const std::string& reason() const { return reason_; }

 private:
  DestinationMachine(std::string id, std::string job, std::string source, MoveMode mode,
                     DestinationOptions options);
  void Arm(MachineActions& actions, Millis at);
  DestinationRecord Record(DestinationStage stage) const;
  MachineActions Drop(std::string reason);
  MachineActions Resume(const std::string& ipc_state, bool reply_commit, Millis now);
  MachineActions Ask(DestinationPhase next, Millis now);
  MachineActions AbortStep(StepKind running);

  std::string id_;
  std::string job_;
  std::string source_;
  MoveMode mode_;
  DestinationOptions options_;
  bool dry_run_ = false;
  bool shared_dir_ = false;
  std::optional<PrepareRequest> prepare_;
  std::string checks_ = "[]";
  DestinationPhase phase_ = DestinationPhase::kChecking;
  StepKind running_ = StepKind::kCheck;  // the step kAbortingStep waits for
  std::uint64_t timer_ = 0;
  std::int64_t copy_pid_ = 0;
  Millis last_heard_{0};    // the last message from S
  Millis committed_at_{0};  // when S's "committed" came (kFetchingIpcState)
  std::string reason_;
};

}  // namespace tern::migrate
