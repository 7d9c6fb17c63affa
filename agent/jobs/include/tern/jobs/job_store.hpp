// JobStore: the jobs of one agent in its state dir, so that a restarted agent forgets nothing.
//
// Layout: <state_dir>/records/<id>.json (the record); <jobs_dir>/<id>/ (the job's own directory:
// cwd, stdout, stderr — it may sit on a file system the nodes share); and
// <state_dir>/job_serial, the next job number, which is never handed out twice — not even
// across restarts or after the job directories are deleted.
//
// Contract: Save() replaces the record with WriteFileAtomically, so a crash leaves the old
// record or the new one, never a torn one. Records are 0600 in a 0700 directory (they hold the
// job's argv and environment). LoadAll() returns every record it can read and names the ones
// it cannot.
//
// Thread-safety: not thread-safe; one agent thread uses it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tern/jobs/job_record.hpp"

namespace tern::jobs {

class JobStore {
 public:
  JobStore(std::string state_dir, std::string jobs_dir, std::string node_name);

  std::string JobDir(const std::string& id) const;
  Expected<std::uint64_t> NextSerial();
  Expected<void> Save(const JobRecord& job);
  std::vector<JobRecord> LoadAll(std::vector<std::string>* problems = nullptr) const;

 private:
  std::string state_dir_;
  std::string jobs_dir_;
  std::string node_name_;
};

// Writes `content` to `path` atomically and durably: a new temporary file beside it (a unique
// name, created exclusively, mode `mode`), write, fsync, rename over `path`, fsync of the
// directory. After a crash `path` holds the old content or the new, never a torn or empty
// file; once this returns, the new content survives a power cut. The one helper for every
// file the agent must not lose (job records, job_serial, migration records).
Expected<void> WriteFileAtomically(const std::string& path, std::string_view content,
                                   mode_t mode = 0600);

}  // namespace tern::jobs
