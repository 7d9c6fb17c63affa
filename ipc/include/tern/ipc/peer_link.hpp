// PeerLink: one authenticated TCP connection to another agent.
//
// It sets TCP_NODELAY, runs the PeerHandshake (5 s deadline), and then delivers frames in
// order. Send() may be called from any thread: frames are queued, and everything queued while
// a write is in flight goes out in the next single write (batching). The queue is bounded
// (64 MiB): overflowing it closes the link with that reason — nothing is dropped silently.
// A malformed frame, a failed handshake, or a socket error closes the link; the owner hears
// of it once, through on_closed, with the reason.
//
// Thread-safety: Send() and Close() from any thread; all callbacks and everything else run on
// the io_context's thread (the agent runs its io_context on one thread).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <memory>
#include <string>

#include "tern/ipc/frame.hpp"
#include "tern/ipc/peer_handshake.hpp"

namespace tern::ipc {

class PeerLink : public std::enable_shared_from_this<PeerLink> {
 public:
  struct Callbacks {
    std::function<void(const std::shared_ptr<PeerLink>&)> on_established;
    std::function<void(const std::shared_ptr<PeerLink>&, Frame)> on_frame;
    // `refused`: the handshake failed (bad secret, protocol violation), as opposed to a
    // connection that broke.
    std::function<void(const std::shared_ptr<PeerLink>&, const std::string& reason, bool refused)>
        on_closed;
  };

  static constexpr std::size_t kMaxQueuedBytes = 64 * 1024 * 1024;

  PeerLink(boost::asio::ip::tcp::socket socket, PeerIdentity self, std::string secret,
           bool initiated_by_us, Callbacks callbacks);

  void Start();
  void Send(FrameType type, std::string payload);
  void Close(const std::string& reason);

  bool established() const { return established_; }
  bool initiated_by_us() const { return initiated_by_us_; }
  const PeerIdentity& peer() const { return handshake_.peer(); }
  const std::string& remote() const { return remote_; }
  // Set by the transport for links it dialled: the address it dialled.
  std::string dialled_address;

 private:
  void ReadMore();
  void OnBytes(std::size_t size);
  void Enqueue(const Frame& frame);
  void WriteMore();
  void CloseNow(const std::string& reason, bool refused);

  boost::asio::ip::tcp::socket socket_;
  boost::asio::steady_timer handshake_timer_;
  PeerHandshake handshake_;
  bool initiated_by_us_;
  Callbacks callbacks_;
  std::string remote_;
  FrameDecoder decoder_;
  std::array<char, 64 * 1024> read_buffer_{};
  std::string queued_;
  std::string writing_;
  bool established_ = false;
  bool closed_ = false;
};

}  // namespace tern::ipc
