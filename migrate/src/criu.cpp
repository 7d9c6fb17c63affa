#include "tern/migrate/criu.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <tern/mounts.hpp>
#include <tern/subprocess.hpp>
#include <tern/unique_fd.hpp>
#include <thread>

namespace tern::migrate {

namespace {
// The only TCP connections a job may hold when it moves are its direct call connections
// (docs/ipc.md "Direct calls"), which the agent has shut down before the dump: CRIU dumps them
// without their state and restores them closed, and libtern then calls through the agents.
constexpr const char* kTcpClose = "--tcp-close";
// The key that names a `--net` job's namespace between dump (--external) and restore
// (--inherit-fd).
constexpr const char* kJobNetKey = "tern-job-net";
constexpr int kJobNetFdInCriu = 4;
}  // namespace

std::vector<std::string> NetDumpArguments(ino_t job_netns) {
  if (job_netns == 0) return {kTcpClose};
  return {"--tcp-established", "--network-lock", "skip", "--external",
          "net[" + std::to_string(job_netns) + "]:" + kJobNetKey};
}

ino_t NetNamespaceInode(pid_t pid) {
  struct stat info {};
  if (::stat(("/proc/" + std::to_string(pid) + "/ns/net").c_str(), &info) != 0) return 0;
  return info.st_ino;
}

using tern::UniqueFd;

CriuCheck CheckCriuUncached(const std::string& criu);
Expected<std::string> DumpCpuinfoUncached(const std::string& criu, const std::string& scratch_dir);
Expected<void> CheckCpuinfoUncached(const std::string& criu, const std::string& scratch_dir,
                                    const std::string& cpuinfo);

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream bytes;
  bytes << file.rdbuf();
  return bytes.str();
}

// CRIU's kernel probe ("kerndat") and its cache. Every criu run first asks the kernel what it
// supports — it makes a veth pair in a fresh network namespace, runs iptables, parses the vDSO,
// forks ptrace probes — which takes 70-100 ms here, inside the job's freeze, unless
// /run/criu.kdat holds the answers. CRIU writes that file only when /run is a tmpfs (so that a
// reboot drops it); on these machines /run is not one (docs/platform.md), and CRIU reads the file
// wherever it lives. So we let `criu check` probe once in a private mount namespace with a
// tmpfs on /run, and install the file it writes there as /run/criu.kdat, stamped with what it
// depends on (boot, kernel, CRIU): any change makes us probe again.
constexpr const char* kKerndatCache = "/run/criu.kdat";
constexpr const char* kKerndatStamp = "/run/criu.kdat.tern-stamp";

std::string KerndatStamp(const std::string& criu, const std::string& version) {
  std::string boot = ReadFile("/proc/sys/kernel/random/boot_id");
  while (!boot.empty() && boot.back() == '\n') boot.pop_back();
  return "boot " + boot + "\ncriu " + criu + " " + version + "\n";
}

void PrimeKerndatCache(const std::string& criu, const std::string& version) {
  // A tmpfs /run: CRIU keeps its own cache there, and it is right for this boot.
  if (OnTmpfs("/run")) return;
  const std::string stamp = KerndatStamp(criu, version);
  struct stat cache {};
  if (::stat(kKerndatCache, &cache) == 0 && cache.st_size > 0 && ReadFile(kKerndatStamp) == stamp) {
    return;
  }
  // Whatever is there is from another boot or another CRIU: it goes before anything reads it.
  ::unlink(kKerndatStamp);
  ::unlink(kKerndatCache);
  std::string temporary = std::string(kKerndatCache) + ".tern-XXXXXX";
  const int fd = ::mkstemp(temporary.data());
  if (fd < 0) return;
  SubprocessOptions quick;
  quick.timeout = std::chrono::seconds(20);
  quick.inherit_fds.emplace_back(3, fd);
  // The tmpfs hides the real /run from `criu check` only; fd 3 is the file in the real one.
  auto probed = RunSubprocess(
      {"unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
       "mount -t tmpfs -o size=1m,mode=0755 tern-kdat /run && \"$0\" check >/dev/null 2>&1 && "
       "cat /run/criu.kdat >&3",
       criu},
      quick);
  struct stat written {};
  const bool ok = probed && probed->exit_code == 0 && ::fstat(fd, &written) == 0 &&
                  written.st_size > 0 && ::fchmod(fd, 0600) == 0 && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(temporary.c_str(), kKerndatCache) != 0) {
    ::unlink(temporary.c_str());
    return;
  }
  std::ofstream(kKerndatStamp, std::ios::trunc) << stamp;
}

