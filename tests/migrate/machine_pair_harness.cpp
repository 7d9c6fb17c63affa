// The world of machine_pair_harness.hpp. Over 800 lines because it is one simulation: the two
// agents, their stores, the link, the scripted Checkpointer and every fault act on the same
// event queue and copies of the job, and Verdict reads all of them.
#include "machine_pair_harness.hpp"

#include <functional>
#include <map>
#include <optional>
#include <queue>
#include <random>
#include <sstream>

#include "tern/migrate/protocol_codec.hpp"

namespace tern::migrate::testing {

std::string ToString(Fault fault) {
  switch (fault) {
    case Fault::kNone:
      return "none";
    case Fault::kKillSourceRestart:
      return "kill_source_restart";
    case Fault::kKillSourceForever:
      return "kill_source_forever";
    case Fault::kKillDestinationRestart:
      return "kill_destination_restart";
    case Fault::kKillDestinationForever:
      return "kill_destination_forever";
    case Fault::kCutLink:
      return "cut_link";
    case Fault::kLoseMessage:
      return "lose_message";
    case Fault::kDuplicateMessage:
      return "duplicate_message";
    case Fault::kDelayMessage:
      return "delay_message";
    case Fault::kReorderMessages:
      return "reorder_messages";
    case Fault::kStepFails:
      return "step_fails";
    case Fault::kStepFailsTransiently:
      return "step_fails_transiently";
  }
  return "?";
}

namespace {

std::string PhaseName(Side side, int phase) {
  return std::string(side == Side::kSource ? "S:" : "D:") +
         std::string(side == Side::kSource ? ToString(static_cast<SourcePhase>(phase))
                                           : ToString(static_cast<DestinationPhase>(phase)));
}

std::string Describe(const FaultAt& at) {
  return ToString(at.fault) + "@" + PhaseName(at.side, at.phase);
}

}  // namespace

std::string Describe(const Scenario& s) {
  std::ostringstream out;
  out << ToString(s.mode) << (s.dry_run ? " dry-run" : "") << " pre_dumps=" << s.pre_dumps
      << (s.first_dump_transient_failure ? " first-dump-transient" : "")
      << (s.destination_refuses ? " destination-refuses" : "");
  if (s.built_in.fault != Fault::kNone) out << " built-in " << Describe(s.built_in);
  out << " injected " << Describe(s.injected) << " seed " << s.seed;
  return out.str();
}

namespace {

enum class Copy { kNone, kRunning, kFrozen, kStopped, kDead };

const char* Name(Copy copy) {
  switch (copy) {
    case Copy::kNone:
      return "none";
    case Copy::kRunning:
      return "running";
    case Copy::kFrozen:
      return "frozen";
    case Copy::kStopped:
      return "stopped";
    case Copy::kDead:
      return "dead";
  }
  return "?";
}

constexpr Millis kHorizon{900000};
constexpr Millis kRestartAfter{2000};
constexpr char kId[] = "job-1.1-0000abcd";
constexpr char kJob[] = R"({"id":"job-1.1","node":"s"})";

bool IsKill(Fault fault) {
  return fault == Fault::kKillSourceRestart || fault == Fault::kKillSourceForever ||
         fault == Fault::kKillDestinationRestart || fault == Fault::kKillDestinationForever;
}

bool IsMessageFault(Fault fault) {
  return fault == Fault::kLoseMessage || fault == Fault::kDuplicateMessage ||
         fault == Fault::kDelayMessage || fault == Fault::kReorderMessages;
}

bool IsStepFault(Fault fault) {
  return fault == Fault::kStepFails || fault == Fault::kStepFailsTransiently;
}

// The request a reply answers, as the codec needs it to decode the reply.
Request AnsweredBy(const Message& reply) {
  const std::string& id = IdOf(reply);
  switch (reply.index()) {
    case 6:
      return PrepareRequest{id};
    case 7:
      return RestoreRequest{id};
    case 8:
      return CommitRequest{id};
    case 9:
      return AbortRequest{id};
    case 10:
      return OutcomeQuery{id};
    default:
      return IpcStateQuery{id};
  }
}

Request AsRequest(const Message& message) {
  return std::visit(
      [](const auto& m) -> Request {
        if constexpr (std::is_constructible_v<Request, decltype(m)>) {
          return Request{m};
        } else {
          return Request{};
        }
      },
      message);
}

Reply AsReply(const Message& message) {
  return std::visit(
      [](const auto& m) -> Reply {
        if constexpr (std::is_constructible_v<Reply, decltype(m)>) {
          return Reply{m};
        } else {
          return Reply{};
        }
      },
      message);
}

class World {
 public:
  explicit World(const Scenario& scenario) : scenario_(scenario), random_(scenario.seed) {
    faults_[0] = scenario.built_in;
    faults_[1] = scenario.injected;
  }

