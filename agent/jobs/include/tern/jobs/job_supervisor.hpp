// JobSupervisor: the jobs of this node — starts them, watches them end, cancels them, keeps
// their records in the state dir, and re-adopts them after an agent restart.
//
// Contract:
//  - Submit() gives the job the next id "<node>.<serial>" (unless its home node chose one), starts
//  it (LaunchJob) and persists
//    the record before returning it. A job that cannot start is still recorded, as `failed`
//    with `error` set, and returned: it is never silently dropped.
//  - A job's end is noticed through a pidfd (works for processes that are not our children,
//    i.e. after a restart); its status comes from the status.json tern-init wrote, else from
//    the init's wait status, else the job is `lost`. A cancelled job ends `cancelled`.
//  - Cancel() sends SIGTERM to the job's init (which forwards it to every process of the
//    job) and SIGKILL after the grace period; signals go through the pidfd, so a reused pid
//    is never hit.
//  - Adopt() (once, at start) re-watches every recorded running job whose init still exists
//    with the same start time, and finishes the records of the others.
//  - Destroying the supervisor leaves jobs running.
//  - on_change is called after every state change, once the record is persisted.
//
// Thread-safety: not thread-safe; every method and callback runs on the io_context's thread.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tern/jobs/init_binary.hpp"
#include "tern/jobs/job_network.hpp"
#include "tern/jobs/job_record.hpp"
#include "tern/jobs/job_store.hpp"

namespace tern::jobs {

struct SupervisorOptions {
  std::string state_dir;
  std::string jobs_dir;  // empty: <state_dir>/jobs
  std::string node_name;
  std::string init_path;
  std::chrono::milliseconds cancel_grace{5000};
  // Opens a job's IPC channel before it starts; returns the job's end (closed here after the
  // launch), or -1 when there is none. Empty: jobs get no channel.
  std::function<int(const std::string& job_id)> open_ipc_channel;
  // The node cgroup's cgroup.procs files (LaunchSpec::cgroup_procs); empty: no cgroup.
  std::vector<std::string> cgroup_procs;
  // Job networking ([net]): where `--net` jobs' addresses come from; off when not enabled().
  NetConfig net;
};

struct SubmitRequest {
  // Set when the job was submitted on another node (its home node), which chose the id.
  std::string id;
  std::string home_node;
  std::vector<std::string> argv;
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string user;
  std::map<std::string, std::string> env;
  bool pinned = false;  // `tern submit --pin`
  bool net = false;     // `tern submit --net`: its own network namespace and address
  std::string address;  // the address its home node chose ("" here: this node chooses)
};

class JobSupervisor {
 public:
  using ChangeCallback = std::function<void(const JobRecord&)>;

  JobSupervisor(boost::asio::io_context& io, SupervisorOptions options, ChangeCallback on_change);
  ~JobSupervisor();
  JobSupervisor(const JobSupervisor&) = delete;
  JobSupervisor& operator=(const JobSupervisor&) = delete;

  // Loads the state dir and re-adopts running jobs. Returns problems worth logging.
  std::vector<std::string> Adopt();
  Expected<JobRecord> Submit(const SubmitRequest& request);
  // Reserves the next id of a job homed here, for a job that will run on another node.
  Expected<std::string> AllocateJobId();
  // The address of a `--net` job homed here (JobAddress of its serial in net.subnet).
  Expected<std::string> JobNetAddress(const std::string& job_id) const;
  const NetConfig& net() const { return options_.net; }
  Expected<JobRecord> Cancel(const std::string& id);
  // Sets a running job's `pinned` flag and persists it (on_change is called when it changed).
  Expected<JobRecord> SetPinned(const std::string& id, bool pinned);
  // Migration. MarkMigrating persists that the job is frozen for migration `migration_id`
  // (empty: no longer). Release forgets a job that moved away (its frozen copy is about to be
  // killed): no state change is reported; its directory is removed unless it is shared with
  // the destination. AdoptMigrated takes
  // over a job restored here, running as `pid`.
  void MarkMigrating(const std::string& id, const std::string& migration_id);
  Expected<JobRecord> Release(const std::string& id, bool remove_dir);
  Expected<JobRecord> AdoptMigrated(JobRecord record, pid_t pid);
  std::optional<JobRecord> Get(const std::string& id) const;
  std::vector<JobRecord> List() const;
  std::size_t RunningCount() const;
  const std::string& jobs_dir() const { return options_.jobs_dir; }
  // Where tern-init runs from (options.init_path, or the agent's copy when other users cannot
  // run that one), or why it cannot run at all. Checked once, at construction.
  const Expected<InitPlacement>& init() const { return init_; }
  // The agent's job sampler (JobUsageSampler) hands each running job's latest figures here, for
  // `tern ps` and the records: no state change, nothing persisted, on_change not called.
  void SetUsage(const std::string& id, double cpu_seconds, std::uint64_t rss_bytes);
  // Every running job's id and tern-init pid, without copying records.
  template <typename Visit>
  void ForEachRunning(Visit&& visit) const {
    for (const auto& [id, job] : jobs_) {
      if (job.record.state == JobState::kRunning && job.record.pid > 0) visit(job.record);
    }
  }

 private:
  struct Watched {
    JobRecord record;
    std::unique_ptr<boost::asio::posix::stream_descriptor> pidfd;
    std::unique_ptr<boost::asio::steady_timer> kill_timer;
  };

  bool Watch(Watched& job);
  void OnExit(const std::string& id);
  void Finish(Watched& job, std::optional<int> wait_status);
  void Persist(const JobRecord& record);
  void ReapChildren();
  void ArmChildSignal();
  // The tern-init a job of `uid` runs, or why it cannot start.
  Expected<std::string> InitFor(uid_t uid) const;

  boost::asio::io_context& io_;
  SupervisorOptions options_;
  ChangeCallback on_change_;
  JobStore store_;
  std::map<std::string, Watched> jobs_;
  std::map<pid_t, int> reaped_;  // wait statuses of children reaped before their pidfd fired
  boost::asio::signal_set child_signal_;
  Expected<InitPlacement> init_{Fail("tern-init not placed yet")};
};

}  // namespace tern::jobs
