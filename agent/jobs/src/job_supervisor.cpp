#include "tern/jobs/job_supervisor.hpp"

#include <dirent.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <tern/migrate/criu.hpp>
#include <tern/migrate/migration_store.hpp>
#include <tern/migrate/protocol_codec.hpp>
#include <tern/process_tree.hpp>
#include <tern/remove_tree.hpp>
#include <tern/subprocess.hpp>

#include "tern/jobs/in_namespace.hpp"
#include "tern/jobs/job_file.hpp"
#include "tern/jobs/job_launcher.hpp"
#include "tern/jobs/process_identity.hpp"
#include "tern/jobs/unique_fd.hpp"

namespace tern::jobs {
namespace {

// tern-init writes some 60 bytes; anything much larger is not its.
constexpr std::uint64_t kMaxStatusBytes = 4096;

int PidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

bool PidfdSignal(int pidfd, int sig) {
  return ::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) == 0;
}

std::string BaseName(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

namespace {

// What the source recorded for a move (migrate::MigrationStore's file, written by the agent's
// MigrationFileStore): "committed", "frozen", "aborted", or "" for none.
std::string ReadOutcome(const std::string& state_dir, const std::string& migration_id) {
  if (!migrate::IsMigrationId(migration_id)) return "";
  const std::string dir = state_dir + "/migrations/" + migration_id;
  std::ifstream file(dir + "/record", std::ios::binary);
  if (!file) {
    // A move recorded by an agent from before the machines: a one-word `outcome` file.
    std::ifstream legacy(dir + "/outcome");
    std::string outcome;
    legacy >> outcome;
    return outcome;
  }
  const std::string bytes{std::istreambuf_iterator<char>(file), {}};
  auto record = migrate::DecodeRecord(bytes);
  if (!record) return "";
  const auto* source = std::get_if<migrate::SourceRecord>(&*record);
  return source ? std::string(migrate::ToString(source->stage)) : "";
}

}  // namespace

JobSupervisor::JobSupervisor(boost::asio::io_context& io, SupervisorOptions options,
                             ChangeCallback on_change)
    : io_(io),
      options_(std::move(options)),
      on_change_(std::move(on_change)),
      store_(options_.state_dir,
             options_.jobs_dir.empty() ? options_.state_dir + "/jobs" : options_.jobs_dir,
             options_.node_name),
      child_signal_(io, SIGCHLD) {
  std::error_code ignored;
  if (options_.jobs_dir.empty()) options_.jobs_dir = options_.state_dir + "/jobs";
  std::filesystem::create_directories(options_.jobs_dir, ignored);
  // Traversable, not listable: a job reaches its own directory by path, no user lists others.
  ::chmod(options_.jobs_dir.c_str(), 0711);
  init_ = PlaceInit(options_.init_path, options_.state_dir);
  ArmChildSignal();
}

Expected<std::string> JobSupervisor::InitFor(uid_t uid) const {
  if (!init_) return Unexpected<Error>{init_.error()};
  if (uid != 0 && !init_->others_can_run) {
    return Fail("jobs of users other than root cannot start on this node: tern-init at " +
                init_->path + " cannot be run by them (" + init_->problem + ")");
  }
  return init_->path;
}

JobSupervisor::~JobSupervisor() {
  boost::system::error_code ignored;
  child_signal_.cancel(ignored);
  for (auto& [id, job] : jobs_) {
    if (job.kill_timer) job.kill_timer->cancel();
    if (job.pidfd) job.pidfd->cancel(ignored);
  }
}

void JobSupervisor::ArmChildSignal() {
  child_signal_.async_wait([this](const boost::system::error_code& error, int) {
    if (error) return;
    ReapChildren();
    ArmChildSignal();
  });
}

// Reaps every exited child: job inits (their status is kept for OnExit) and the orphans of
// ended jobs that the kernel hands to us as the subreaper.
void JobSupervisor::ReapChildren() {
  // Only zombies nobody else waits for: CRIU runs and other managed children are left to
  // their owners (see tern/subprocess.hpp).
  std::lock_guard lock(ChildRegistryMutex());
  const pid_t self = ::getpid();
  std::unique_ptr<DIR, int (*)(DIR*)> proc(::opendir("/proc"), ::closedir);
  if (!proc) return;
  while (dirent* entry = ::readdir(proc.get())) {
    char* end = nullptr;
    const long pid = std::strtol(entry->d_name, &end, 10);
    if (*end != '\0' || pid <= 0 || IsManagedChild(static_cast<pid_t>(pid))) continue;
    std::ifstream stat("/proc/" + std::string(entry->d_name) + "/stat");
    std::string text;
    if (!std::getline(stat, text)) continue;
    const auto close = text.rfind(')');
    if (close == std::string::npos || close + 4 >= text.size()) continue;
    std::istringstream rest(text.substr(close + 2));
    char state = 0;
    long parent = 0;
    rest >> state >> parent;
    if (state != 'Z' || parent != self) continue;
    int status = 0;
    if (::waitpid(static_cast<pid_t>(pid), &status, WNOHANG) != pid) continue;
    for (const auto& [id, job] : jobs_) {
      if (job.record.pid == pid && job.record.state == JobState::kRunning) {
        reaped_[static_cast<pid_t>(pid)] = status;
        break;
      }
    }
  }
}

std::vector<std::string> JobSupervisor::Adopt() {
  std::vector<std::string> problems;
  for (auto& record : store_.LoadAll(&problems)) {
    const std::string id = record.id;
    Watched& job = jobs_[id];
    job.record = std::move(record);
    if (job.record.state != JobState::kRunning) continue;
    const bool same_process = job.record.pid > 0 && job.record.pid_start_ticks != 0 &&
                              ProcessStartTicks(job.record.pid) == job.record.pid_start_ticks;
    if (same_process && Watch(job)) {
      spdlog::info("re-adopted job {} (pid {})", id, job.record.pid);
      if (!job.record.migrating_id.empty() &&
          ReadOutcome(options_.state_dir, job.record.migrating_id) == "committed") {
        // Past the commit point of a migration: the job belongs to the destination now, and
        // this frozen copy must never run again.
        spdlog::warn("job {} moved away by migration {}: discarding its frozen copy here", id,
                     job.record.migrating_id);
        // Through a pidfd of the very process (pid and start time just checked): a pid reused
        // in between is never signalled.
        const UniqueFd pidfd =
            OpenPidfd(ProcessIdentity{job.record.pid, job.record.pid_start_ticks, CurrentBootId()});
        if (!pidfd.valid() || !SignalPidfd(pidfd.get(), SIGKILL)) {
          spdlog::warn("job {}: its frozen copy (pid {}) is gone already", id, job.record.pid);
        }
        jobs_.erase(id);
        std::error_code ignored;
        std::filesystem::remove(options_.state_dir + "/records/" + id + ".json", ignored);
        continue;
      }
      if (!job.record.migrating_id.empty()) {
        // The agent stopped while the job was frozen for a migration that never committed:
        // the job stays here and runs again.
        spdlog::warn("job {} was frozen by unfinished migration {}: resuming it here", id,
                     job.record.migrating_id);
        if (!job.record.net_address.empty()) {
          // Its network was locked for the dump: unlocked before it runs again.
          EndTcpRepair(job.record.pid);
          if (auto up = SetJobLinkUp(job.record.id, job.record.net_address, true); !up) {
            spdlog::error("job {}: {}", id, up.error().message);
          } else if (options_.net.enabled()) {
            (void)SendGratuitousArp(options_.net.uplink, job.record.net_address);
          }
        }
        ResumeTree(job.record.pid);
        job.record.migrating_id.clear();
        Persist(job.record);
      }
      continue;
    }
    Finish(job, std::nullopt);
  }
  return problems;
}

bool JobSupervisor::Watch(Watched& job) {
  const int fd = PidfdOpen(job.record.pid);
  if (fd < 0) return false;
  job.pidfd = std::make_unique<boost::asio::posix::stream_descriptor>(io_, fd);
  job.pidfd->async_wait(boost::asio::posix::stream_descriptor::wait_read,
                        [this, id = job.record.id](const boost::system::error_code& error) {
                          if (!error) OnExit(id);
                        });
  return true;
}

Expected<JobRecord> JobSupervisor::Submit(const SubmitRequest& request) {
  if (request.argv.empty()) return Fail("no command to run");
  JobRecord record;
  if (request.id.empty()) {
    auto id = AllocateJobId();
    if (!id) return Unexpected<Error>{id.error()};
    record.id = *id;
  } else {
    if (!IsValidJobId(request.id)) return Fail("'" + request.id + "' is not a job id");
    if (jobs_.count(request.id) != 0) return Fail("job " + request.id + " exists already");
    record.id = request.id;
  }
  record.name = request.name.empty() ? BaseName(request.argv.front()) : request.name;
  record.user = request.user;
  record.uid = request.uid;
  record.gid = request.gid;
  record.node = options_.node_name;
  record.home_node = request.home_node.empty() ? options_.node_name : request.home_node;
  record.argv = request.argv;
  record.env = request.env;
  record.pinned = request.pinned;
  record.submitted_at = Clock::now();
  tern::UniqueFd netns;
  Expected<void> network_ready;
  if (request.net) {
    auto address =
        request.address.empty() ? JobNetAddress(record.id) : Expected<std::string>(request.address);
    if (!options_.net.enabled()) {
      network_ready = Fail("node " + options_.node_name +
                           " has no job network ([net] pool, subnet and uplink in its config)");
    } else if (!address) {
      network_ready = Unexpected<Error>{address.error()};
    } else {
      record.net_address = *address;
      auto made = CreateJobNetwork(record.id, record.net_address);
      if (made) {
        netns = std::move(*made);
      } else {
        network_ready = Unexpected<Error>{made.error()};
      }
    }
  }
  record.dir = store_.JobDir(record.id);

  auto init = InitFor(request.uid);
  LaunchSpec spec{request.argv, request.uid,       request.gid, request.user,      request.env,
                  record.dir,   init ? *init : "", record.id,   options_.node_name};
  spec.cgroup_procs = options_.cgroup_procs;
  // A --net job's channel is made in its namespace (see in_namespace.hpp).
  UniqueFd ipc_end(options_.open_ipc_channel
                       ? InNetNamespace(
                             netns.get(), [&] { return options_.open_ipc_channel(record.id); }, -1)
                       : -1);
  if (ipc_end.valid()) {
    spec.ipc_fd = ipc_end.get();
    spec.env["TERN_IPC_FD"] = std::to_string(kJobIpcFd);
  }
  spec.netns_fd = netns.get();
  auto launched = !network_ready ? Expected<LaunchedJob>(Unexpected<Error>{network_ready.error()})
                  : init         ? LaunchJob(spec)
                                 : Expected<LaunchedJob>(Unexpected<Error>{init.error()});
  ipc_end.Reset();
  // The job's processes hold its namespace now; a job that did not start leaves no veth.
  netns.Reset();
  if (!launched && !record.net_address.empty()) (void)RemoveJobLink(record.id);
  if (!launched) {
    record.state = JobState::kFailed;
    record.error = launched.error().message;
    record.ended_at = Clock::now();
    spdlog::warn("job {} failed to start: {}", record.id, record.error);
  } else {
    record.state = JobState::kRunning;
    record.pid = launched->pid;
    record.pid_start_ticks = launched->start_ticks;
    record.started_at = Clock::now();
  }
  Watched& job = jobs_[record.id];
  job.record = record;
  if (auto saved = store_.Save(record); !saved) {
    spdlog::error("cannot persist job {}: {}", record.id, saved.error().message);
  }
  if (record.state == JobState::kRunning && !Watch(job)) {
    // The init ended before we could watch it: finish at once.
    Finish(job, std::nullopt);
  }
  if (on_change_) on_change_(job.record);
  return job.record;
}

Expected<std::string> JobSupervisor::AllocateJobId() {
  auto serial = store_.NextSerial();
  if (!serial) return Unexpected<Error>{serial.error()};
  return options_.node_name + "." + std::to_string(*serial);
}

Expected<std::string> JobSupervisor::JobNetAddress(const std::string& job_id) const {
  const auto dot = job_id.rfind('.');
  if (dot == std::string::npos) return Fail("'" + job_id + "' is not a job id");
  return JobAddress(options_.net.subnet, std::stoull(job_id.substr(dot + 1)));
}

Expected<JobRecord> JobSupervisor::Cancel(const std::string& id) {
  auto found = jobs_.find(id);
  if (found == jobs_.end()) return Fail("no job '" + id + "' on node " + options_.node_name);
  Watched& job = found->second;
  if (job.record.state != JobState::kRunning) {
    return Fail("job " + id + " has already ended (" + ToString(job.record.state) + ")");
  }
  if (job.record.cancel_requested) return job.record;
  job.record.cancel_requested = true;
  Persist(job.record);
  if (job.pidfd) PidfdSignal(job.pidfd->native_handle(), SIGTERM);
  job.kill_timer = std::make_unique<boost::asio::steady_timer>(io_, options_.cancel_grace);
  job.kill_timer->async_wait([this, id](const boost::system::error_code& error) {
    if (error) return;
    auto again = jobs_.find(id);
    if (again == jobs_.end() || again->second.record.state != JobState::kRunning) return;
    if (again->second.pidfd) {
      spdlog::info("job {} ignored SIGTERM for the grace period: SIGKILL", id);
      PidfdSignal(again->second.pidfd->native_handle(), SIGKILL);
    }
  });
  return job.record;
}

Expected<JobRecord> JobSupervisor::SetPinned(const std::string& id, bool pinned) {
  auto found = jobs_.find(id);
  if (found == jobs_.end()) return Fail("no job '" + id + "' on node " + options_.node_name);
  JobRecord& record = found->second.record;
  if (record.state != JobState::kRunning) {
    return Fail("job " + id + " has already ended (" + ToString(record.state) + ")");
  }
  if (record.pinned == pinned) return record;
  record.pinned = pinned;
  Persist(record);
  if (on_change_) on_change_(record);
  return record;
}

void JobSupervisor::OnExit(const std::string& id) {
  auto found = jobs_.find(id);
  if (found == jobs_.end() || found->second.record.state != JobState::kRunning) return;
  Watched& job = found->second;
  std::optional<int> wait_status;
  int status = 0;
  if (::waitpid(job.record.pid, &status, WNOHANG) == job.record.pid) {
    wait_status = status;
  } else if (auto reaped = reaped_.find(job.record.pid); reaped != reaped_.end()) {
    wait_status = reaped->second;
    reaped_.erase(reaped);
  }
  Finish(job, wait_status);
}

void JobSupervisor::Finish(Watched& job, std::optional<int> wait_status) {
  JobRecord& record = job.record;
  // status.json is the job user's file: read it without following links or blocking, bounded,
  // and believe it only if it has the shape tern-init writes.
  std::optional<ExitStatus> status;
  if (auto text = ReadJobFile(record.dir, "status.json", kMaxStatusBytes); !text) {
    spdlog::warn("job {}: {}; going by its init's wait status", record.id, text.error().message);
  } else if (!text->empty()) {
    status = ParseExitStatus(*text);
    if (!status) {
      spdlog::warn(
          "job {}: status.json is not what tern-init writes; going by its init's wait "
          "status",
          record.id);
    }
  }
  record.exit_code.reset();
  record.signal.reset();
  if (status) {
    record.exit_code = status->exit_code;
    record.signal = status->signal;
    record.ended_at = status->ended_at.value_or(Clock::now());
  } else if (wait_status && WIFSIGNALED(*wait_status)) {
    // The init itself was killed (SIGKILL after the grace period, or from outside).
    record.signal = WTERMSIG(*wait_status);
    record.ended_at = Clock::now();
  } else if (wait_status && WIFEXITED(*wait_status)) {
    record.exit_code = WEXITSTATUS(*wait_status);
    record.ended_at = Clock::now();
  }
  if (record.cancel_requested) {
    record.state = JobState::kCancelled;
  } else if (record.exit_code) {
    record.state = JobState::kExited;
  } else if (record.signal) {
    record.state = JobState::kKilled;
  } else {
    record.state = JobState::kLost;
    record.error = "the job's process ended while no agent watched it and left no status";
  }
  if (!record.ended_at) record.ended_at = Clock::now();
  if (job.kill_timer) job.kill_timer->cancel();
  job.pidfd.reset();
  Persist(record);
  if (on_change_) on_change_(record);
}

void JobSupervisor::Persist(const JobRecord& record) {
  if (auto saved = store_.Save(record); !saved) {
    spdlog::error("cannot persist job {}: {}", record.id, saved.error().message);
  }
}

void JobSupervisor::MarkMigrating(const std::string& id, const std::string& migration_id) {
  auto found = jobs_.find(id);
  if (found == jobs_.end()) return;
  found->second.record.migrating_id = migration_id;
  Persist(found->second.record);
}

Expected<JobRecord> JobSupervisor::Release(const std::string& id, bool remove_dir) {
  auto found = jobs_.find(id);
  if (found == jobs_.end()) return Fail("no job '" + id + "' on node " + options_.node_name);
  JobRecord record = found->second.record;
  if (found->second.kill_timer) found->second.kill_timer->cancel();
  jobs_.erase(found);
  std::error_code ignored;
  std::filesystem::remove(options_.state_dir + "/records/" + id + ".json", ignored);
  if (remove_dir) {
    // The job's user owns what is in it and may have planted symlinks to /etc: the walk goes
    // through directory fds and removes links as links.
    if (auto removed = RemoveTreeNoFollow(record.dir); !removed) {
      spdlog::warn("job {}: {}", id, removed.error().message);
    }
  }
  return record;
}

Expected<JobRecord> JobSupervisor::AdoptMigrated(JobRecord record, pid_t pid) {
  if (jobs_.count(record.id) != 0 && jobs_[record.id].record.state == JobState::kRunning) {
    return Fail("job " + record.id + " already runs on " + options_.node_name);
  }
  record.node = options_.node_name;
  record.pid = pid;
  record.pid_start_ticks = ProcessStartTicks(pid);
  record.state = JobState::kRunning;
  record.migrating_id.clear();
  Watched& job = jobs_[record.id];
  job.record = std::move(record);
  job.kill_timer.reset();
  Persist(job.record);
  if (!Watch(job)) Finish(job, std::nullopt);
  if (on_change_) on_change_(job.record);
  return job.record;
}

std::optional<JobRecord> JobSupervisor::Get(const std::string& id) const {
  auto found = jobs_.find(id);
  if (found == jobs_.end()) return std::nullopt;
  return found->second.record;
}

std::vector<JobRecord> JobSupervisor::List() const {
  std::vector<JobRecord> all;
  all.reserve(jobs_.size());
  for (const auto& [id, job] : jobs_) all.push_back(job.record);
  return all;
}

std::size_t JobSupervisor::RunningCount() const {
  std::size_t running = 0;
  for (const auto& [id, job] : jobs_) running += job.record.state == JobState::kRunning;
  return running;
}

void JobSupervisor::SetUsage(const std::string& id, double cpu_seconds, std::uint64_t rss_bytes) {
  auto found = jobs_.find(id);
  if (found == jobs_.end() || found->second.record.state != JobState::kRunning) return;
  found->second.record.cpu_seconds = cpu_seconds;
  found->second.record.rss_bytes = rss_bytes;
}

}  // namespace tern::jobs
