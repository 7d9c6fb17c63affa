// PeerLink: one authenticated connection to another agent: mutual TLS 1.3 over TCP, the Asio
// driver of one PeerHandshake and one FrameDecoder.
//
// Lifecycle: construct with a connected socket and the TLS context of its role (the dialler is
// the TLS client), Start(). The link sets TCP_NODELAY and, under one deadline (5 s by
// default), runs the TLS handshake (both ends present certificates of the cluster CA; any other
// is refused by OpenSSL's verification) and then PeerHandshake, bound to the TLS session (the
// verified certificate's node name and a TLS exporter value, PeerChannelBinding). Once
// established it reports on_established(peer) and then delivers every frame, in order, to
// on_frame. Frames handed to Send() before that are held and go out right after the handshake.
// Every byte after the TCP connect travels inside TLS.
//
// Before authentication the link reads at most 4 KiB at a time and refuses a frame over
// kMaxHandshakePayload by its header, so an unauthenticated peer costs a few KiB.
//
// Writes are batched: the frames of one Send() call (an IPC router's frames for one event, say:
// a deferred result and the reply behind it) leave in one write, and frames queued while a
// write is in flight are coalesced into the next single async_write. The outgoing queue is
// bounded (64 MiB by default): overflowing it closes the link with that reason, logged — a frame is
// never dropped silently.
//
// Closing: a socket error, EOF, a malformed frame (length over the limit), a failed handshake
// or Close() closes the link. on_closed(reason, kind) is then called exactly once, and no
// callback after it. A refusal we decide is sent to the peer (AuthRefused) before the socket
// closes, best effort within a short linger. Close() is idempotent.
//
// Thread-safety: Send() and Close() may be called from any thread: they post to the link's
// executor. Everything else (Start, the accessors) and every callback runs on that executor,
// which must be a strand or an io_context run by one thread. PeerTransport gives all its links
// one strand shared with its own state. A PeerLink is always owned by a std::shared_ptr; its
// pending operations keep it alive until they complete.
#pragma once

#include <array>
#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/peer_handshake.hpp>
#include <vector>

namespace tern::ipc {

class PeerLink : public std::enable_shared_from_this<PeerLink> {
 public:
  enum class State { kHandshaking, kEstablished, kClosed };
  // Why a link closed, as far as the owner cares.
  enum class CloseKind {
    kClosed,         // an established link ended, or the connection broke during the handshake
    kRefusedByUs,    // we refused the peer (its certificate, name, secret, malformed, timeout)
    kRefusedByPeer,  // the peer sent AuthRefused or a TLS alert
  };

  struct Options {
    PeerIdentity self;
    std::string secret;
    // The TLS context of this link's role: a client context when initiated_by_us, else a
    // server one (MakeTlsContext). Required.
    std::shared_ptr<boost::asio::ssl::context> tls;
    bool initiated_by_us = false;
    std::chrono::milliseconds handshake_timeout{5000};
    std::size_t max_queued_bytes = 64 * 1024 * 1024;
    std::size_t max_payload = kDefaultMaxPayload;
  };

  struct Callbacks {
    std::function<void(PeerLink&, const PeerIdentity&)> on_established;
    std::function<void(PeerLink&, Frame)> on_frame;
    std::function<void(PeerLink&, const std::string& reason, CloseKind kind)> on_closed;
  };

  PeerLink(boost::asio::ip::tcp::socket socket, Options options, Callbacks callbacks);
  PeerLink(const PeerLink&) = delete;
  PeerLink& operator=(const PeerLink&) = delete;

