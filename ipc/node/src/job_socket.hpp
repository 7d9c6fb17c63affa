// JobSocket: the agent's job socket (docs/ipc.md "A channel the job reconnects"), private to
// IpcService. A Unix stream socket at a path in the agent's run directory that any local user
// may connect to; a job whose channel read end of file (its agent was killed and restarted)
// connects, sends one IpcAttach frame (job_attach.hpp) and gets one IpcAttached answer, with
// its new channel's fd on the answer's first byte when the agent accepts.
//
// Hostile input is bounded: at most kMaxAttaching connections are served at once (more are
// closed at once), each must send its whole frame within kAttachWait, a frame header over
// ipc::kMaxAttachFrame closes the connection before anything more is read, and a connection is
// closed after its one answer. The peer's pid comes from SO_PEERCRED (the kernel's, taken at
// connect), never from the frame.
//
// `decide` (IpcService's) is given the decoded request and the peer's pid (in this agent's pid
// namespace) and returns either the job's end of a new channel or the refusal to send.
//
// Contract: Listen once; Stop before what `decide` reaches goes away (no handler calls it
// after Stop; the listener and open connections close, and the socket file is removed).
//
// Thread-safety: none; everything runs on the agent's io_context thread.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <tern/expected.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/job_attach.hpp>
#include <tern/unique_fd.hpp>
#include <variant>

namespace tern::ipc {

class JobSocket : public std::enable_shared_from_this<JobSocket> {
 public:
  // The job's end of its new channel, and whether the agent restored what a hand-off left it
  // (AttachAnswer::restored) or the rights its own files kept (AttachAnswer::kept).
  struct Accepted {
    UniqueFd channel;
    bool restored = false;
    bool kept = false;
  };
  using Decide = std::function<std::variant<Accepted, std::string>(const AttachRequest& request,
                                                                   int peer_pid)>;
  static constexpr std::size_t kMaxAttaching = 64;
  static constexpr auto kAttachWait = std::chrono::seconds(2);

  JobSocket(boost::asio::io_context& io, Decide decide);

  // Binds `path` (a stale socket file there is replaced), mode 0666: a job of any user
  // connects, and proves who it is by its pid and secret.
  Expected<void> Listen(const std::string& path);
  const std::string& path() const { return path_; }
  void Stop();

 private:
  struct Attaching;
  void Accept();
  void ReadMore(const std::shared_ptr<Attaching>& attaching);
  void Answer(const std::shared_ptr<Attaching>& attaching, const AttachRequest& request);
  void Done(const std::shared_ptr<Attaching>& attaching);

  boost::asio::io_context& io_;
  Decide decide_;
  boost::asio::local::stream_protocol::acceptor acceptor_;
  std::string path_;
  std::size_t attaching_ = 0;
  bool stopped_ = false;
};

}  // namespace tern::ipc