// A TCP connection to the destination's page server, for `criu dump --ps-socket`.
Expected<UniqueFd> ConnectPageServer(const PageServerTarget& target) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(target.port);
  const std::string where = "the page server at " + target.address + ":" + port;
  if (::getaddrinfo(target.address.c_str(), port.c_str(), &hints, &found) != 0 || !found) {
    return Fail("cannot resolve " + where);
  }
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> list(found, ::freeaddrinfo);
  std::string problem = "no address";
  for (addrinfo* address = found; address != nullptr; address = address->ai_next) {
    UniqueFd fd(::socket(address->ai_family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
    if (!fd.valid()) continue;
    timeval limit{10, 0};  // connect() honours the send timeout
    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    if (::connect(fd.get(), address->ai_addr, address->ai_addrlen) == 0) {
      timeval none{0, 0};
      ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none);
      return fd;
    }
    problem = std::strerror(errno);
  }
  return Fail("cannot connect to " + where + ": " + problem);
}

// If CRIU has corked `fd` (a page-server connection), uncorks it and sends at once from then on;
// true when it did. CRIU 4.x leaves its last message in the cork (see Dump).
bool LiftCork(int fd) {
  int corked = 0;
  socklen_t length = sizeof corked;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_CORK, &corked, &length) != 0 || !corked) return false;
  const int off = 0, on = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_CORK, &off, sizeof off);
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  return true;
}

// Pre-copy with TLS: `criu dump --ps-socket` skips the TLS handshake (criu 4.2, page-xfer.c), so
// CRIU must connect to the page server itself, and we no longer hold a copy of its socket to
// lift the cork (see Dump). We take one from CRIU with pidfd_getfd: the TCP socket among its fds
// whose peer is the page server's port. Polls every millisecond until `finished`; gives up
// quietly (the dump then only waits for the kernel's cork timer, as it would without this).
void UncorkPageServerSocket(pid_t criu, std::uint16_t port, const std::atomic<bool>& finished) {
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, criu, 0)));
  if (!pidfd.valid()) return;
  std::set<int> looked_at;
  UniqueFd socket;
  const std::string fd_dir = "/proc/" + std::to_string(criu) + "/fd";
  while (!finished.load()) {
    if (!socket.valid()) {
      std::error_code error;
      for (const auto& entry : std::filesystem::directory_iterator(fd_dir, error)) {
        const int fd = std::atoi(entry.path().filename().c_str());
        std::error_code link_error;
        const auto target = std::filesystem::read_symlink(entry.path(), link_error).string();
        if (link_error || target.rfind("socket:", 0) != 0 || looked_at.contains(fd)) continue;
        UniqueFd copy(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), fd, 0)));
        sockaddr_storage peer{};
        socklen_t length = sizeof peer;
        if (!copy.valid() ||
            ::getpeername(copy.get(), reinterpret_cast<sockaddr*>(&peer), &length) != 0) {
          continue;  // not connected yet: looked at again next round
        }
        looked_at.insert(fd);
        const std::uint16_t peer_port =
            peer.ss_family == AF_INET    ? ntohs(reinterpret_cast<sockaddr_in*>(&peer)->sin_port)
            : peer.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&peer)->sin6_port)
                                         : 0;
        if (peer_port == port) {
          socket = std::move(copy);
          break;
        }
      }
    }
    // CRIU corks once, when it starts using the socket.
    if (socket.valid() && LiftCork(socket.get())) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace

