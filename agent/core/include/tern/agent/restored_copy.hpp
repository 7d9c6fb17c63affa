// RestoredCopy: which process, if any, is the stopped copy of a job that a migration restored
// on this node, as recorded in the migration's directory.
//
// The destination records the restored init's identity (pid, start time, boot id:
// jobs::ProcessIdentity) in `restored.json` (written durably) as soon as `criu restore` returns.
// An agent restarted mid-migration (LoadUnfinished) believes that record only while the very
// process lives: after a reboot or once the pid went to another process it names nothing, and
// nothing is resumed, adopted or killed on its word.
//
// If the agent died after CRIU wrote its --pidfile (`images/restored.pid`, a bare pid) but
// before the record, the pid is believed only if that process started inside the restore's
// window: no earlier than the migration's `incoming.json` was written, no later than the pid
// file was. Any process that was already running then (an unrelated one that got the pid after
// a reboot or a reuse) falls outside it.
//
// Thread-safety: stateless functions; reentrant.
#pragma once

#include <optional>
#include <string>
#include <tern/expected.hpp>
#include <tern/jobs/process_identity.hpp>

namespace tern::agent {

// Records `identity` as the copy restored for the migration whose directory is `dir`.
Expected<void> RecordRestoredCopy(const std::string& dir, const jobs::ProcessIdentity& identity);

// The live restored copy of the migration in `dir`, or nullopt (none, or the record names a
// process that is not it).
std::optional<jobs::ProcessIdentity> FindRestoredCopy(const std::string& dir);

}  // namespace tern::agent