  Verdict Run() {
    At(Millis{0}, [this] {
      SourcePlan plan{kId, "job-1.1", "d", scenario_.mode, scenario_.dry_run, scenario_.pre_dumps};
      source_.emplace(plan);
      Drive(Side::kSource, source_->Start(now_));
    });
    while (!queue_.empty() && queue_.top().at <= kHorizon) {
      Event event = queue_.top();
      queue_.pop();
      now_ = event.at;
      event.fn();
    }
    return Judge();
  }

 private:
  struct Event {
    Millis at;
    std::uint64_t seq;
    std::function<void()> fn;
  };
  struct Later {
    bool operator()(const Event& a, const Event& b) const {
      return a.at != b.at ? a.at > b.at : a.seq > b.seq;
    }
  };
  struct Node {
    bool up = true;
    bool gone = false;
    bool killed = false;
    int incarnation = 0;
    std::map<std::string, MigrationRecord> store;
    std::map<StepKind, std::uint64_t> steps;  // running steps, by their generation
    int step_faults = 0;                      // armed: the next step fails
    bool step_fault_transient = false;
    int step_fault_slot = 0;
  };
  struct Wire {
    Side from;
    bool request;
    WireCall call;
    WireAnswer answer;
    Request answered;
  };

  void At(Millis at, std::function<void()> fn) { queue_.push({at, ++seq_, std::move(fn)}); }
  Node& NodeOf(Side side) { return side == Side::kSource ? s_ : d_; }
  void Log(const std::string& line) {
    verdict_.log.push_back(std::to_string(now_.count()) + "ms " + line);
  }
  void Violation(const std::string& what) {
    if (violation_.empty()) violation_ = what;
    Log("VIOLATION: " + what);
  }

  int PhaseOf(Side side) const {
    if (side == Side::kSource) return source_ ? static_cast<int>(source_->phase()) : -1;
    return dest_ ? static_cast<int>(dest_->phase()) : -1;
  }

  void CheckCopies() {
    const int running = (src_ == Copy::kRunning) + (dst_ == Copy::kRunning);
    if (running > 1) Violation("two copies of the job run at once");
  }

  // After a machine handled an event: note its phase, fire the faults keyed to it, perform.
  void Drive(Side side, MachineActions actions) {
    const int phase = PhaseOf(side);
    if (phase >= 0) {
      (side == Side::kSource ? verdict_.source_phases_seen : verdict_.destination_phases_seen)
          .insert(PhaseName(side, phase).substr(2));
    }
    std::vector<int> kills;
    for (int slot = 0; slot < 2; ++slot) {
      const FaultAt& at = faults_[slot];
      if (fired_[slot] || armed_[slot] || at.fault == Fault::kNone || at.side != side ||
          at.phase != phase) {
        continue;
      }
      if (IsKill(at.fault)) {
        kills.push_back(slot);
      } else {
        Arm(slot);
      }
    }
    // Half the seeds kill the agent before it performs what it decided, half right after.
    // (The agent killed may be the peer: then this one still performs what it decided.)
    const bool kill_first = scenario_.seed % 2 == 0;
    if (kill_first) {
      for (int slot : kills) FireKill(slot);
    }
    Perform(side, std::move(actions));  // nothing if this agent died
    if (!kill_first) {
      for (int slot : kills) FireKill(slot);
    }
  }