  // Starts the handshake and the read loop. Call once, on the link's executor.
  void Start();
  // Queues one frame (any thread). Closes the link if the queue would exceed its bound or the
  // payload exceeds max_payload.
  void Send(FrameType type, std::string payload);
  // Several frames, in order, in one write.
  void Send(std::vector<Frame> frames);
  // Bytes given to Send() and not yet written to the socket: what a sender holds back on
  // (IpcService stops reading its jobs above a high-water mark) before the queue fills and
  // closes the link. Any thread.
  std::size_t backlog() const { return posted_.load() + unsent_.load(); }
  // Closes the link (any thread); on_closed reports `reason` unless it was already closed.
  void Close(std::string reason);

  // On the link's executor only:
  State state() const { return state_; }
  bool established() const { return state_ == State::kEstablished; }
  bool initiated_by_us() const { return options_.initiated_by_us; }
  // The peer's identity as its Hello told it (complete once established).
  const PeerIdentity& peer() const { return handshake_.peer(); }
  // Nonces of this session: together with who dialled, they name the link on both sides.
  const std::string& nonce() const { return handshake_.nonce(); }
  const std::string& peer_nonce() const { return handshake_.peer_nonce(); }
  // "ip:port" of the other end, fixed at construction.
  const std::string& remote() const { return remote_; }
  const boost::asio::ip::tcp::socket::executor_type& executor() { return executor_; }

 private:
  using Stream = boost::asio::ssl::stream<boost::asio::ip::tcp::socket>;

  void OnTlsHandshake(const boost::system::error_code& error);
  void DoRead();
  // Splits handshake-phase bytes into frames (at most kMaxHandshakePayload each) and hands
  // what follows the handshake to the decoder.
  void OnHandshakeBytes(std::size_t size);
  void DeliverDecoded(const Expected<void>& fed);
  void OnRead(const boost::system::error_code& error, std::size_t size);
  void OnHandshakeFrame(const Frame& frame);
  // Queues one frame; writes at once unless `write_now` is false (more frames follow).
  void Enqueue(FrameType type, std::string payload, bool write_now = true);
  // Send()'s work on the executor, one frame: false when the link closed because of it.
  bool Accept(FrameType type, std::string& payload);
  void DoWrite();
  void OnWrite(const boost::system::error_code& error);
  void CloseNow(const std::string& reason, CloseKind kind, bool flush);
  void FinishClose();

  boost::asio::ip::tcp::socket::executor_type executor_;
  std::shared_ptr<boost::asio::ssl::context> tls_;  // outlives stream_, which refers to it
  Stream stream_;
  boost::asio::steady_timer timer_;  // handshake deadline, then the close linger
  Options options_;
  Callbacks callbacks_;
  PeerHandshake handshake_;
  FrameDecoder decoder_;
  std::string remote_;
  State state_ = State::kHandshaking;
  bool tls_ready_ = false;  // the TLS handshake is done: frames may be written
  // Handshake phase: where reads land, and the bytes not yet forming a frame.
  std::unique_ptr<char[]> handshake_space_;
  std::string handshake_in_;
  std::string held_;  // application frames sent before the handshake ended
  // Encoded frames waiting for the next write, and those of the write in flight: small frames
  // share a buffer; a large payload keeps its own (it is never copied into the queue).
  std::vector<std::string> queued_;
  std::vector<std::string> writing_;
  std::size_t queued_bytes_ = 0;
  std::size_t writing_bytes_ = 0;
  bool write_in_flight_ = false;
  std::atomic<std::size_t> posted_{0};  // in Send() lambdas not yet run
  std::atomic<std::size_t> unsent_{0};  // queued_bytes_ + writing_bytes_, published
  void PublishUnsent() { unsent_.store(queued_bytes_ + writing_bytes_); }
  bool lingering_ = false;  // closed; flushing the last frames before closing the socket
};

std::string_view CloseKindName(PeerLink::CloseKind kind);

// The channel binding of a TLS session (32 bytes of RFC 8446 exporter output, label
// "EXPORTER-tern-peer-auth"): equal on both ends of one session, unrelated on any other.
// Empty when the session cannot export (not established).
std::string PeerChannelBinding(SSL* ssl);

}  // namespace tern::ipc