std::string FindCriu(const std::string& configured) {
  if (const char* env = std::getenv("TERN_CRIU"); env != nullptr && *env != '\0') return env;
  if (!configured.empty()) return configured;
  if (::access("/opt/tern/criu/bin/criu", X_OK) == 0) return "/opt/tern/criu/bin/criu";
  for (const char* dir : {"/usr/local/sbin", "/usr/sbin", "/usr/local/bin", "/usr/bin", "/sbin"}) {
    const std::string path = std::string(dir) + "/criu";
    if (::access(path.c_str(), X_OK) == 0) return path;
  }
  return "";
}

CriuCheck CheckCriu(const std::string& criu) {
  // `criu check` takes ~70 ms and its verdict changes only with the machine: remember a good
  // one for a minute (a failing one is asked again every time, so a fix shows at once).
  static std::mutex mutex;
  static std::map<std::string, std::pair<std::chrono::steady_clock::time_point, CriuCheck>> cache;
  {
    std::lock_guard lock(mutex);
    auto found = cache.find(criu);
    if (found != cache.end() &&
        std::chrono::steady_clock::now() - found->second.first < std::chrono::minutes(1)) {
      return found->second.second;
    }
  }
  CriuCheck check = CheckCriuUncached(criu);
  if (check.works) {
    std::lock_guard lock(mutex);
    cache[criu] = {std::chrono::steady_clock::now(), check};
  }
  return check;
}

CriuCheck CheckCriuUncached(const std::string& criu) {
  CriuCheck check;
  check.path = criu;
  if (criu.empty()) {
    check.problem = "criu not found (deploy/install-deps installs CRIU 4.2 into /opt/tern/criu)";
    return check;
  }
  SubprocessOptions quick;
  quick.timeout = std::chrono::seconds(20);
  auto version = RunSubprocess({criu, "--version"}, quick);
  std::smatch match;
  if (version && std::regex_search(version->output, match, std::regex(R"(Version:\s*([\d.]+))"))) {
    check.version = match[1];
  }
  // Before `criu check`, so that it, too, finds the cache.
  PrimeKerndatCache(criu, check.version);
  auto verdict = RunSubprocess({criu, "check"}, quick);
  check.works = verdict && verdict->output.find("Looks good") != std::string::npos;
  if (!check.works) {
    check.problem = "`criu check` fails" +
                    (verdict ? ": " + verdict->output.substr(0, verdict->output.find('\n')) : "");
  }
  auto dirty = RunSubprocess({criu, "check", "--feature", "mem_dirty_track"}, quick);
  check.dirty_tracking = dirty && dirty->exit_code == 0;
  return check;
}

namespace {

// Dump's pre-copy path with TLS: CRIU connects to the page server itself (--ps-socket would skip
// TLS), run in the background so that UncorkPageServerSocket knows its pid.
Expected<void> DumpThroughTls(std::vector<std::string> argv, const std::string& log,
                              const DumpOptions& options) {
  const PageServerTarget& target = *options.page_server;
  argv.insert(argv.end(), {"--page-server", "--address", target.address, "--port",
                           std::to_string(target.port)});
  for (const auto& flag : CriuTlsArguments(options.tls)) argv.push_back(flag);
  for (const auto& resource : options.external) argv.insert(argv.end(), {"--external", resource});
  const std::string output = options.images + "/../dump.out";  // not shipped with the images
  auto process = BackgroundProcess::Start(argv, output);
  if (!process) return Fail("cannot start criu dump: " + process.error().message);
  std::atomic<bool> finished{false};
  std::jthread uncork([pid = process->pid(), port = target.port, &finished] {
    UncorkPageServerSocket(pid, port, finished);
  });
  const auto code = process->Wait(options.timeout);
  finished = true;
  uncork.join();
  if (!code) {
    process->Finish(std::chrono::milliseconds(0));
    return Fail("criu dump timed out");
  }
  if (*code != 0) {
    std::ifstream file(output);
    std::string text((std::istreambuf_iterator<char>(file)), {});
    return Fail("criu dump failed: " + CriuLogErrors(log, text));
  }
  return {};
}

}  // namespace

