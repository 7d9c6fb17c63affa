// IpcService: drives this agent's PortRouter (ipc/port_router.hpp) with real I/O — each job's
// IPC channel (a Unix stream socket pair; the job's end is its fd 3, TERN_IPC_FD), the IPC
// frames to and from other agents (FrameType::kIpcRemote over the cluster's authenticated
// links), the router's timers, and region memory as memfds passed with SCM_RIGHTS.
//
// Contract: OpenChannel before a job starts; CloseChannel when it ends or leaves this node (its
// rights are released and peers notified). A job that breaks the channel protocol (a frame
// that is not an IPC request, an oversized frame) has its channel closed, with a logged
// reason; a malformed frame from a peer is logged and reported (the caller closes the link).
// A moving job's rights travel with it: HandOff on the source takes them (and the channel's
// bytes in flight) out, TakeOver on the destination puts them in place before the job resumes.
// An agent restart: a re-adopted job's channel reads end-of-file, and libtern re-attaches
// through the job socket (ListenForJobs, docs/ipc.md "A channel the job reconnects"). The
// router's state is kept in a journal in ListenForJobs' directory (the queues' messages in
// and out, and snapshots of the rest, appended in Run before the actions of the same turn are
// carried out) and restored there before anyone is answered, so ports homed here, their queued
// messages, names and counts survive, and a re-attaching job gets back the rights the journal
// holds for it (docs/ipc.md "Port homes that survive their agent").
//
// Direct calls (docs/ipc.md "Direct calls"): a job's direct_open / direct_accept is served here,
// not by the router. The service listens on an ephemeral TCP port for the connections it
// grants, connects the clients' ends, hands each end to its job (SCM_RIGHTS) and keeps a record
// of it; after a job's requests ran, an end whose right is gone is shut down through the job's
// own descriptor (pidfd_getfd). The decisions are ipc::DirectBroker's; this class does the I/O.
//
// Thread-safety: everything runs on the agent's io_context thread.
#pragma once

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tern/expected.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/frame_type.hpp>
#include <tern/ipc/port_router.hpp>
#include <vector>

namespace tern::ipc {

class IpcService {
 public:
  // Sends frames, in order and in one write, to another node's agent; false without a link.
  using NodeSender = std::function<bool(std::uint64_t node, std::vector<ipc::Frame> frames)>;
  // Bytes sent to a node and not yet written to its link. Above kHoldAbove for any node, the
  // service stops reading its jobs' requests until every backlog is under kResumeBelow: the
  // jobs wait (their writes to the channel block) instead of the link's queue filling up, which
  // would close the link and fail everything on it.
  using NodeBacklog = std::function<std::size_t(std::uint64_t node)>;
  static constexpr std::size_t kHoldAbove = 16u << 20;
  static constexpr std::size_t kResumeBelow = 4u << 20;

  // The host part of a node's cluster address ("" if unknown): where its direct listener is.
  using NodeAddress = std::function<std::string(std::uint64_t node)>;
  // The host pid of a job's init, 0 if it is not running here: its processes hold its sockets.
  using JobInitPid = std::function<int(const std::string& job)>;

  // The user a job runs as, if the agent knows the job: names are owned by users.
  using JobUid = std::function<std::optional<std::uint32_t>(const std::string& job)>;

  // `limits`: what each job may hold of this node's IPC (the [ipc] config section).
  IpcService(boost::asio::io_context& io, std::uint64_t node_id, NodeSender send_to_node,
             NodeBacklog backlog = {}, const ipc::IpcLimits& limits = {});
  ~IpcService();
  IpcService(const IpcService&) = delete;
  IpcService& operator=(const IpcService&) = delete;