  void Arm(int slot) {
    const FaultAt& at = faults_[slot];
    armed_[slot] = true;
    Log("fault armed: " + Describe(at));
    if (at.fault == Fault::kCutLink) {
      fired_[slot] = true;
      armed_[slot] = false;
      CutLink(Millis{at.cut_ms});
    } else if (IsMessageFault(at.fault)) {
      message_faults_.push_back(slot);
    } else if (IsStepFault(at.fault)) {
      Node& node = NodeOf(at.side);
      node.step_faults = 1;
      node.step_fault_transient = at.fault == Fault::kStepFailsTransiently;
      node.step_fault_slot = slot;
      // A step running now fails; else the next one started.
      if (!node.steps.empty()) {
        const auto [kind, gen] = *node.steps.rbegin();
        if (kind != StepKind::kServePages) {
          node.step_faults = 0;
          fired_[slot] = true;
          FinishEarly(at.side, kind, "injected CRIU failure", node.step_fault_transient);
        }
      }
    }
  }

  void FireKill(int slot) {
    fired_[slot] = true;
    const Fault fault = faults_[slot].fault;
    Log("fault: " + Describe(faults_[slot]));
    const Side side = fault == Fault::kKillSourceRestart || fault == Fault::kKillSourceForever
                          ? Side::kSource
                          : Side::kDestination;
    Kill(side, fault == Fault::kKillSourceForever || fault == Fault::kKillDestinationForever);
  }

  // ---------------------------------------------------------------- the agents' adapters

  void Perform(Side side, MachineActions actions) {
    Node& node = NodeOf(side);
    const int incarnation = node.incarnation;
    for (auto& action : actions) {
      if (!node.up || node.incarnation != incarnation) return;  // it died meanwhile
      std::visit([&](auto& a) { Do(side, a); }, action);
      CheckCopies();
    }
  }

  void Do(Side side, SendAction& a) { Transmit(side, std::move(a.message)); }
  void Do(Side side, RunStepAction& a) { StartStep(side, a.step); }
  void Do(Side side, CancelStepAction& a) {
    if (NodeOf(side).steps.count(a.kind)) FinishEarly(side, a.kind, "cancelled", false);
  }
  void Do(Side side, PersistAction& a) {
    NodeOf(side).store[kId] = a.record;
    if (const auto* record = std::get_if<DestinationRecord>(&a.record)) {
      dst_confirmed_ = dst_confirmed_ || record->stage == DestinationStage::kRestored;
    }
    Log(std::string(side == Side::kSource ? "S" : "D") + " persists " +
        (std::holds_alternative<SourceRecord>(a.record)
             ? std::string(ToString(std::get<SourceRecord>(a.record).stage))
             : std::string(ToString(std::get<DestinationRecord>(a.record).stage))));
    // What a store writes must read back the same.
    auto decoded = DecodeRecord(EncodeRecord(a.record));
    if (!decoded || !(*decoded == a.record)) Violation("a record does not read back");
  }
  void Do(Side side, ForgetAction&) {
    auto& store = NodeOf(side).store;
    if (const auto found = store.find(kId); found != store.end()) {
      const auto* record = std::get_if<SourceRecord>(&found->second);
      // S lets "committed" go once D confirmed: the move was committed all the same.
      source_forgot_commit_ =
          source_forgot_commit_ || (record && record->stage == SourceStage::kCommitted);
    }
    store.erase(kId);
  }
  void Do(Side side, ResumeJobAction&) {
    if (side == Side::kSource) {
      if (src_ == Copy::kFrozen) src_ = Copy::kRunning;
      if (src_ != Copy::kRunning) Violation("S resumes a copy that is " + std::string(Name(src_)));
      serving_ = false;
    } else {
      if (dst_ != Copy::kStopped && dst_ != Copy::kRunning) {
        Violation("D resumes a copy that is " + std::string(Name(dst_)));
      }
      dst_ = dst_ == Copy::kStopped ? Copy::kRunning : dst_;
    }
    Log(std::string(side == Side::kSource ? "S" : "D") + " resumes its copy");
  }
  void Do(Side side, KillJobAction&) {
    Copy& copy = side == Side::kSource ? src_ : dst_;
    if (side == Side::kSource && copy == Copy::kRunning) Violation("S kills its running copy");
    if (copy != Copy::kNone) copy = Copy::kDead;
    Log(std::string(side == Side::kSource ? "S" : "D") + " kills its copy");
  }
  void Do(Side side, DiscardCopyAction&) {
    if (side != Side::kDestination) return;
    if (dst_ == Copy::kRunning) Violation("D discards a running copy");
    if (dst_ == Copy::kStopped) dst_ = Copy::kDead;
  }
  void Do(Side side, HandOffIpcAction&) {
    const int incarnation = s_.incarnation;
    const bool busy = random_() % 3 == 0;
    At(now_ + Millis{1 + static_cast<int>(random_() % 3)}, [this, side, incarnation, busy] {
      if (!s_.up || s_.incarnation != incarnation || !source_) return;
      HandOffResult result{busy ? HandOffOutcome::kBusy : HandOffOutcome::kExported,
                           busy ? "a send in flight" : "IPC-STATE"};
      Drive(side, source_->OnHandOff(result, now_));
    });
  }
  void Do(Side, InstallIpcStateAction& a) { ipc_installed_ = a.state; }
  // The IPC journal is the agent's (PortRouterDurable tests it): here the order is what counts,
  // which machines_test checks.
  void Do(Side, SettleIpcAction&) { Log("S settles the IPC hand-off"); }
  void Do(Side, ForgetMovedIpcAction&) { Log("S forgets the moved job's IPC"); }
  void Do(Side side, ReportAction& a) {
    Log(std::string(side == Side::kSource ? "S" : "D") + " reports " +
        std::string(ToString(a.kind)) + ": " + a.message);
    if (a.kind == ReportKind::kBlocked && a.message.empty()) Violation("blocked without a reason");
    if (side == Side::kSource && a.kind == ReportKind::kFailed && a.retryable) {
      verdict_.source_asked_for_a_fresh_move = true;
    }
  }
  void Do(Side side, ArmTimerAction& a) {
    Node& node = NodeOf(side);
    const int incarnation = node.incarnation;
    const std::uint64_t token = a.token;
    At(std::max(a.at, now_), [this, side, incarnation, token] {
      Node& n = NodeOf(side);
      if (!n.up || n.incarnation != incarnation) return;
      if (side == Side::kSource && source_) Drive(side, source_->OnTimer(token, now_));
      if (side == Side::kDestination && dest_) Drive(side, dest_->OnTimer(token, now_));
    });
  }

