// MigrationDriver: construction, CRIU's TLS, move directories, free ports, and the helpers
// both sides use. migration_driver_parts.hpp lists the files of the driver.
#include "migration_driver_parts.hpp"

namespace tern::agent {
using namespace driver;  // the driver's own helpers (migration_driver_parts.hpp)

namespace driver {

// A `ternd page-relay` for move `mid` that lets in node `peer` only, logging into `dir`.
PageRelayProcess::Options RelayOptions(const AgentConfig& config, const std::string& dir,
                                       const std::string& mid, const std::string& peer) {
  PageRelayProcess::Options options;
  options.migration = mid;
  options.peer_node = peer;
  options.tls = {config.tls_ca, config.tls_cert, config.tls_key};
  std::error_code ignored;
  std::filesystem::create_directories(dir, ignored);
  options.log_path = dir + "/page-relay.log";
  return options;
}

// The job's channel socket as dumped, kept next to the images for the destination's restore.
void WriteChannelNote(const std::string& images, const std::string& channel) {
  std::error_code ignored;
  fs::create_directories(images, ignored);
  std::ofstream(images + "/tern-channel") << channel;
}

std::string ReadChannelNote(const std::string& images) {
  std::string channel;
  std::ifstream(images + "/tern-channel") >> channel;
  return channel;
}

void WriteClosedSocketsNote(const std::string& images, const std::vector<std::string>& sockets) {
  std::error_code ignored;
  fs::create_directories(images, ignored);
  std::ofstream note(images + "/tern-closed-sockets");
  for (const auto& socket : sockets) note << socket << "\n";
}

std::vector<std::string> ReadClosedSocketsNote(const std::string& images) {
  std::vector<std::string> sockets;
  std::ifstream note(images + "/tern-closed-sockets");
  for (std::string socket; note >> socket;) {
    if (socket.starts_with("socket:[")) sockets.push_back(socket);
  }
  return sockets;
}

// Dump failures that a second try a moment later usually does not meet.
bool IsTransientDumpError(const std::string& message) {
  return message.find("file locks") != std::string::npos ||
         message.find("No such process") != std::string::npos;
}

// CRIU failures of one attempt that say nothing about the job (the next attempt usually works).
bool IsTransientCriuError(const std::string& message) {
  return IsTransientDumpError(message) || message.find("page server") != std::string::npos ||
         message.find("page-xfer") != std::string::npos;
}

double MillisSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

template <typename T, typename Variant>
struct IsAlternativeOf;
template <typename T, typename... Ts>
struct IsAlternativeOf<T, std::variant<Ts...>>
    : std::bool_constant<(std::is_same_v<T, Ts> || ...)> {};

// A message as the request or the reply it is.
std::optional<migrate::Request> AsRequest(const migrate::Message& message) {
  return std::visit(
      [](const auto& value) -> std::optional<migrate::Request> {
        if constexpr (IsAlternativeOf<std::decay_t<decltype(value)>, migrate::Request>::value) {
          return migrate::Request{value};
        } else {
          return std::nullopt;
        }
      },
      message);
}

std::optional<migrate::Reply> AsReply(const migrate::Message& message) {
  return std::visit(
      [](const auto& value) -> std::optional<migrate::Reply> {
        if constexpr (IsAlternativeOf<std::decay_t<decltype(value)>, migrate::Reply>::value) {
          return migrate::Reply{value};
        } else {
          return std::nullopt;
        }
      },
      message);
}

// The source machine's patience, as the driver had it before the machine: a prepare answered
// within 30 s, a restore (images sent, CRIU run) within 120 s, a dump caught holding a file
// lock tried kLockRetries times 30 ms apart, the commit sent 10 times a second apart (each
// call waits up to 10 s for its answer).
migrate::SourceOptions SourceTimings() {
  migrate::SourceOptions options;
  options.prepare_timeout = std::chrono::seconds(30);
  options.restore_timeout = std::chrono::seconds(120);
  options.dump_attempts = kLockRetries;
  options.dump_retry = std::chrono::milliseconds(30);
  options.hand_off_patience = kIpcHandOffPatience;
  options.hand_off_poll = std::chrono::milliseconds(2);
  options.commit_answer_timeout = std::chrono::seconds(11);
  options.commit_retry = std::chrono::seconds(1);
  options.commit_attempts = 10;
  return options;
}

std::string HostOf(const std::string& host_port) {
  return host_port.substr(0, host_port.rfind(':'));
}

std::uint64_t PagesBytes(const std::string& dir) {
  std::uint64_t total = 0;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    if (entry.path().filename().string().rfind("pages-", 0) == 0) total += entry.file_size(error);
  }
  return total;
}

// True once something listens on TCP `port` in this network namespace.
bool Listening(std::uint16_t port) {
  std::ifstream tcp("/proc/net/tcp");
  std::string line;
  char wanted[8];
  std::snprintf(wanted, sizeof wanted, ":%04X", port);
  while (std::getline(tcp, line)) {
    std::istringstream fields(line);
    std::string slot, local, remote, state;
    fields >> slot >> local >> remote >> state;
    if (state == "0A" && local.size() >= 5 && local.substr(local.size() - 5) == wanted) return true;
  }
  return false;
}

// Waits until a page server started a moment ago listens on `port` (criu takes 20-30 ms to
// start here), or ends.
bool AwaitListening(BackgroundProcess& server, std::uint16_t port) {
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (!Listening(port) && Clock::now() < deadline && server.Running()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return Listening(port);
}

std::string Join(const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& line : lines) text += (text.empty() ? "" : "; ") + line;
  return text;
}

std::uint64_t MemAvailable() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

// A big job's pages go to a tmpfs of their own when this node has room for two copies of the
// job (the image and the restored job, should the restore not free the image as it goes), else
// to the state directory's disk, whose page cache the kernel can write back under pressure.
// The tmpfs leaves room for the job to grow by half before it is dumped; a bigger job fails to
// move (its dump fails, and it resumes on its source). image_dir.hpp says why a tmpfs.
bool MountPreCopyImages(const std::string& images, std::uint64_t rss, std::uint64_t available) {
  const std::uint64_t bytes = rss + rss / 2 + (64ull << 20);
  if (rss < kBigJob || available < 2 * bytes + (256ull << 20)) return false;
  auto mounted = migrate::MountImageTmpfs(images, bytes);
  if (!mounted) spdlog::warn("pre-copy images go to the disk: {}", mounted.error().message);
  return mounted.has_value();
}

}  // namespace driver