std::vector<std::string> CriuTlsArguments(const CriuTls& tls) {
  if (!tls.enabled()) return {};
  return {"--tls",  "--tls-cacert", tls.ca,  "--tls-cert",
          tls.cert, "--tls-key",    tls.key, "--tls-no-cn-verify"};
}

Expected<void> Dump(const std::string& criu, const DumpOptions& options) {
  std::error_code error;
  std::filesystem::create_directories(options.images, error);
  if (error) return Fail("cannot create " + options.images + ": " + error.message());
  const std::string log = options.images + "/dump.log";
  std::vector<std::string> argv = {
      criu, "dump", "-t", std::to_string(options.pid), "-D", options.images, "-o", log, "-v4"};
  if (options.leave_stopped) argv.push_back("--leave-stopped");
  for (auto& flag : NetDumpArguments(options.job_netns)) argv.push_back(std::move(flag));
  SubprocessOptions run;
  run.timeout = options.timeout;
  // Pre-copy: CRIU corks its page-server socket when it connects, and CRIU 4.x no longer pushes
  // its last message (the "close" that the page server must answer) out of the cork: the dump
  // then waits for the kernel's 200 ms cork timer, inside the job's freeze, on every move. So we
  // connect the socket ourselves, hand it to CRIU (--ps-socket) and lift the cork as soon as
  // CRIU has set it (it sets it once, when it starts using the socket).
  if (options.page_server && options.tls.enabled()) return DumpThroughTls(argv, log, options);
  UniqueFd page_socket;
  if (options.page_server) {
    auto connected = ConnectPageServer(*options.page_server);
    if (!connected) return Unexpected<Error>{connected.error()};
    page_socket = std::move(*connected);
    constexpr int kPageSocketInCriu = 3;
    argv.insert(argv.end(), {"--page-server", "--ps-socket", std::to_string(kPageSocketInCriu)});
    run.inherit_fds.emplace_back(kPageSocketInCriu, page_socket.get());
  }
  for (const auto& resource : options.external) argv.insert(argv.end(), {"--external", resource});
  std::atomic<bool> finished{false};
  std::jthread uncork;
  if (page_socket.valid()) {
    // Only this thread touches page_socket until it is joined.
    uncork = std::jthread([&page_socket, &finished] {
      while (!finished.load()) {
        if (LiftCork(page_socket.get())) {
          // CRIU holds its own copy; ours must go, for the page server waits for the end of
          // the stream before it ends.
          page_socket.Reset();
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
  }
  auto result = RunSubprocess(argv, run);
  finished = true;
  if (uncork.joinable()) uncork.join();
  page_socket.Reset();
  if (!result) return Unexpected<Error>{result.error()};
  if (result->timed_out) return Fail("criu dump timed out");
  if (result->exit_code != 0) {
    return Fail("criu dump failed: " + CriuLogErrors(log, result->output));
  }
  return {};
}

namespace {

struct CriuCommand {
  std::vector<std::string> argv;
  std::vector<std::pair<int, int>> inherit_fds;  // {fd in criu, fd here}
  std::vector<UniqueFd> owned;                   // fds made for criu, open until it has started
};

// Where criu finds the sockets that stand for the job's same-node direct connections.
constexpr int kClosedSocketFdsInCriu = 20;

CriuCommand RestoreCommand(const std::string& criu, const RestoreOptions& options) {
  CriuCommand command;
  command.argv = {
      criu,  "restore", "-D",        options.images, "-o", options.images + "/restore.log",
      "-v4", "-d",      "--pidfile", options.pidfile};
  if (options.leave_stopped) command.argv.push_back("--leave-stopped");
  if (options.lazy_pages) command.argv.push_back("--lazy-pages");
  for (const auto& root : options.cgroup_roots) {
    command.argv.insert(command.argv.end(), {"--cgroup-root", root});
  }
  if (options.job_netns_fd >= 0) {
    command.argv.insert(command.argv.end(),
                        {"--tcp-established", "--network-lock", "skip", "--inherit-fd",
                         "fd[" + std::to_string(kJobNetFdInCriu) + "]:" + kJobNetKey});
    command.inherit_fds.emplace_back(kJobNetFdInCriu, options.job_netns_fd);
  } else {
    command.argv.push_back(kTcpClose);
  }
  // The pages are read in 128 MiB pieces, each punched out of pages-*.img once in the job: the
  // memory the image held goes straight back into the job's pages, so the node holds one copy
  // of the job's memory plus 128 MiB, not two, and where first touching memory is slow it is
  // faster (these VMs: 1 GiB restored in 1.1-1.5 s instead of 2.0-2.7 s). Small jobs gain
  // nothing and pay for the punching: 64 MiB 97 -> 120-166 ms, 256 MiB 300 -> 400-440 ms
  // (docs/migration.md "Pre-copy's memory"). The images are used up; nothing restores twice.
  if (options.auto_dedup && !options.lazy_pages) command.argv.push_back("--auto-dedup");
  if (!options.channel_socket.empty() && options.channel_fd >= 0) {
    constexpr int kChannelFdInCriu = 3;
    command.argv.insert(
        command.argv.end(),
        {"--inherit-fd", "fd[" + std::to_string(kChannelFdInCriu) + "]:" + options.channel_socket});
    command.inherit_fds.emplace_back(kChannelFdInCriu, options.channel_fd);
  }
  // The job's same-node direct connections it still held at the dump (dumped as external
  // Unix sockets; docs/ipc.md "Direct streams"): each comes back as a Unix socket whose peer is
  // closed, so the job reads end of file and its libtern goes through the agents, as it does
  // on a TCP connection restored closed. Without its socket criu fails, and so does the move.
  int fd_in_criu = kClosedSocketFdsInCriu;
  for (const auto& socket : options.closed_sockets) {
    int ends[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) != 0) continue;
    ::close(ends[1]);
    command.owned.emplace_back(ends[0]);
    command.argv.insert(command.argv.end(),
                        {"--inherit-fd", "fd[" + std::to_string(fd_in_criu) + "]:" + socket});
    command.inherit_fds.emplace_back(fd_in_criu++, ends[0]);
  }
  return command;
}

Expected<pid_t> RestoredPid(const RestoreOptions& options) {
  std::ifstream pidfile(options.pidfile);
  pid_t pid = 0;
  if (!(pidfile >> pid) || pid <= 0) return Fail("criu restore left no pid in " + options.pidfile);
  return pid;
}

}  // namespace

Expected<pid_t> Restore(const std::string& criu, const RestoreOptions& options) {
  const std::string log = options.images + "/restore.log";
  const CriuCommand command = RestoreCommand(criu, options);
  SubprocessOptions run;
  run.timeout = options.timeout;
  run.inherit_fds = command.inherit_fds;
  auto result = RunSubprocess(command.argv, run);
  if (!result) return Unexpected<Error>{result.error()};
  if (result->timed_out) return Fail("criu restore timed out");
  if (result->exit_code != 0) {
    return Fail("criu restore failed: " + CriuLogErrors(log, result->output));
  }
  return RestoredPid(options);
}

namespace {

Expected<void> WriteWholeFile(const std::string& path, std::string_view bytes) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) return Fail("cannot write " + path + ": " + std::strerror(errno));
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd.get(), bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Fail("cannot write " + path + ": " + std::strerror(errno));
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

}  // namespace

Expected<ParkedCriu> ParkedCriu::Start(const std::vector<std::string>& argv,
                                       const std::string& images, const std::string& output_path,
                                       std::vector<std::pair<int, int>> inherit_fds, int status_fd,
                                       std::chrono::milliseconds patience) {
  const std::string fifo = images + "/inventory.img";
  // A FIFO already there is one an earlier parked criu has opened: it keeps its own.
  ::unlink(fifo.c_str());
  if (::mkfifo(fifo.c_str(), 0600) != 0) {
    return Fail("cannot make " + fifo + ": " + std::strerror(errno));
  }
  ParkedCriu parked;
  UniqueFd status_write;
  if (status_fd >= 0) {
    int ends[2];
    if (::pipe2(ends, O_CLOEXEC) != 0) return Fail("cannot make a pipe for criu's status");
    parked.status_ = UniqueFd(ends[0]);
    status_write = UniqueFd(ends[1]);
    inherit_fds.emplace_back(status_fd, status_write.get());
  }
  auto process = BackgroundProcess::Start(argv, output_path, inherit_fds);
  status_write.Reset();  // criu holds the only write end: its exit reads as end of file
  if (!process) return Unexpected<Error>{process.error()};
  parked.process_ = std::move(*process);
  // The write end opens without blocking only once criu has opened the read end, i.e. waits
  // there. A short poll: this runs before the freeze (and the kernel reports no such open).
  const auto deadline = std::chrono::steady_clock::now() + patience;
  while (true) {
    UniqueFd writer(::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC));
    if (writer.valid()) {
      parked.inventory_ = std::move(writer);
      parked.inventory_path_ = fifo;
      return parked;
    }
    if (errno != ENXIO) return Fail("cannot open " + fifo + ": " + std::strerror(errno));
    if (!parked.process_.Running()) {
      return Fail("criu ended before reading its images (see " + output_path + ")");
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return Fail("criu did not start within " + std::to_string(patience.count()) + " ms");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

Expected<void> ParkedCriu::Release(const std::string& inventory) {
  if (!inventory_.valid()) return Fail("criu is not waiting for its images");
  // Blocking writes from here on: criu reads as we write, whatever the inventory's size.
  const int flags = ::fcntl(inventory_.get(), F_GETFL);
  ::fcntl(inventory_.get(), F_SETFL, flags & ~O_NONBLOCK);
  size_t written = 0;
  while (written < inventory.size()) {
    const ssize_t n =
        ::write(inventory_.get(), inventory.data() + written, inventory.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      inventory_.Reset();
      return Fail(std::string("cannot hand criu its inventory: ") + std::strerror(errno));
    }
    written += static_cast<size_t>(n);
  }
  // The real file takes the FIFO's name before criu sees the end of its copy: a criu that
  // opens inventory.img again later (the other parked one, or this one) reads the file instead
  // of racing for, or waiting forever on, a FIFO.
  const std::string staged = inventory_path_ + ".real";
  if (auto put = WriteWholeFile(staged, inventory); !put) {
    inventory_.Reset();
    return put;
  }
  if (::rename(staged.c_str(), inventory_path_.c_str()) != 0) {
    inventory_.Reset();
    return Fail("cannot put " + inventory_path_ + " in place: " + std::strerror(errno));
  }
  inventory_.Reset();  // criu reads the end of the file next
  return {};
}

Expected<void> ParkedCriu::AwaitStatus(std::chrono::milliseconds timeout) {
  if (!status_.valid()) return Fail("criu has no status pipe");
  pollfd ready{status_.get(), POLLIN, 0};
  char byte = 0;
  int polled = 0;
  while ((polled = ::poll(&ready, 1, static_cast<int>(timeout.count()))) < 0 && errno == EINTR) {
  }
  const bool done = polled == 1 && ::read(status_.get(), &byte, 1) == 1;
  status_.Reset();
  if (!done) return Fail(polled == 0 ? "criu did not get ready in time" : "criu ended early");
  return {};
}

Expected<ParkedCriu> ParkRestore(const std::string& criu, const RestoreOptions& options) {
  const CriuCommand command = RestoreCommand(criu, options);
  return ParkedCriu::Start(command.argv, options.images, options.images + "/restore.out",
                           command.inherit_fds);
}

Expected<pid_t> FinishRestore(ParkedCriu& parked, const std::string& inventory,
                              const RestoreOptions& options) {
  if (auto released = parked.Release(inventory); !released) {
    parked.process().Finish(std::chrono::milliseconds(0));
    return Unexpected<Error>{released.error()};
  }
  const auto ended = parked.process().Wait(options.timeout);
  if (!ended) {
    parked.process().Finish(std::chrono::milliseconds(0));
    return Fail("criu restore timed out");
  }
  if (*ended != 0) {
    return Fail("criu restore failed: " +
                CriuLogErrors(options.images + "/restore.log",
                              "exit code " + std::to_string(*ended) + " (see " + options.images +
                                  "/restore.out)"));
  }
  return RestoredPid(options);
}

// A machine's CPU description and what it can run do not change while it runs, and each
// `criu cpuinfo` is a criu start (10-20 ms, more on a busy node) before every move: the source's
// description and the destination's good verdicts are kept, per criu binary, for the agent's
// life. A failing check is asked again every time, as CheckCriu does.
namespace {
std::mutex cpuinfo_mutex;
std::map<std::string, std::string> dumped_cpuinfo;                 // criu -> description
std::set<std::pair<std::string, std::string>> compatible_cpuinfo;  // {criu, description}
}  // namespace

Expected<std::string> DumpCpuinfo(const std::string& criu, const std::string& scratch_dir) {
  {
    std::lock_guard lock(cpuinfo_mutex);
    if (auto found = dumped_cpuinfo.find(criu); found != dumped_cpuinfo.end()) {
      return found->second;
    }
  }
  auto dumped = DumpCpuinfoUncached(criu, scratch_dir);
  if (dumped && !dumped->empty()) {
    std::lock_guard lock(cpuinfo_mutex);
    dumped_cpuinfo[criu] = *dumped;
  }
  return dumped;
}

Expected<void> CheckCpuinfo(const std::string& criu, const std::string& scratch_dir,
                            const std::string& cpuinfo) {
  {
    std::lock_guard lock(cpuinfo_mutex);
    if (compatible_cpuinfo.count({criu, cpuinfo}) > 0) return {};
  }
  auto checked = CheckCpuinfoUncached(criu, scratch_dir, cpuinfo);
  if (checked) {
    std::lock_guard lock(cpuinfo_mutex);
    compatible_cpuinfo.insert({criu, cpuinfo});
  }
  return checked;
}

Expected<std::string> DumpCpuinfoUncached(const std::string& criu, const std::string& scratch_dir) {
  std::error_code error;
  std::filesystem::create_directories(scratch_dir, error);
  SubprocessOptions quick;
  quick.timeout = std::chrono::seconds(20);
  auto result = RunSubprocess({criu, "cpuinfo", "dump", "-D", scratch_dir}, quick);
  if (!result || result->exit_code != 0) {
    return Fail("criu cpuinfo dump failed" + (result ? ": " + result->output : ""));
  }
  std::ifstream file(scratch_dir + "/cpuinfo.img", std::ios::binary);
  std::stringstream bytes;
  bytes << file.rdbuf();
  return bytes.str();
}

Expected<void> CheckCpuinfoUncached(const std::string& criu, const std::string& scratch_dir,
                                    const std::string& cpuinfo) {
  std::error_code error;
  std::filesystem::create_directories(scratch_dir, error);
  {
    std::ofstream file(scratch_dir + "/cpuinfo.img", std::ios::binary | std::ios::trunc);
    file << cpuinfo;
  }
  SubprocessOptions quick;
  quick.timeout = std::chrono::seconds(20);
  auto result = RunSubprocess({criu, "cpuinfo", "check", "-D", scratch_dir}, quick);
  if (!result) return Unexpected<Error>{result.error()};
  if (result->exit_code != 0) {
    std::string reason = result->output;
    while (!reason.empty() && reason.back() == '\n') reason.pop_back();
    const auto last = reason.rfind('\n');
    return Fail("this CPU cannot run what the source's CPU ran: " +
                (last == std::string::npos ? reason : reason.substr(last + 1)));
  }
  return {};
}

std::string CriuLogErrors(const std::string& log_path, const std::string& fallback) {
  std::ifstream log(log_path);
  std::string line;
  std::vector<std::string> errors;
  while (std::getline(log, line)) {
    // RLIMIT_NOFILE: harmless without CAP_SYS_RESOURCE (docs/platform.md), printed on every run.
    if (line.find("RLIMIT_NOFILE") != std::string::npos) continue;
    if (line.find("Error") != std::string::npos || line.find("error") != std::string::npos) {
      errors.push_back(line);
    }
  }
  if (errors.empty()) return fallback;
  std::string text;
  const size_t first = errors.size() > 3 ? errors.size() - 3 : 0;
  for (size_t i = first; i < errors.size(); ++i) text += (text.empty() ? "" : " | ") + errors[i];
  return text;
}

std::vector<std::string> LazyDumpCommand(const std::string& criu, pid_t pid,
                                         const std::string& images, int ps_socket,
                                         const std::vector<std::string>& external,
                                         ino_t job_netns) {
  std::vector<std::string> argv = {criu,
                                   "dump",
                                   "-t",
                                   std::to_string(pid),
                                   "-D",
                                   images,
                                   "-o",
                                   images + "/dump.log",
                                   "-v4",
                                   "--leave-stopped",
                                   "--lazy-pages",
                                   "--ps-socket",
                                   std::to_string(ps_socket),
                                   "--status-fd",
                                   "9"};
  for (auto& flag : NetDumpArguments(job_netns)) argv.push_back(std::move(flag));
  for (const auto& resource : external) argv.insert(argv.end(), {"--external", resource});
  return argv;
}

std::vector<std::string> LazyPagesCommand(const std::string& criu, const std::string& images,
                                          int ps_socket, int status_fd) {
  std::vector<std::string> argv = {criu,
                                   "lazy-pages",
                                   "--page-server",
                                   "--ps-socket",
                                   std::to_string(ps_socket),
                                   "-D",
                                   images,
                                   "-o",
                                   images + "/lazy-pages.log",
                                   "-v4"};
  if (status_fd >= 0) argv.insert(argv.end(), {"--status-fd", std::to_string(status_fd)});
  return argv;
}

Expected<void> EnsurePipeMaxSize() {
  constexpr long kNeeded = 4194304;
  long current = 0;
  std::ifstream("/proc/sys/fs/pipe-max-size") >> current;
  if (current >= kNeeded) return {};
  std::ofstream file("/proc/sys/fs/pipe-max-size");
  file << kNeeded;
  file.close();
  if (!file) {
    return Fail("post-copy needs fs.pipe-max-size >= 4194304 (now " + std::to_string(current) +
                "): run `sysctl -w fs.pipe-max-size=4194304`");
  }
  return {};
}

std::vector<std::string> PageServerCommand(const std::string& criu, const std::string& images,
                                           const PageServerTarget& listen, const CriuTls& tls) {
  std::vector<std::string> argv = {criu,        "page-server",
                                   "-D",        images,
                                   "--address", listen.address,
                                   "--port",    std::to_string(listen.port),
                                   "-o",        images + "/page-server.log",
                                   "-v4"};
  for (const auto& flag : CriuTlsArguments(tls)) argv.push_back(flag);
  return argv;
}

}  // namespace tern::migrate
