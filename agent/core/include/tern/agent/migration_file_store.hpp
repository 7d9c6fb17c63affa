// MigrationFileStore: the agent's migrate::MigrationStore, one file per move under the state
// directory: STATE/migrations/MID/record (migrate::EncodeRecord's bytes).
//
// Save is durable when it returns: a move's directory, when it is new, is made and its parent
// synced; the record is written whole (temporary file, fsync, rename, fsync of the directory:
// jobs::WriteFileAtomically), so after a crash the record is the old or the new one. Forget
// removes the record (what else the move left in its directory is the adapter's to remove).
// LoadAll skips, with a warning, a record it cannot read: the move it named is then treated
// as one that never reached a point where anything needs deciding.
//
// SourceOutcome reads what a source recorded without a store (the job supervisor's start-up,
// which decides whether a frozen job may run again before any machine exists).
//
// Thread-safety: not thread-safe; used from the agent's io thread (LoadAll before it runs).
#pragma once

#include <optional>
#include <string>
#include <tern/migrate/migration_store.hpp>
#include <vector>

namespace tern::agent {

class MigrationFileStore : public migrate::MigrationStore {
 public:
  explicit MigrationFileStore(std::string migrations_dir);

  Expected<void> Save(const migrate::MigrationRecord& record) override;
  void Forget(const std::string& id) override;
  std::vector<migrate::MigrationRecord> LoadAll() override;

  // The record of move `id`, if one can be read.
  std::optional<migrate::MigrationRecord> Load(const std::string& id) const;

 private:
  std::string dir_;
};

}  // namespace tern::agent