MigrationDriver::MigrationDriver(boost::asio::io_context& io, const AgentConfig& config,
                                 jobs::JobSupervisor& supervisor, Cluster& cluster)
    : io_(io),
      config_(config),
      supervisor_(supervisor),
      cluster_(cluster),
      store_(config.state_dir + "/migrations") {
  RecoverOutgoing();
  RecoverIncoming();
}

MigrationDriver::~MigrationDriver() {
  {
    std::lock_guard lock(alive_->mutex);
    alive_->driver = false;
  }
  for (auto& [mid, migration] : outgoing_) migration->timer->cancel();
  for (auto& [mid, incoming] : incoming_) incoming->timer->cancel();
  workers_.join();
}

migrate::CriuTls MigrationDriver::PageServerTls() const {
  return {config_.tls_ca, config_.tls_cert, config_.tls_key};
}

std::string MigrationDriver::PageServerTlsProblem() const {
  // CRIU reads these as root when a page connection opens; found out now, before anything is
  // frozen, rather than as a gnutls error in the middle of the move.
  for (const std::string* file : {&config_.tls_ca, &config_.tls_cert}) {
    if (::access(file->c_str(), R_OK) != 0) {
      return "CRIU's page server needs " + *file + " ([tls]): " + std::strerror(errno);
    }
  }
  if (auto key = ipc::CheckKeyFile(config_.tls_key); !key) {
    return "CRIU's page server needs the node key ([tls] key): " + key.error().message;
  }
  return "";
}

std::string MigrationDriver::MigrationDir(const std::string& mid) const {
  return config_.state_dir + "/migrations/" + mid;
}

migrate::Millis MigrationDriver::Now() {
  return std::chrono::duration_cast<migrate::Millis>(Clock::now().time_since_epoch());
}

std::uint16_t MigrationDriver::FreePort(std::uint16_t base) {
  if (next_port_ == 0) next_port_ = std::random_device{}() | 1;
  // A port something already listens on (a page server left by a killed agent, say) would take
  // our pages: skip it.
  for (int tries = 0; tries < 100; ++tries) {
    const auto port = static_cast<std::uint16_t>(base + (next_port_++ % 100));
    if (!Listening(port)) return port;
  }
  return static_cast<std::uint16_t>(base + (next_port_++ % 100));
}

}  // namespace tern::agent
