// One end of a direct connection between two jobs (docs/ipc.md "Direct calls"): a connected
// stream socket that carries whole frames. Write sends a writer's frames with one gathered
// sendmsg (MSG_NOSIGNAL: a peer that went away is a broken connection, not a SIGPIPE); Read
// waits in poll() for a frame until a deadline; ReadAvailable takes what is there without
// waiting (the server, woken by epoll). A frame the decoder rejects, end of file or a socket
// error break the connection: every later call fails, and the owner closes it.
//
// Thread-safety: none; one thread at a time per connection (the client thread that owns it,
// or the server worker that holds its one-shot epoll event).
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <optional>
#include <string>
#include <tern/expected.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/job_wire.hpp>
#include <tern/unique_fd.hpp>

namespace tern::libtern {

class DirectConnection {
 public:
  // Takes `fd`; turns on TCP keepalive (5 s idle, 1 s interval, 3 probes) where it applies.
  explicit DirectConnection(UniqueFd fd);

  int fd() const { return fd_.get(); }
  bool broken() const { return !broken_reason_.empty(); }
  const std::string& broken_reason() const { return broken_reason_; }

  // Writes all that `frames` holds (its out() and the data it shared), in order.
  Expected<void> Write(ipc::WireWriter& frames);
  // The next frame; nullopt once `deadline` passes without one (time_point::max(): no limit).
  Expected<std::optional<ipc::Frame>> Read(std::chrono::steady_clock::time_point deadline);
  // Receives what has arrived, without waiting; the frames are then in Next(). Fails on end of
  // file, an error or a malformed stream. Only for an owner woken by a level-triggered or
  // re-armed epoll: it stops after a read that did not fill its buffer, without seeing EAGAIN.
  Expected<void> ReadAvailable();
  std::optional<ipc::Frame> Next() { return decoder_.Next(); }
  // The descriptor the peer last passed with its bytes (SCM_RIGHTS on a Unix socket: a stream
  // reader's rings, stream_rings.hpp), if any; taken by the caller. ReadAvailable and Read
  // collect it (the blocking first receive of Read does not: no stream waits that way).
  UniqueFd TakePassedFd() { return std::move(passed_); }

 private:
  // One non-blocking receive into the decoder: true if bytes came, false if none were there.
  // `drained` (if given) says whether the bytes that came were fewer than there was room for.
  Expected<bool> ReceiveOnce(bool* drained = nullptr);
  // One receive that blocks up to the socket's SO_RCVTIMEO: true if bytes came, false if the
  // time passed (or a signal came) first.
  Expected<bool> ReceiveBlocking();
  Unexpected<Error> Break(std::string reason);
  void TakeControl(msghdr& message);

  UniqueFd fd_;
  ipc::FrameDecoder decoder_;
  std::string broken_reason_;
  UniqueFd passed_;
};

}  // namespace tern::libtern
