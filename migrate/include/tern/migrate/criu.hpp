// The CRIU driver: finds criu, and dumps and restores a job's process tree.
//
// A job is the tree under its tern-init, PID 1 of its own PID namespace; it is dumped by the
// host pid of that init. CRIU runs in the agent's own network and mount namespaces, which are
// the node's (docs/platform.md: CRIU must share them with the job). Each run logs verbosely into
// the image directory; a failure is reported with the log's last error lines.
//
// Thread-safety: all functions block and are thread-safe; call them off the io_context thread.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <tern/expected.hpp>
#include <tern/process_tree.hpp>
#include <tern/subprocess.hpp>
#include <tern/unique_fd.hpp>
#include <utility>
#include <vector>

namespace tern::migrate {

// $TERN_CRIU, the configured path, /opt/tern/criu/bin/criu, then criu on PATH; "" if none.
std::string FindCriu(const std::string& configured = "");

struct CriuCheck {
  std::string path;
  std::string version;          // "4.2.1"
  bool works = false;           // `criu check` says "Looks good"
  bool dirty_tracking = false;  // iterative pre-dump possible
  std::string problem;          // why not, one line
};
CriuCheck CheckCriu(const std::string& criu);

struct PageServerTarget {
  std::string address;
  std::uint16_t port = 0;
};

// CRIU's page-server connections inside mutual TLS, with the cluster's certificates (`criu
// --tls --tls-cacert --tls-cert --tls-key`, gnutls inside CRIU). Both ends require a certificate
// signed by `ca`: the serving end (pre-copy's `criu page-server`, post-copy's `criu dump
// --lazy-pages`) drops a connection without one before it reads or sends a page, and the
// connecting end (pre-copy's `criu dump`, post-copy's `criu lazy-pages`) refuses a server
// without one. Names are not checked (--tls-no-cn-verify): CRIU compares the peer's
// certificate with its own --address on both ends, so the serving end would demand its own IP
// address in the client's certificate, and node certificates name nodes, not addresses. Every
// node's key is root's, and root on each node is trusted (docs/security.md). The key is read by
// CRIU, which runs as root. An empty `ca` leaves TLS off.
struct CriuTls {
  std::string ca;
  std::string cert;
  std::string key;
  bool enabled() const { return !ca.empty(); }
};

// The flags that put one criu command's page-server connection inside `tls`; none when off.
std::vector<std::string> CriuTlsArguments(const CriuTls& tls);

struct DumpOptions {
  pid_t pid = 0;              // host pid of the job's init
  std::string images;         // directory for the images (created)
  bool leave_stopped = true;  // two-phase: the source copy stays frozen until commit or abort
  // Pre-copy: pages stream to the destination's page server over a connection made here.
  std::optional<PageServerTarget> page_server;
  std::vector<std::string> external;  // --external, e.g. "unix[INODE]"
  CriuTls tls;                        // the page-server connection inside TLS
  // A `--net` job (docs/networking.md): the inode of its own network namespace. The namespace
  // is left out of the images (the destination prepares its own), TCP connections are dumped
  // established, and CRIU locks nothing: the agent has cut the job's veth (see NetArguments).
  ino_t job_netns = 0;
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};
};

struct RestoreOptions {
  std::string images;
  std::string pidfile;
  bool lazy_pages = false;  // post-copy: memory arrives through the lazy-pages daemon
  // Pre-copy: `--auto-dedup`, the pages punched out of the image as they are restored (see
  // RestoreCommand; worth it for big jobs only).
  bool auto_dedup = false;
  // The job's IPC channel: its socket as dumped ("socket:[INODE]") and the new agent's fd to
  // put in its place (docs/platform.md "A job's channel to its agent").
  std::string channel_socket;
  int channel_fd = -1;
  // The job's same-node direct connections dumped as external ("socket:[INODE]", JobScan::
  // direct_unix): each is restored as a Unix socket whose peer is closed (end of file).
  std::vector<std::string> closed_sockets;
  bool leave_stopped = true;  // resumed only on commit
  // `--cgroup-root` values ("cpu:/tern-node2", or "/tern-node2" for every controller): the
  // restored tree goes into these existing cgroups instead of re-creating the source's paths.
  std::vector<std::string> cgroup_roots;
  // A `--net` job: an fd of the network namespace prepared for it here; CRIU restores the
  // job into it with its TCP connections established. -1: the job shares the node's network.
  int job_netns_fd = -1;
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};
};

// The TCP flags of a dump of a job whose network namespace has inode `job_netns` (0: none):
// `--tcp-close` for a job on its node's network (its only TCP connections are direct calls),
// else `--tcp-established --network-lock skip --external net[INODE]:tern-job-net`.
std::vector<std::string> NetDumpArguments(ino_t job_netns);
// The inode of the network namespace `pid` runs in; 0 if unknown.
ino_t NetNamespaceInode(pid_t pid);

