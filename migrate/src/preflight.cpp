#include "tern/migrate/preflight.hpp"

#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <openssl/evp.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <tern/safe_open.hpp>
#include <thread>

#include "tern/migrate/criu.hpp"

namespace tern::migrate {
namespace fs = std::filesystem;

namespace {

std::string Hex(const unsigned char* bytes, unsigned length) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < length; ++i) {
    out.push_back(digits[bytes[i] >> 4]);
    out.push_back(digits[bytes[i] & 15]);
  }
  return out;
}

std::string Octal(std::uint32_t mode) {
  char text[16];
  std::snprintf(text, sizeof text, "%o", mode);
  return text;
}

// The inodes in column `column` of a /proc/PID/net table (one header line).
void ReadInodes(const std::string& path, int column, std::set<std::uint64_t>* inodes,
                std::map<std::uint64_t, std::uint64_t>* as_keys = nullptr) {
  std::ifstream file(path);
  std::string line;
  std::getline(file, line);
  while (std::getline(file, line)) {
    std::istringstream fields(line);
    std::string field;
    for (int index = 0; index <= column && fields >> field; ++index) {
      if (index != column) continue;
      char* end = nullptr;
      const std::uint64_t inode = std::strtoull(field.c_str(), &end, 10);
      if (*end != '\0' || inode == 0) continue;
      if (inodes) inodes->insert(inode);
      if (as_keys) as_keys->emplace(inode, 0);
    }
  }
}

// Unix sockets' peers in the network namespace of `pid`, from sock_diag (run on a thread of
// its own that enters that namespace). Empty when the kernel does not answer.
std::map<std::uint64_t, std::uint64_t> UnixPeers(pid_t pid) {
  std::map<std::uint64_t, std::uint64_t> peers;
  std::thread([&] {
    const std::string ns = "/proc/" + std::to_string(pid) + "/ns/net";
    const int ns_fd = ::open(ns.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns_fd < 0) return;
    const bool entered = ::setns(ns_fd, CLONE_NEWNET) == 0;
    ::close(ns_fd);
    if (!entered) return;
    const int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) return;
    struct {
      nlmsghdr header;
      unix_diag_req request;
    } ask{};
    ask.header.nlmsg_len = sizeof ask;
    ask.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    ask.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    ask.request.sdiag_family = AF_UNIX;
    ask.request.udiag_states = ~0u;
    ask.request.udiag_show = UDIAG_SHOW_PEER;
    if (::send(fd, &ask, sizeof ask, 0) != static_cast<ssize_t>(sizeof ask)) {
      ::close(fd);
      return;
    }
    std::vector<char> buffer(1 << 16);
    for (bool done = false; !done;) {
      const ssize_t got = ::recv(fd, buffer.data(), buffer.size(), 0);
      if (got <= 0) break;
      int left = static_cast<int>(got);
      for (auto* message = reinterpret_cast<nlmsghdr*>(buffer.data()); NLMSG_OK(message, left);
           message = NLMSG_NEXT(message, left)) {
        if (message->nlmsg_type == NLMSG_DONE || message->nlmsg_type == NLMSG_ERROR) {
          done = true;
          break;
        }
        const auto* diag = static_cast<const unix_diag_msg*>(NLMSG_DATA(message));
        std::uint64_t peer = 0;
        int attributes = static_cast<int>(message->nlmsg_len - NLMSG_LENGTH(sizeof *diag));
        for (auto* attribute = reinterpret_cast<rtattr*>(const_cast<unix_diag_msg*>(diag) + 1);
             RTA_OK(attribute, attributes); attribute = RTA_NEXT(attribute, attributes)) {
          if (attribute->rta_type == UNIX_DIAG_PEER && RTA_PAYLOAD(attribute) >= 4) {
            std::uint32_t value = 0;
            std::memcpy(&value, RTA_DATA(attribute), sizeof value);
            peer = value;
          }
        }
        peers[diag->udiag_ino] = peer;
      }
    }
    ::close(fd);
  }).join();
  return peers;
}

