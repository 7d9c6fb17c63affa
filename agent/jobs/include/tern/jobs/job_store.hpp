// JobStore: the jobs of one agent in its state dir, so that a restarted agent forgets nothing.
//
// Layout: <state_dir>/records/<id>.json (the record); <jobs_dir>/<id>/ (the job's own directory:
// cwd, stdout, stderr — it may sit on a file system the nodes share); and
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

// Writes `content` to `path` atomically and durably: a temporary file beside it, fsync, rename,
// fsync of the directory. Once it returns, a crash leaves the new content; before, the old.
Expected<void> WriteFileAtomically(const std::string& path, const std::string& content);

}  // namespace tern::jobs