  // ---------------------------------------------------------------- the link

  void Transmit(Side from, Message message) {
    Log(std::string(from == Side::kSource ? "S->D " : "D->S ") + std::string(NameOf(message)));
    Wire wire{from, IsRequest(message), {}, {}, {}};
    if (wire.request) {
      wire.call = Encode(AsRequest(message));
    } else {
      wire.answered = AnsweredBy(message);
      wire.answer = Encode(AsReply(message));
    }
    if (!link_up_) return;
    Millis latency{1 + static_cast<int>(random_() % 20)};
    if (!message_faults_.empty()) {
      const int slot = message_faults_.front();
      message_faults_.erase(message_faults_.begin());
      fired_[slot] = true;
      armed_[slot] = false;
      const Fault fault = faults_[slot].fault;
      Log("fault: " + Describe(faults_[slot]) + " on " + std::string(NameOf(message)));
      switch (fault) {
        case Fault::kLoseMessage:
          return;
        case Fault::kDuplicateMessage:
          Deliver(wire, latency + Millis{50});
          break;
        case Fault::kDelayMessage:
          latency += Millis{15000};
          break;
        case Fault::kReorderMessages:
          held_ = wire;
          held_epoch_ = link_epoch_;
          At(now_ + Millis{3000}, [this] { ReleaseHeld(Millis{0}); });
          return;
        default:
          break;
      }
    }
    Deliver(wire, latency);
    if (held_ && held_->from == from) ReleaseHeld(latency + Millis{1});
  }

  void ReleaseHeld(Millis after) {
    if (!held_) return;
    Wire wire = std::move(*held_);
    held_.reset();
    if (held_epoch_ == link_epoch_) Deliver(wire, after);
  }

