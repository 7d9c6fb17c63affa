// JobStore: the jobs of one agent in its state dir, so that a restarted agent forgets nothing.
//
// Layout: <state_dir>/jobs/<id>/job.json (the record), next to the job's own files; and
// <state_dir>/job_serial, the next job number, which is never handed out twice — not even
// across restarts or after the job directories are deleted.
//
// Contract: Save() replaces job.json atomically (write to a temporary file, fsync, rename), so a
// crash leaves the old record or the new one, never a torn one. LoadAll() returns every record
// it can read and names the ones it cannot.
//
// Thread-safety: not thread-safe; one agent thread uses it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tern/jobs/job_record.hpp"

namespace tern::jobs {

class JobStore {
 public:
  explicit JobStore(std::string state_dir);

  std::string JobDir(const std::string& id) const;
  Expected<std::uint64_t> NextSerial();
  Expected<void> Save(const JobRecord& job);
  std::vector<JobRecord> LoadAll(std::vector<std::string>* problems = nullptr) const;

 private:
  std::string state_dir_;
};

// Writes `content` to `path` atomically (temporary file, fsync, rename).
Expected<void> WriteFileAtomically(const std::string& path, const std::string& content);

}  // namespace tern::jobs