std::uint64_t SocketInode(const std::string& target) {
  const auto open = target.find('[');
  if (open == std::string::npos) return 0;
  return std::strtoull(target.c_str() + open + 1, nullptr, 10);
}

}  // namespace

SocketTables SocketTables::Read(pid_t pid) {
  SocketTables tables;
  const std::string net = "/proc/" + std::to_string(pid) + "/net/";
  ReadInodes(net + "tcp", 9, &tables.tcp);
  ReadInodes(net + "tcp6", 9, &tables.tcp);
  ReadInodes(net + "udp", 9, &tables.udp);
  ReadInodes(net + "udp6", 9, &tables.udp);
  ReadInodes(net + "unix", 6, nullptr, &tables.unix_peer);
  for (const auto& [inode, peer] : UnixPeers(pid)) tables.unix_peer[inode] = peer;
  return tables;
}

Expected<OutsideFile> FingerprintFile(const std::string& path, std::uint64_t max_bytes) {
  if (path.empty() || path.front() != '/') return Fail(path + " is not an absolute path");
  auto root = OpenDirectoryNoFollow("/");
  if (!root) return Unexpected<Error>{root.error()};
  // Beneath "/" with no symlinks: the path /proc showed at the source is already free of them,
  // so a symlink anywhere on it here is not the same file.
  auto opened = OpenRegularBeneath(root->get(), path.substr(1), O_RDONLY | O_NOCTTY);
  if (!opened) return Unexpected<Error>{Error{path + ": " + opened.error().message}};
  if (!opened->valid()) return Fail(path + " does not exist");
  struct stat info {};
  if (::fstat(opened->get(), &info) != 0) return Fail("cannot stat " + path);
  OutsideFile file;
  file.path = path;
  file.size = static_cast<std::uint64_t>(info.st_size);
  file.uid = info.st_uid;
  file.gid = info.st_gid;
  file.mode = info.st_mode;
  if (file.size > max_bytes) {
    return Fail(path + " is " + std::to_string(file.size >> 20) + " MiB, more than the " +
                std::to_string(max_bytes >> 20) + " MiB the pre-flight can compare");
  }
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> digest(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!digest || EVP_DigestInit_ex(digest.get(), EVP_sha256(), nullptr) != 1) {
    return Fail("cannot hash " + path + ": no SHA-256");
  }
  std::uint64_t total = 0;
  std::string buffer(1 << 16, '\0');
  for (;;) {
    const ssize_t n = ::read(opened->get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Fail("cannot read " + path + ": " + std::strerror(errno));
    if (n == 0) break;
    total += static_cast<std::uint64_t>(n);
    if (total > max_bytes) return Fail(path + " grew while it was read");
    EVP_DigestUpdate(digest.get(), buffer.data(), static_cast<size_t>(n));
  }
  if (total != file.size) return Fail(path + " changed size while it was read");
  unsigned char sum[EVP_MAX_MD_SIZE];
  unsigned length = 0;
  EVP_DigestFinal_ex(digest.get(), sum, &length);
  file.sha256 = Hex(sum, length);
  return file;
}

OpenFileKind ClassifyOpenFile(const std::string& target, const std::string& job_dir) {
  if (target.rfind("socket:", 0) == 0) return OpenFileKind::kSocket;
  if (target.rfind("pipe:", 0) == 0 || target.rfind("anon_inode:", 0) == 0) {
    return OpenFileKind::kFine;
  }
  if (target.rfind("/dev/pts/", 0) == 0 || target.rfind("/dev/tty", 0) == 0 ||
      target == "/dev/console" || target == "/dev/ptmx") {
    return OpenFileKind::kTerminal;
  }
  // A memfd is memory, not a file of the node: CRIU dumps its contents with the job (a
  // same-node stream's rings, held open only between the memfd's making and its mapping,
  // docs/ipc.md "Shared memory on one node").
  if (target.rfind("/memfd:", 0) == 0) return OpenFileKind::kFine;
  static const std::set<std::string> harmless = {"/dev/null", "/dev/zero", "/dev/random",
                                                 "/dev/urandom", "/dev/full"};
  if (target.rfind("/dev/", 0) == 0) {
    return harmless.count(target) ? OpenFileKind::kFine : OpenFileKind::kDevice;
  }
  if (target.rfind(job_dir + "/", 0) == 0 || target == job_dir) return OpenFileKind::kInsideJob;
  if (!target.empty() && target[0] == '/') return OpenFileKind::kOutsideJob;
  return OpenFileKind::kFine;
}

std::string JobChannelSocket(pid_t init_pid) {
  std::error_code error;
  const std::string target =
      fs::read_symlink("/proc/" + std::to_string(init_pid) + "/fd/3", error).string();
  return !error && target.rfind("socket:[", 0) == 0 ? target : std::string();
}

std::string ExternalUnixSocket(const std::string& channel) {
  const auto open = channel.find('[');
  const auto close = channel.find(']');
  if (open == std::string::npos || close == std::string::npos) return "";
  return "unix[" + channel.substr(open + 1, close - open - 1) + "]";
}

JobScan ScanJob(pid_t init_pid, const std::string& job_dir, const std::set<std::string>& direct,
                bool own_network, const std::string& channel) {
  JobScan scan;
  scan.channel = channel.empty() ? JobChannelSocket(init_pid) : channel;
  std::set<std::string> seen;
  const long page = sysconf(_SC_PAGESIZE);
  const SocketTables tables = SocketTables::Read(init_pid);
  // Every socket the job's processes hold: a Unix socket whose peer is among them stays whole.
  std::set<std::uint64_t> held, held_direct;
  const std::vector<pid_t> pids = NamespacePids(init_pid);
  for (pid_t pid : pids) {
    std::error_code error;
    for (const auto& entry :
         fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", error)) {
      std::error_code link_error;
      const std::string target = fs::read_symlink(entry.path(), link_error).string();
      if (link_error || target.rfind("socket:", 0) != 0) continue;
      // The channel and direct call sockets are handed over apart: an end held outside
      // the job stays outside even if the job holds it too.
      if (direct.contains(target)) {
        held_direct.insert(SocketInode(target));
      } else if (target != scan.channel) {
        held.insert(SocketInode(target));
      }
    }
  }
  // Same-node direct connections are Unix socket pairs the agent made, in its own network
  // namespace (a `--net` job's tables do not list them): their ends are found in the agent's.
  const SocketTables agent_tables =
      held_direct.empty() ? SocketTables{} : SocketTables::Read(::getpid());
  std::set<std::string> direct_unix;
  for (pid_t pid : pids) {
    ++scan.processes;
    std::ifstream statm("/proc/" + std::to_string(pid) + "/statm");
    std::uint64_t size = 0, resident = 0;
    if (statm >> size >> resident) scan.rss_bytes += resident * static_cast<std::uint64_t>(page);
    std::error_code error;
    for (const auto& entry :
         fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", error)) {
      std::error_code link_error;
      const std::string target = fs::read_symlink(entry.path(), link_error).string();
      if (link_error) continue;
      const std::string where =
          "fd " + entry.path().filename().string() + " of pid " + std::to_string(pid);
      if (!scan.channel.empty() && target == scan.channel) continue;
      if (direct.contains(target)) {
        ++scan.direct_sockets;
        // CRIU cannot dump half of a Unix stream connection: an end whose peer the job does not
        // hold is dumped as external and restored as a closed socket (`direct_unix`).
        const auto pair = agent_tables.unix_peer.find(SocketInode(target));
        if (pair != agent_tables.unix_peer.end() && !held_direct.contains(pair->second)) {
          direct_unix.insert(target);
        }
        continue;
      }
      switch (ClassifyOpenFile(target, job_dir)) {
        case OpenFileKind::kTerminal:
          scan.blockers.push_back(where + " is a terminal (" + target +
                                  "); a terminal cannot follow the job");
          break;
        case OpenFileKind::kSocket: {
          const std::uint64_t inode = SocketInode(target);
          const bool tcp = tables.tcp.contains(inode);
          if (tcp || tables.udp.contains(inode)) {
            if (!own_network) {
              scan.blockers.push_back(
                  where + " is a " + (tcp ? "TCP" : "UDP") + " socket (" + target +
                  "); a job on its node's network leaves its address behind: submit it with "
                  "`tern submit --net` to give it an address that moves with it");
            }
            break;
          }
          if (auto unix_socket = tables.unix_peer.find(inode);
              unix_socket != tables.unix_peer.end()) {
            const std::uint64_t peer = unix_socket->second;
            if (peer != 0 && !held.contains(peer)) {
              scan.blockers.push_back(where + " is a Unix socket (" + target +
                                      ") connected to socket:[" + std::to_string(peer) +
                                      "] outside the job; that end cannot follow it");
            }
            break;
          }
          scan.blockers.push_back(where + " is a socket (" + target +
                                  ") of a kind the job cannot take along; its other end would "
                                  "stay behind");
          break;
        }
        case OpenFileKind::kDevice:
          scan.blockers.push_back(where + " is the device " + target +
                                  ", which cannot follow the job");
          break;
        case OpenFileKind::kOutsideJob:
          if (seen.insert(target).second) {
            auto file = FingerprintFile(target);
            if (file) {
              scan.outside.push_back(std::move(*file));
            } else {
              scan.blockers.push_back(where + " is outside the job directory and cannot be " +
                                      "compared with the destination's: " + file.error().message);
            }
          }
          break;
        default:
          break;
      }
    }
  }
  if (scan.processes == 0) scan.blockers.push_back("the job has no running process");
  scan.direct_unix.assign(direct_unix.begin(), direct_unix.end());
  return scan;
}

std::vector<std::string> CompareFiles(const std::vector<OutsideFile>& files,
                                      const std::string& node_name) {
  std::vector<std::string> problems;
  for (const auto& file : files) {
    const std::string held = "the job holds " + file.path + " open, and ";
    if (file.sha256.empty()) {
      problems.push_back(held + "the source sent no content hash to compare " + node_name +
                         "'s copy with");
      continue;
    }
    auto here = FingerprintFile(file.path);
    if (!here) {
      problems.push_back(held + "on " + node_name +
                         " it cannot be compared: " + here.error().message);
      continue;
    }
    std::vector<std::string> differences;
    if ((here->mode & S_IFMT) != (file.mode & S_IFMT)) differences.push_back("file type");
    if (here->uid != file.uid || here->gid != file.gid) {
      differences.push_back("owner " + std::to_string(here->uid) + ":" + std::to_string(here->gid) +
                            " vs " + std::to_string(file.uid) + ":" + std::to_string(file.gid));
    }
    if ((here->mode & 07777) != (file.mode & 07777)) {
      differences.push_back("mode " + Octal(here->mode & 07777) + " vs " +
                            Octal(file.mode & 07777));
    }
    if (here->size != file.size) {
      differences.push_back("size " + std::to_string(here->size) + " vs " +
                            std::to_string(file.size));
    } else if (here->sha256 != file.sha256) {
      differences.push_back("content (SHA-256)");
    }
    if (differences.empty()) continue;
    std::string text;
    for (const auto& difference : differences) text += (text.empty() ? "" : ", ") + difference;
    problems.push_back(held + node_name + "'s copy differs: " + text);
  }
  return problems;
}

}  // namespace tern::migrate