Expected<void> Dump(const std::string& criu, const DumpOptions& options);
// Returns the host pid of the restored init.
Expected<pid_t> Restore(const std::string& criu, const RestoreOptions& options);

// Source side of post-copy: `criu dump --lazy-pages` that writes the metadata, leaves the tree
// stopped, writes one byte to fd 9 when the images are complete, and then serves the job's
// memory on the connected socket it has as fd `ps_socket` (--ps-socket) until the destination
// has pulled all of it. CRIU opens no network socket of its own: the agents carry the stream
// between the nodes inside their TLS (agent/core/src/lazy_page_proxy.hpp). CRIU's own --tls is
// not used here: with it, CRIU 4.2 handed a restored job wrong memory (docs/security.md).
std::vector<std::string> LazyDumpCommand(const std::string& criu, pid_t pid,
                                         const std::string& images, int ps_socket,
                                         const std::vector<std::string>& external = {},
                                         ino_t job_netns = 0);
// What went wrong, from a CRIU log: its last three error lines joined with " | " (CRIU's last
// line is only "Dumping FAILED."; the cause, such as "Some file locks are hold by dumping
// tasks", comes before it), or `fallback` when the log has none.
std::string CriuLogErrors(const std::string& log_path, const std::string& fallback);
// Destination side of post-copy: the daemon that fetches pages from the source on demand,
// through the connected socket it has as fd `ps_socket`. With a status fd it writes one byte
// there once its socket for `criu restore` listens.
std::vector<std::string> LazyPagesCommand(const std::string& criu, const std::string& images,
                                          int ps_socket, int status_fd = -1);

// A criu command started before its images exist, so that its start-up — loading criu and its
// kernel-feature cache, 20-30 ms on these machines — happens before the job's freeze instead
// of inside it. Every criu command reads inventory.img first; a FIFO stands in its place, on
// which criu waits until Release() writes the real inventory (the other images must be in place
// by then). If this agent dies meanwhile, the FIFO loses its writer and criu fails on EOF:
// a parked criu never outlives its agent by waiting forever.
class ParkedCriu {
 public:
  ParkedCriu() = default;
  // Starts argv, which reads images from `images`, and returns once criu waits on the FIFO.
  // status_fd >= 0: criu gets a pipe as that fd (its --status-fd), read by AwaitStatus.
  static Expected<ParkedCriu> Start(const std::vector<std::string>& argv, const std::string& images,
                                    const std::string& output_path,
                                    std::vector<std::pair<int, int>> inherit_fds = {},
                                    int status_fd = -1,
                                    std::chrono::milliseconds patience = std::chrono::seconds(20));
  bool parked() const { return inventory_.valid(); }
  // Hands criu the real inventory.img: it goes on with the images now in place.
  Expected<void> Release(const std::string& inventory);
  // Waits for criu's status byte (it ended without one: an error).
  Expected<void> AwaitStatus(std::chrono::milliseconds timeout);
  BackgroundProcess& process() { return process_; }

 private:
  BackgroundProcess process_;
  tern::UniqueFd inventory_;    // the FIFO's write end
  std::string inventory_path_;  // where the FIFO was made (the real file goes there)
  tern::UniqueFd status_;       // the read end of criu's status pipe
};

// `criu restore` of RestoreOptions, parked until Release (see ParkedCriu).
Expected<ParkedCriu> ParkRestore(const std::string& criu, const RestoreOptions& options);
// Releases a parked restore with `inventory` and waits for it; returns the restored init's pid.
Expected<pid_t> FinishRestore(ParkedCriu& parked, const std::string& inventory,
                              const RestoreOptions& options);
// Post-copy needs pipes of 4 MiB (docs/platform.md); raises fs.pipe-max-size when it is lower.
Expected<void> EnsurePipeMaxSize();

// Destination side of pre-copy: `criu page-server` writing the pages into `images`.
std::vector<std::string> PageServerCommand(const std::string& criu, const std::string& images,
                                           const PageServerTarget& listen, const CriuTls& tls = {});

// CPU compatibility (`criu cpuinfo`): the source's CPU description as bytes, and whether this
// machine can run a job dumped there (an empty Error-free result means yes). The description
// and the good verdicts are kept for the process's life: a machine's CPU does not change.
Expected<std::string> DumpCpuinfo(const std::string& criu, const std::string& scratch_dir);
Expected<void> CheckCpuinfo(const std::string& criu, const std::string& scratch_dir,
                            const std::string& cpuinfo);

// Moved to tern_base (tern/process_tree.hpp); kept here while branches that name them as
// migrate:: are merged (issue 19).
using tern::EndTcpRepair;
using tern::NamespacePids;
using tern::ResumeTree;

}  // namespace tern::migrate