  // A fresh channel for `job`; returns the job's end (the caller owns and closes it), or -1.
  int OpenChannel(const std::string& job);
  // The same for a job restored here by a move: its hello waits for TakeOver, which first puts
  // the answers the job had not read on the source (the job may have been frozen in the middle
  // of one: a frame written before them would land inside it).
  int OpenChannelForMove(const std::string& job);
  void CloseChannel(const std::string& job);
  // Restores the router's state kept in DIR/journal by this node's previous agent
  // and keeps it there from now on; then listens at DIR/jobs.sock for jobs re-attaching their
  // channel and keeps each job's secret in DIR/secrets (DIR: the agent's run directory's ipc/,
  // which outlives the agent's process as the jobs do). Without it, channels carry no hello and
  // nothing re-attaches. Needs SetDirectHooks' init pid (the attaching process must be one of the
  // job's). `cluster_key` (the cluster secret) derives each job's secret (JobSecret), so that
  // a job that moved here can re-attach with the secret its old node gave it; empty: a random
  // secret per channel.
  Expected<void> ListenForJobs(const std::string& dir, std::string cluster_key = {});
  // Where the service learns each job's user (asked when a channel opens and, until it is
  // known, before the job's requests run).
  void SetJobUidSource(JobUid uid_of);
  // An IpcRemote frame, or one chunk of a blast (a payload over one frame's limit).
  Expected<void> OnNodeFrame(std::uint64_t from, ipc::FrameType type, std::string payload);
  void NodeUp(std::uint64_t node);
  void NodeDown(std::uint64_t node);

  // Source side of a migration, with the job frozen (`init_pid` is its init, which holds the
  // channel's other end): reads what the job wrote, takes its rights out of the router, and
  // takes the answers it has not read yet. kBusy: operations still in flight, try again soon
  // (nothing changed); kRefused: it holds what cannot move (`state` says why). kExported:
  // `state` is the bytes for TakeOver.
  ipc::PortRouter::Export HandOff(const std::string& job, std::uint64_t to_node, int init_pid);
  // Destination side, after OpenChannel and before the job resumes.
  Expected<void> TakeOver(const std::string& job, std::string_view state);
  // The source's commit record for `job`'s move is durable: the rights HandOff took out leave
  // this agent's journal too (until then a restart gives them back to the job here).
  void SettleHandOff(const std::string& job);
  // A restarted source whose commit record says `job` moved: its rights, restored from a
  // hand-off not settled before the restart, leave this agent without being released.
  void ForgetMovedJob(const std::string& job);
  // The job's end of the channel this agent made for it, as /proc shows it
  // ("socket:[INODE]"), or "" when it has none (a job re-adopted after a restart).
  std::string ChannelSocket(const std::string& job) const;
  // Why the job cannot move with its IPC rights, or "".
  std::string MoveBlocker(const std::string& job) const;

  // Direct calls. Without the hooks, direct_open across nodes and revocation cannot work
  // (they are refused / logged).
  void SetDirectHooks(NodeAddress node_address, JobInitPid init_pid);
  // "socket:[INODE]" of each live direct connection end the agent handed to the job (either
  // role).
  std::vector<std::string> DirectSockets(const std::string& job) const;
  // Shuts all the job's direct connections down now, and gives it no new ones (its
  // direct_open is refused, nothing is queued for the ports it accepts on) until ResumeDirect.
  void SuspendDirect(const std::string& job);
  void ResumeDirect(const std::string& job);

  std::size_t RightCount(const std::string& job) const;
  // IPC affinity: takes the router's byte counts (PortRouter::TakeTraffic) and keeps each
  // pair's rate over the time since the previous sample; call once per load sample.
  void SampleTraffic(std::chrono::steady_clock::time_point now);
  // The jobs `job` exchanged most bytes/s with at the last sample (sent or received), most
  // first, at most `limit`.
  std::vector<std::pair<std::string, double>> TopPeers(const std::string& job,
                                                       std::size_t limit) const;
  std::set<std::string> JobsSharingRegions(const std::string& job) const;
  // IPC message bytes between jobs through this node's router since the agent started (/metrics).
  std::uint64_t local_bytes_total() const { return local_bytes_total_; }
  void Stop();

 private:
  class Impl;
  std::shared_ptr<Impl> impl_;
  // Per local job: its peers' bytes/s at the last SampleTraffic, most first.
  std::map<std::string, std::vector<std::pair<std::string, double>>> peers_;
  std::chrono::steady_clock::time_point traffic_at_{};
  std::uint64_t local_bytes_total_ = 0;
};

}  // namespace tern::ipc