  void Deliver(const Wire& wire, Millis after) {
    const std::uint64_t epoch = link_epoch_;
    At(now_ + after, [this, wire, epoch] {
      // A cut or a dead agent takes what was in flight with it.
      if (epoch != link_epoch_ || !link_up_) return;
      const Side to = wire.from == Side::kSource ? Side::kDestination : Side::kSource;
      if (!NodeOf(to).up) return;
      Message message;
      if (wire.request) {
        auto decoded = DecodeRequest(wire.call.method, wire.call.target, wire.call.body);
        if (!decoded)
          return Violation("the codec refused its own request: " + decoded.error().message);
        message = ToMessage(*decoded);
      } else {
        auto decoded = DecodeReply(wire.answered, wire.answer);
        if (!decoded) {
          // An answer the codec cannot read is no answer (an OutcomeReply's transport error).
          Log("undecodable answer: " + decoded.error().message);
          return;
        }
        message = ToMessage(*decoded);
      }
      Receive(to, message);
    });
  }

  void Receive(Side to, const Message& message) {
    if (to == Side::kSource) {
      if (source_) return Drive(to, source_->OnMessage(message, now_));
      if (std::holds_alternative<OutcomeQuery>(message) ||
          std::holds_alternative<IpcStateQuery>(message)) {
        const auto found = s_.store.find(kId);
        const SourceRecord* record =
            found == s_.store.end() ? nullptr : std::get_if<SourceRecord>(&found->second);
        Transmit(to, ToMessage(SourceMachine::AnswerWithoutMachine(AsRequest(message), record)));
      }
      return;
    }
    if (dest_) return Drive(to, dest_->OnMessage(message, now_));
    if (const auto* prepare = std::get_if<PrepareRequest>(&message)) {
      auto [machine, actions] = DestinationMachine::Start(*prepare, "s", {}, now_);
      dest_.emplace(std::move(machine));
      return Drive(to, std::move(actions));
    }
    // The adapter's answers for a move it has no machine for.
    if (std::holds_alternative<RestoreRequest>(message)) {
      Transmit(to, RestoreReply{kId, 404, "no migration is received here"});
    } else if (std::holds_alternative<CommitRequest>(message)) {
      Transmit(to, dst_ == Copy::kRunning ? CommitReply{kId, 200, "", kJob}
                                          : CommitReply{kId, 404, "no restored copy here"});
    } else if (std::holds_alternative<AbortRequest>(message)) {
      Transmit(to, AbortReply{kId});
    }
  }

  void CutLink(Millis how_long) {
    Log("link cut for " + std::to_string(how_long.count()) + " ms");
    link_up_ = false;
    ++link_epoch_;
    held_.reset();
    PeerLost(Side::kSource);
    PeerLost(Side::kDestination);
    At(now_ + how_long, [this] {
      link_up_ = true;
      Log("link back");
    });
  }

  // `side` learns (membership: suspect) that its peer is gone.
  void PeerLost(Side side) {
    At(now_, [this, side, incarnation = NodeOf(side).incarnation] {
      Node& node = NodeOf(side);
      if (!node.up || node.incarnation != incarnation) return;
      if (side == Side::kSource && source_) Drive(side, source_->OnPeerLost(now_));
      if (side == Side::kDestination && dest_) Drive(side, dest_->OnSourceLost(now_));
    });
  }

  // ---------------------------------------------------------------- agents dying

  void Kill(Side side, bool forever) {
    Node& node = NodeOf(side);
    if (!node.up) return;
    Log(std::string(side == Side::kSource ? "S" : "D") + " killed" + (forever ? " for good" : ""));
    node.up = false;
    node.killed = true;
    ++node.incarnation;
    node.steps.clear();
    ++link_epoch_;
    held_.reset();
    if (side == Side::kSource) {
      source_.reset();
      if (serving_) serving_lost_ = true;  // its lazy dump ends with it
      serving_ = false;
      if (forever && (src_ == Copy::kRunning || src_ == Copy::kFrozen)) src_ = Copy::kDead;
    } else {
      dest_.reset();
      if (dst_ == Copy::kRunning && scenario_.mode == MoveMode::kPostCopy) pulling_broken_ = true;
      if (forever && dst_ != Copy::kNone) dst_ = Copy::kDead;
      // S's lazy dump loses its reader.
      if (s_.steps.count(StepKind::kServePages)) {
        FinishEarly(Side::kSource, StepKind::kServePages, "the destination went away", false);
      }
    }
    PeerLost(side == Side::kSource ? Side::kDestination : Side::kSource);
    if (forever) {
      node.gone = true;
      return;
    }
    At(now_ + kRestartAfter, [this, side] { Restart(side); });
  }

