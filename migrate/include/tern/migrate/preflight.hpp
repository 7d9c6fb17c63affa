// Pre-flight: can this job move, before anything is frozen? The source scans the job's
// processes (every process of its PID namespace) and the destination checks what the job
// would find there. Each problem is one line a person can act on.
//
// Classification of what a process holds open is a pure function (ClassifyOpenFile) so that
// the rules are testable without /proc.
//
// A file the job holds open outside its directory is reopened by path by CRIU, as root, on the
// destination. So the destination must hold the very same file there: it is opened without
// following any symlink on its path (a user's symlink to /etc/shadow is refused, not read), must
// be a regular file (a FIFO is refused, never read), and must match the source's copy in owner,
// mode, size and content. Content is compared by SHA-256 of the whole file, read through the fd
// that was checked: size and mtime prove nothing (a user sets mtime with touch -d, and honest
// copies on two nodes differ in mtime). Files over kMaxComparedBytes are refused rather than
// hashed for seconds: what cannot be proved equal does not move. Each refusal says why.
//
// Thread-safety: reentrant.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tern/expected.hpp>
#include <vector>

namespace tern::migrate {

// What the pre-flight knows of a file outside the job directory: enough to prove that another
// node's file at `path` is the same.
struct OutsideFile {
  std::string path;
  std::uint64_t size = 0;
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
  std::uint32_t mode = 0;  // st_mode: type and permission bits
  std::string sha256;      // of the whole content, lowercase hex
};

// The largest outside file the pre-flight hashes (SHA-256 reads ~0.5-1 GB/s here).
constexpr std::uint64_t kMaxComparedBytes = 256ull << 20;

// Opens `path` (absolute) without following any symlink on it, non-blocking, as a regular file,
// and fingerprints it; refused with why (a symlink, a FIFO, missing, too big, changed while read).
Expected<OutsideFile> FingerprintFile(const std::string& path,
                                      std::uint64_t max_bytes = kMaxComparedBytes);

struct JobScan {
  std::vector<std::string> blockers;  // reasons the job cannot move
  std::vector<OutsideFile> outside;   // files open outside the job directory
  std::uint64_t rss_bytes = 0;
  int processes = 0;
  std::string channel;     // "socket:[INODE]": the job's IPC channel to its agent (not a blocker)
  int direct_sockets = 0;  // open ends of the job's direct call connections (not blockers)
  // Of those, the Unix socket pair ends of same-node connections whose other end the job does
  // not hold ("socket:[INODE]", each once): CRIU dumps them as external and the destination
  // restores each as a socket whose peer is closed (RestoreOptions::closed_sockets).
  std::vector<std::string> direct_unix;
};

enum class OpenFileKind { kFine, kInsideJob, kOutsideJob, kTerminal, kSocket, kDevice };

// `target` is the readlink of /proc/PID/fd/N.
OpenFileKind ClassifyOpenFile(const std::string& target, const std::string& job_dir);

// `direct` lists the job's direct call connections ("socket:[INODE]", docs/ipc.md "Direct
// calls"): the agent shuts them down before the move and CRIU restores them closed, so they do
// not keep the job from moving. A same-node one is a Unix socket pair the agent made (found in
// the agent's own network namespace, the caller's); its ends go to `direct_unix`.
//
// Sockets: a job on its node's network (own_network false) moves with no TCP or UDP socket —
// its address stays behind — and is told to use `tern submit --net`. A `--net` job takes
// them along (CRIU's TCP repair). Either way a Unix socket whose other end is held outside the
// job (a daemon's socket, say) is refused: that end cannot follow; one between two processes
// of the job moves with it.
//
// `channel` is the job's IPC channel as its agent holds it ("socket:[INODE]" of the job's end):
// after the agent restarted and the job re-attached, that is no longer fd 3 of its init (which
// keeps the first, orphaned channel). Empty: fd 3 of the init (JobChannelSocket).
JobScan ScanJob(pid_t init_pid, const std::string& job_dir,
                const std::set<std::string>& direct = {}, bool own_network = false,
                const std::string& channel = {});

// What kind of socket "socket:[INODE]" of a process is, from the tables of the process's
// network namespace (/proc/PID/net/...) and, for Unix sockets, the inode of the other end
// (sock_diag). Pure lookup: `SocketTables::Read(pid)` fills it.
struct SocketTables {
  std::set<std::uint64_t> tcp, udp;                  // inodes, IPv4 and IPv6
  std::map<std::uint64_t, std::uint64_t> unix_peer;  // inode -> peer inode (0: none)
  static SocketTables Read(pid_t pid);
};

// The job's IPC channel as /proc shows it ("socket:[INODE]"), from fd 3 of its init; "" if none.
// It is dumped as an external socket and re-attached to the new agent at restore.
std::string JobChannelSocket(pid_t init_pid);
// "unix[INODE]" for criu dump --external, from "socket:[INODE]".
std::string ExternalUnixSocket(const std::string& channel);

// At the destination: the files the job holds outside its directory must be there and the same
// (FingerprintFile here equal to the source's); one line per file that is not.
std::vector<std::string> CompareFiles(const std::vector<OutsideFile>& files,
                                      const std::string& node_name);

}  // namespace tern::migrate
