// PageRelayProcess: the agent's handle on one `ternd page-relay` (page_relay_main.hpp), the
// process that carries a post-copy move's lazy-page stream between the nodes inside mutual TLS.
//
// Contract:
//  - Serve (source) binds a listener on host:port in the agent, so that a port already taken
//    fails here, and starts the relay with it and CRIU's other loopback end; Dial (destination)
//    starts a relay that connects to the source's. Both are given the node's [tls] files and
//    the one node that may be at the other end. The agent keeps no copy of the fds it passes.
//  - AwaitConnected (Dial only) blocks until the relay says its peer is in, it gave up, `stop`
//    turns true or `patience` passes; woken by the relay's status pipe, not a timer.
//  - Stop() kills the relay now (the move was aborted: its CRIU ends read end of file).
//  - LetRun() hands the relay over to a detached waiter: it runs until its stream ends (or its
//    idle timeout) and is reaped then. The agent dying does not end it either (it is a process
//    of its own, in its own session); a restarted agent does not know it and does not kill it.
//  - Destroying a handle that was neither let run nor stopped stops the relay.
//
// Thread-safety: Serve/Dial/Stop/LetRun on one thread; AwaitConnected may run on another thread
// meanwhile (it only reads the status pipe).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <tern/expected.hpp>
#include <tern/ipc/tls_files.hpp>
#include <tern/subprocess.hpp>
#include <tern/unique_fd.hpp>

namespace tern::agent {

class PageRelayProcess {
 public:
  struct Options {
    std::string migration;  // for the relay's log
    std::string peer_node;  // the only node let in
    ipc::TlsFiles tls;      // this node's certificate, key and the cluster CA
    std::string log_path;   // the relay's stdout and stderr
    // The ternd binary to run `page-relay` from: this very one (as it is running, even if its
    // file was replaced since) unless a test names another.
    std::string program = "/proc/self/exe";
    std::chrono::milliseconds accept_patience{std::chrono::minutes(2)};
    std::chrono::seconds idle_timeout{std::chrono::minutes(10)};
  };

  static Expected<std::unique_ptr<PageRelayProcess>> Serve(const Options& options,
                                                           UniqueFd criu_side,
                                                           const std::string& host,
                                                           std::uint16_t port);
  static Expected<std::unique_ptr<PageRelayProcess>> Dial(const Options& options,
                                                          UniqueFd criu_side,
                                                          const std::string& host,
                                                          std::uint16_t port);

  struct Key {
   private:
    friend class PageRelayProcess;
    Key() = default;
  };
  explicit PageRelayProcess(Key) {}
  PageRelayProcess(const PageRelayProcess&) = delete;
  PageRelayProcess& operator=(const PageRelayProcess&) = delete;
  ~PageRelayProcess();

  std::uint16_t port() const { return port_; }
  pid_t pid() const { return process_ ? process_->pid() : -1; }
  Expected<void> AwaitConnected(std::chrono::milliseconds patience, const std::atomic<bool>& stop);
  void Stop();
  void LetRun();

 private:
  std::shared_ptr<BackgroundProcess> process_;
  UniqueFd status_;  // Dial: the read end of the relay's status pipe
  std::uint16_t port_ = 0;
  std::string peer_node_;
  std::string log_path_;
};

}  // namespace tern::agent