  void Restart(Side side) {
    Node& node = NodeOf(side);
    node.up = true;
    Log(std::string(side == Side::kSource ? "S" : "D") + " restarts");
    const auto found = node.store.find(kId);
    if (found == node.store.end()) return;
    if (side == Side::kSource) {
      auto [machine, actions] =
          SourceMachine::Recover(std::get<SourceRecord>(found->second), {}, now_);
      source_.emplace(std::move(machine));
      Drive(side, std::move(actions));
    } else {
      auto [machine, actions] =
          DestinationMachine::Recover(std::get<DestinationRecord>(found->second), {}, now_);
      dest_.emplace(std::move(machine));
      Drive(side, std::move(actions));
    }
  }

  // ---------------------------------------------------------------- the Checkpointer

  Millis DurationOf(StepKind kind) const {
    switch (kind) {
      case StepKind::kCheck:
        return Millis{20};
      case StepKind::kPreDump:
        return Millis{50};
      case StepKind::kDump:
        return Millis{scenario_.mode == MoveMode::kPostCopy ? 60 : 100};
      case StepKind::kPrepareReceive:
        return Millis{30};
      case StepKind::kRestore:
        return Millis{80};
      case StepKind::kPullPages:
        return Millis{300};
      case StepKind::kServePages:
        return Millis{0};
    }
    return Millis{10};
  }

  void StartStep(Side side, const StepRequest& request) {
    Node& node = NodeOf(side);
    const std::uint64_t gen = ++step_gen_;
    node.steps[request.kind] = gen;
    Log(std::string(side == Side::kSource ? "S" : "D") + " runs " +
        std::string(ToString(request.kind)));
    bool fail = false, transient = false;
    std::string error;
    if (node.step_faults > 0 && request.kind != StepKind::kServePages) {
      node.step_faults = 0;
      fired_[node.step_fault_slot] = true;
      armed_[node.step_fault_slot] = false;
      fail = true;
      transient = node.step_fault_transient;
      error = transient ? "injected: file locks held (transient)" : "injected CRIU failure";
    }
    if (side == Side::kSource && request.kind == StepKind::kDump && request.attempt > 1 &&
        scenario_.mode == MoveMode::kPreCopy) {
      // D's page server served the first attempt's session and is gone, as CRIU's is.
      Violation("a pre-copy dump was tried again against the page server of its first attempt");
      fail = true;
      error = "Unable to detach from 42: No such process (nobody listens on the page server)";
    }
    if (side == Side::kSource && request.kind == StepKind::kDump && request.attempt == 1 &&
        scenario_.first_dump_transient_failure) {
      fail = true;
      transient = true;
      error = "Dumping of file locks failed";
    }
    if (side == Side::kDestination && request.kind == StepKind::kCheck &&
        (scenario_.destination_refuses || dst_ == Copy::kRunning)) {
      fail = true;
      error = dst_ == Copy::kRunning ? "the job already runs here" : "criu cpuinfo check failed";
    }
    if (side == Side::kSource && request.kind == StepKind::kDump && src_ == Copy::kRunning) {
      src_ = Copy::kFrozen;
    }
    if (request.kind == StepKind::kServePages) return;  // ends with the destination's pull
    if (request.kind == StepKind::kPullPages) {
      At(now_ + DurationOf(request.kind), [this, gen] { PullPages(gen); });
      return;
    }
    At(now_ + DurationOf(request.kind), [this, side, request, gen, fail, transient, error] {
      Node& n = NodeOf(side);
      const auto running = n.steps.find(request.kind);
      if (!n.up || running == n.steps.end() || running->second != gen) return;
      n.steps.erase(running);
      Complete(side, request.kind, !fail, transient, error);
    });
  }

