// Checkpointer: the seam between the migration machines and CRIU, as LevelDB's Env is for
// files. A machine never runs CRIU; it emits RunStep actions (machine_actions.hpp), the agent's
// adapter hands each to a Checkpointer on a worker thread, and the StepResult goes back to the
// machine as an event. The real one drives criu (migrate/criu.hpp: Dump, ParkRestore,
// FinishRestore, LazyDumpCommand, ...); tests use a scripted one that can fail any step.
//
// Steps, by side:
//   source       kCheck (criu check, cpuinfo, scan of the job) -> result.prepare filled in
//                kPreDump (optional; the job keeps running)   kDump (freezes the job, leaves it
//                stopped; pre-copy streams the pages to D's page server, post-copy serves them
//                lazily from then on) -> result.restore filled in with the packed images
//                kServePages (post-copy, after the commit: ends once D has every page)
//   destination  kCheck (criu check, cpuinfo check, files, memory) -> result.checks
//                kPrepareReceive (page server / parked criu started) -> result.page_server
//                kRestore (images written, restored stopped) -> result.copy_pid
//                kPullPages (post-copy, after the resume: ends once every page arrived)
//
// Contract: Run blocks until the step ends and never throws; a failure is a result with ok
// false and a one-line error. `transient` says the same step a moment later usually works (a
// file lock held during the dump, a thread that ended while CRIU seized it). Cancel asks a
// running step of that migration to end early (it then fails); it is the only call that may
// come from another thread than the one in Run.
//
// Thread-safety: Run may be called from worker threads, one step per migration at a time;
// Cancel from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "tern/migrate/protocol_messages.hpp"

namespace tern::migrate {

enum class StepKind {
  kCheck,
  kPreDump,
  kDump,
  kServePages,
  kPrepareReceive,
  kRestore,
  kPullPages,
};
std::string_view ToString(StepKind kind);

struct StepRequest {
  std::string id;  // the migration
  StepKind kind = StepKind::kCheck;
  MoveMode mode = MoveMode::kPreCopy;
  int attempt = 1;  // kDump: 1.. (retried while transient)
  // kRestore: what the source sent; kPrepareReceive: the source's prepare request.
  std::optional<RestoreRequest> restore;
  std::optional<PrepareRequest> prepare;
};

struct StepResult {
  std::string id;
  StepKind kind = StepKind::kCheck;
  bool ok = false;
  bool transient = false;
  std::string error;
  std::string checks = "[]";  // kCheck: what was checked, a JSON array's text
  bool shared_dir = false;    // destination kCheck: the job directory is the source's very one
  std::optional<PrepareRequest> prepare;  // source kCheck: the request to send
  std::optional<RestoreRequest> restore;  // source kDump: the images to send
  std::optional<Endpoint> page_server;    // destination kPrepareReceive, pre-copy
  std::int64_t copy_pid = 0;              // destination kRestore
};

class Checkpointer {
 public:
  virtual ~Checkpointer() = default;
  virtual StepResult Run(const StepRequest& request) = 0;
  virtual void Cancel(const std::string& id, StepKind kind) = 0;
};

}  // namespace tern::migrate
