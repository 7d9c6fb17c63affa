#include "tern/jobs/job_store.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tern/errno_text.hpp>
#include <vector>

#include "tern/jobs/unique_fd.hpp"

namespace tern::jobs {
namespace fs = std::filesystem;

Expected<void> WriteFileAtomically(const std::string& path, std::string_view content, mode_t mode) {
  const fs::path target(path);
  const std::string dir = target.has_parent_path() ? target.parent_path().string() : ".";
  // A fresh name beside the target (O_EXCL, never following a link): whatever sits at a
  // predictable temporary name cannot redirect or block the write.
  std::string temporary = dir + "/." + target.filename().string() + ".XXXXXX";
  UniqueFd fd(::mkostemp(temporary.data(), O_CLOEXEC));
  if (!fd.valid()) return Fail(Errno("cannot create a temporary file for " + path));
  bool renamed = false;
  // The temporary file goes away on every failure before the rename.
  struct Cleanup {
    const std::string& name;
    const bool& done;
    ~Cleanup() {
      if (!done) ::unlink(name.c_str());
    }
  } cleanup{temporary, renamed};
  if (::fchmod(fd.get(), mode) != 0) return Fail(Errno("cannot set the mode of " + temporary));
  std::size_t written = 0;
  while (written < content.size()) {
    const ssize_t n = ::write(fd.get(), content.data() + written, content.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Fail(Errno("cannot write " + temporary));
    written += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return Fail(Errno("cannot sync " + temporary));
  if (::close(fd.Release()) != 0) return Fail(Errno("cannot close " + temporary));
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    return Fail(Errno("cannot rename " + temporary + " to " + path));
  }
  renamed = true;
  // The rename itself is durable only once the directory is synced.
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd.valid() || ::fsync(dir_fd.get()) != 0) return Fail(Errno("cannot sync " + dir));
  return {};
}

JobStore::JobStore(std::string state_dir, std::string jobs_dir, std::string node_name)
    : state_dir_(std::move(state_dir)),
      jobs_dir_(std::move(jobs_dir)),
      node_name_(std::move(node_name)) {}

std::string JobStore::JobDir(const std::string& id) const { return jobs_dir_ + "/" + id; }

Expected<std::uint64_t> JobStore::NextSerial() {
  const std::string path = state_dir_ + "/job_serial";
  std::uint64_t next = 1;
  if (std::ifstream file(path); file) file >> next;
  // Never behind an existing record or job directory of ours, even if job_serial was lost.
  std::error_code error;
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(jobs_dir_, error)) {
    names.push_back(entry.path().filename().string());
  }
  for (const auto& entry : fs::directory_iterator(state_dir_ + "/records", error)) {
    names.push_back(entry.path().stem().string());
  }
  for (const std::string& name : names) {
    const auto dot = name.rfind('.');
    if (dot == std::string::npos || name.substr(0, dot) != node_name_) continue;
    try {
      next = std::max<std::uint64_t>(next, std::stoull(name.substr(dot + 1)) + 1);
    } catch (const std::exception&) {
    }
  }
  if (auto saved = WriteFileAtomically(path, std::to_string(next + 1) + "\n"); !saved) {
    return Unexpected<Error>{saved.error()};
  }
  return next;
}

Expected<void> JobStore::Save(const JobRecord& job) {
  std::error_code error;
  const std::string records = state_dir_ + "/records";
  fs::create_directories(records, error);
  if (error) return Fail("cannot create " + records + ": " + error.message());
  // Records hold argv, environment and user: root's alone (older agents made it 0755).
  if (::chmod(records.c_str(), 0700) != 0) return Fail(Errno("cannot make " + records + " 0700"));
  return WriteFileAtomically(state_dir_ + "/records/" + job.id + ".json",
                             PersistentJson(job).dump(2) + "\n");
}

std::vector<JobRecord> JobStore::LoadAll(std::vector<std::string>* problems) const {
  std::vector<JobRecord> jobs;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(state_dir_ + "/records", error)) {
    if (entry.path().extension() != ".json") continue;
    const std::string path = entry.path().string();
    std::ifstream file(path);
    if (!file) continue;
    std::stringstream text;
    text << file.rdbuf();
    auto json = nlohmann::json::parse(text.str(), nullptr, false);
    auto job =
        json.is_discarded() ? Expected<JobRecord>(Fail("not JSON")) : FromPersistentJson(json);
    if (!job) {
      if (problems) problems->push_back(path + ": " + job.error().message);
      continue;
    }
    jobs.push_back(std::move(*job));
  }
  return jobs;
}

}  // namespace tern::jobs