  void PullPages(std::uint64_t gen) {
    const auto running = d_.steps.find(StepKind::kPullPages);
    if (!d_.up || running == d_.steps.end() || running->second != gen) return;
    if (serving_ && !link_up_) {  // the pages wait for the link
      At(now_ + Millis{100}, [this, gen] { PullPages(gen); });
      return;
    }
    d_.steps.erase(running);
    const bool ok = serving_;
    if (ok && s_.up && s_.steps.count(StepKind::kServePages)) {
      s_.steps.erase(StepKind::kServePages);
      serving_ = false;
      At(now_, [this, incarnation = s_.incarnation] {
        if (!s_.up || s_.incarnation != incarnation) return;
        Complete(Side::kSource, StepKind::kServePages, true, false, "");
      });
    }
    if (!ok) pulling_broken_ = true;
    Complete(Side::kDestination, StepKind::kPullPages, ok, false,
             ok ? "" : "the connection to the source's page server was lost");
  }

  void FinishEarly(Side side, StepKind kind, const std::string& why, bool transient) {
    Node& node = NodeOf(side);
    const std::uint64_t gen = ++step_gen_;
    node.steps[kind] = gen;
    At(now_ + Millis{5}, [this, side, kind, gen, why, transient] {
      Node& n = NodeOf(side);
      const auto running = n.steps.find(kind);
      if (!n.up || running == n.steps.end() || running->second != gen) return;
      n.steps.erase(running);
      if (kind == StepKind::kPullPages) pulling_broken_ = true;
      Complete(side, kind, false, transient, why);
    });
  }

  void Complete(Side side, StepKind kind, bool ok, bool transient, const std::string& error) {
    StepResult result{kId, kind, ok, transient, error};
    Log(std::string(side == Side::kSource ? "S" : "D") + " step " + std::string(ToString(kind)) +
        (ok ? " done" : " failed: " + error));
    if (side == Side::kSource) {
      if (kind == StepKind::kCheck && ok) {
        PrepareRequest prepare{kId, kJob};
        prepare.channel = "socket:[1234]";
        prepare.cpuinfo = std::string("\x01\x02\xff", 3);
        prepare.rss_bytes = 64ull << 20;
        prepare.outside.push_back({"/etc/hosts", 120, 0, 0, 0100644, std::string(64, 'a')});
        prepare.lazy_source = {"10.0.0.1", 7300};
        result.prepare = prepare;
      }
      if (kind == StepKind::kDump) {
        if (ok) {
          result.restore = RestoreRequest{kId, "IMAGES", "JOBDIR"};
          if (scenario_.mode == MoveMode::kPostCopy) serving_ = true;
        } else if (src_ == Copy::kFrozen) {
          src_ = Copy::kRunning;  // CRIU thaws a tree it failed to dump
        }
      }
      if (source_) Drive(side, source_->OnStepDone(result, now_));
      return;
    }
    if (kind == StepKind::kPrepareReceive && ok && scenario_.mode == MoveMode::kPreCopy) {
      result.page_server = Endpoint{"10.0.0.2", 7200};
    }
    if (kind == StepKind::kRestore && ok) {
      dst_ = Copy::kStopped;
      dst_ever_stopped_ = true;
      result.copy_pid = 4242;
    }
    CheckCopies();
    if (dest_) Drive(side, dest_->OnStepDone(result, now_));
  }

  // ---------------------------------------------------------------- the verdict

