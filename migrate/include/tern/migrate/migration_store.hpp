// What the migration machines must keep across a restart of their agent, and the store that
// keeps it. A machine never writes; it emits Persist and Forget actions (machine_actions.hpp)
// and the adapter carries them out on a MigrationStore before it performs the actions after
// them (so "committed" is on disk before the source copy is killed, "restored" before S hears
// of it). After a restart the adapter loads every record and rebuilds one machine per record
// (SourceMachine::Recover, DestinationMachine::Recover); a migration without a record was
// never past the point where anything needs deciding.
//
//   source: kFrozen     written before the job is first frozen (pre-dump/dump): a restart
//                       resumes the job, records kAborted and tells D
//           kCommitted  the commit point, with the IPC state: a restart kills any frozen copy
//                       left and sends the commit again; D's questions get "committed"
//           kAborted    the move is off; D's questions get "aborted"
//   destination: kPrepared  written before CRIU is started for the move: a restart discards
//                       what it made (nothing was restored that S knows of)
//           kRestored   a stopped copy exists and S may be told so: a restart asks S
//           kResumed    the copy was resumed (post-copy: pages may still be coming)
//           kComplete   post-copy: every page arrived
//
// Records are written whole and atomically (temporary file, fsync, rename, fsync of the
// directory: jobs::WriteFileAtomically), so a record is the old or the new one, never a mix.
// EncodeRecord / DecodeRecord give the bytes of a record for such a file.
//
// Thread-safety: records are values; a MigrationStore is used from the adapter's one thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <variant>
#include <vector>

#include "tern/migrate/protocol_messages.hpp"

namespace tern::migrate {

enum class SourceStage { kFrozen, kCommitted, kAborted };
std::string_view ToString(SourceStage stage);

struct SourceRecord {
  std::string id;
  std::string job_id;
  std::string destination;
  MoveMode mode = MoveMode::kPreCopy;
  SourceStage stage = SourceStage::kFrozen;
  std::string ipc_state;  // kCommitted: for a destination that asks (IpcStateQuery)
  bool operator==(const SourceRecord&) const = default;
};

enum class DestinationStage { kPrepared, kRestored, kResumed, kComplete };
std::string_view ToString(DestinationStage stage);

struct DestinationRecord {
  std::string id;
  std::string job;  // the job's persistent record, as the prepare request carried it
  std::string source;
  MoveMode mode = MoveMode::kPreCopy;
  bool shared_dir = false;
  DestinationStage stage = DestinationStage::kPrepared;
  // kRestored on: the copy's pid; the adapter keeps its identity (start time, boot id) beside
  // it and believes it only while that very process lives (restored_copy.hpp).
  std::int64_t copy_pid = 0;
  bool operator==(const DestinationRecord&) const = default;
};

using MigrationRecord = std::variant<SourceRecord, DestinationRecord>;

std::string EncodeRecord(const MigrationRecord& record);
Expected<MigrationRecord> DecodeRecord(std::string_view bytes);

class MigrationStore {
 public:
  virtual ~MigrationStore() = default;
  // Durable when it returns (or an error: the adapter then feeds OnPersistFailed).
  virtual Expected<void> Save(const MigrationRecord& record) = 0;
  virtual void Forget(const std::string& id) = 0;
  virtual std::vector<MigrationRecord> LoadAll() = 0;
};

}  // namespace tern::migrate