  Verdict Judge() {
    verdict_.injected_fired = fired_[1];
    verdict_.source_phase = source_ ? std::string(ToString(source_->phase())) : "(none)";
    verdict_.destination_phase = dest_ ? std::string(ToString(dest_->phase())) : "(none)";
    const std::string copies = std::string("source copy ") + Name(src_) + ", destination copy " +
                               Name(dst_) + "; S " + verdict_.source_phase + ", D " +
                               verdict_.destination_phase;
    if (!violation_.empty()) return Fails(violation_ + " (" + copies + ")");
    // Nothing may wait forever: S ends its move, D ends it or says why it cannot.
    if (s_.up && source_ && !source_->finished()) {
      return Fails("the source is left waiting (" + copies + ")");
    }
    if (d_.up && dest_) {
      switch (dest_->phase()) {
        case DestinationPhase::kDone:
        case DestinationPhase::kAborted:
        case DestinationPhase::kRefused:
        case DestinationPhase::kDryRunPassed:
        case DestinationPhase::kBlockedSourceSilent:
        case DestinationPhase::kBlockedPagesLost:
          break;
        default:
          return Fails("the destination is left waiting (" + copies + ")");
      }
    }
    const bool broken_pages = dest_ && dest_->phase() == DestinationPhase::kBlockedPagesLost;
    const int running = (src_ == Copy::kRunning) + (dst_ == Copy::kRunning && !broken_pages);
    if (running == 1) {
      if (src_ == Copy::kRunning && dst_ == Copy::kStopped) {
        return Fails("a stopped copy is left at the destination (" + copies + ")");
      }
      if (dst_ == Copy::kRunning && src_ == Copy::kFrozen) {
        return Fails("a frozen copy is left at the source (" + copies + ")");
      }
      verdict_.ok = true;
      verdict_.outcome =
          src_ == Copy::kRunning ? "one copy, on the source" : "one copy, on the destination";
      return verdict_;
    }
    if (running > 1) return Fails("two copies run (" + copies + ")");
    if (dest_ && dest_->blocked()) {
      if (dest_->reason().empty()) return Fails("blocked without a reason");
      if (dest_->phase() == DestinationPhase::kBlockedSourceSilent && !s_.gone) {
        return Fails("blocked although the source is back (" + copies + ")");
      }
      if (broken_pages && !serving_lost_ && !pulling_broken_ && !d_.killed) {
        return Fails("pages lost although their source kept serving (" + copies + ")");
      }
      // What the user then does: tern recover (no fault is injected into that).
      fired_[0] = fired_[1] = true;
      message_faults_.clear();
      const bool silent = dest_->phase() == DestinationPhase::kBlockedSourceSilent;
      Drive(Side::kDestination,
            dest_->OnRecover(silent ? RecoverChoice::kResumeHere : RecoverChoice::kDiscard, now_));
      if (silent && dst_ != Copy::kRunning) {
        return Fails("tern recover --resume-here did not resume the copy (" + copies + ")");
      }
      if (!violation_.empty()) return Fails(violation_);
      verdict_.ok = true;
      verdict_.outcome = "blocked (" + std::string(silent ? "source silent" : "pages lost") +
                         "), then recovered by the user";
      return verdict_;
    }
    // S's node held the only copy D could use: D never told S "restored", so S cannot
    // have committed, and D drops what it has not confirmed (or D's node went too).
    if (s_.gone && (!dst_confirmed_ || d_.gone)) {
      verdict_.ok = true;
      verdict_.outcome = d_.gone ? "lost with both nodes" : "lost with the source's node";
      return verdict_;
    }
    if (d_.gone) {
      const auto found = s_.store.find(kId);
      const bool committed =
          source_forgot_commit_ ||
          (found != s_.store.end() &&
           std::get<SourceRecord>(found->second).stage == SourceStage::kCommitted);
      if (committed) {
        verdict_.ok = true;
        verdict_.outcome = "lost with the destination's node (committed there)";
        return verdict_;
      }
    }
    return Fails("no copy runs (" + copies + ")");
  }

  Verdict Fails(const std::string& why) {
    verdict_.ok = false;
    verdict_.why = why;
    return verdict_;
  }

  Scenario scenario_;
  std::mt19937_64 random_;
  std::priority_queue<Event, std::vector<Event>, Later> queue_;
  std::uint64_t seq_ = 0;
  Millis now_{0};
  Node s_, d_;
  bool source_forgot_commit_ = false;
  std::optional<SourceMachine> source_;
  std::optional<DestinationMachine> dest_;
  Copy src_ = Copy::kRunning;
  Copy dst_ = Copy::kNone;
  bool dst_ever_stopped_ = false;
  bool dst_confirmed_ = false;  // D recorded "restored" (and may have told S)
  bool serving_ = false;
  bool serving_lost_ = false;
  bool pulling_broken_ = false;
  bool link_up_ = true;
  std::uint64_t link_epoch_ = 0;
  std::optional<Wire> held_;
  std::uint64_t held_epoch_ = 0;
  std::uint64_t step_gen_ = 0;
  FaultAt faults_[2];
  bool fired_[2] = {false, false};
  bool armed_[2] = {false, false};
  std::vector<int> message_faults_;
  std::string ipc_installed_;
  std::string violation_;
  Verdict verdict_;
};

}  // namespace

Verdict RunScenario(const Scenario& scenario) { return World(scenario).Run(); }

}  // namespace tern::migrate::testing
