// PeerHandshake: the second step of authenticating another agent, inside a mutual TLS 1.3
// session (PeerLink), as a sans-I/O state machine. TLS proved that the peer holds a certificate
// of the cluster CA; this step checks that the node its Hello claims is the one its certificate
// names, and that it knows the cluster secret for this very TLS session. Events are the peer's
// frames (OnFrame); actions are frames to send and, at the end, one outcome: established (with the
// peer's identity) or refused (with a reason).
//
//   Start(): send Hello
//   kAwaitHello ──Hello ok: send AuthProof──► kAwaitProof
//   kAwaitProof ──AuthProof verifies: send AuthAccepted──► kAwaitAccepted
//   kAwaitAccepted ──AuthAccepted──► kEstablished            (outcome kEstablished)
//   any wait state ──bad proof / malformed / unexpected frame: send AuthRefused──► kRefused
//   any wait state ──AuthRefused from the peer──► kRefused   (refused_by_peer = true)
//
// Hello is {"node","node_id" (16 hex digits),"address","api_address","nonce" (32 random bytes
// as 64 hex digits)}. AuthProof is {"proof": hex HMAC-SHA256(secret, "tern-auth-v2|" + sender_id
// + "|" + receiver_id + "|" + sender_nonce + "|" + receiver_nonce + "|" + hex(binding))}, ids as
// 16 lowercase hex digits, `binding` the channel binding given to BindToChannel (a TLS exporter
// value: the same on both ends of one TLS session, different on any other). The peer's proof is
// compared in constant time (CRYPTO_memcmp). The secret never crosses the wire; a replayed
// proof fails because our nonce is fresh, and a proof relayed from another session fails
// because its binding differs. A peer that claims our own node id, a node other than the one
// its certificate names, or sends a malformed or oversized payload, is refused.
//
// Unbound (no BindToChannel: only this class's own tests do that) the proofs cover no channel
// and no certificate name is checked.
//
// Thread-safety: not thread-safe; one PeerLink drives one instance.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tern/ipc/frame.hpp>
#include <vector>

namespace tern::ipc {

// Handshake frames are small JSON objects; anything larger is refused unparsed.
inline constexpr std::size_t kMaxHandshakePayload = 4096;

struct PeerIdentity {
  std::string name;
  std::uint64_t node_id = 0;
  std::string address;      // host:port of its peer listener, as it advertises it
  std::string api_address;  // host:port of its TCP API
};

class PeerHandshake {
 public:
  enum class State { kAwaitHello, kAwaitProof, kAwaitAccepted, kEstablished, kRefused };
  enum class Outcome { kPending, kEstablished, kRefused };

  // What the driver must do after an event: send `send` in order, then act on `outcome`.
  struct Actions {
    std::vector<Frame> send;
    Outcome outcome = Outcome::kPending;
    PeerIdentity peer;             // kEstablished: who the peer is
    std::string reason;            // kRefused: one line for the operator
    bool refused_by_peer = false;  // kRefused: the peer refused us (we did not refuse it)
  };

  // `nonce_hex` is injectable for tests (64 hex digits); empty means 32 fresh random bytes.
  PeerHandshake(PeerIdentity self, std::string secret, std::string nonce_hex = "");

  // Ties the handshake to one TLS session: the node name of the peer's verified certificate
  // (its Hello must claim that node) and the session's channel binding (the proofs cover it).
  // Call before Start().
  void BindToChannel(std::string peer_certificate_name, std::string channel_binding);
  // The first event: yields our Hello. Call once, before OnFrame.
  Actions Start();
  // One frame from the peer. After kEstablished or kRefused every frame is refused (without
  // sending anything): the handshake is over and its driver should not feed it any more.
  Actions OnFrame(const Frame& frame);

  State state() const { return state_; }
  // The peer's identity, as far as its Hello told us (empty before it).
  const PeerIdentity& peer() const { return peer_; }
  const std::string& nonce() const { return nonce_; }
  const std::string& peer_nonce() const { return peer_nonce_; }

 private:
  Actions OnHello(const Frame& frame);
  Actions OnProof(const Frame& frame);
  Actions OnAccepted(const Frame& frame);
  Actions Refuse(std::string reason);
  std::string Proof(std::uint64_t sender, std::uint64_t receiver, std::string_view sender_nonce,
                    std::string_view receiver_nonce) const;

  PeerIdentity self_;
  std::string secret_;
  std::string nonce_;
  std::optional<std::string> certificate_name_;  // set when bound to a TLS session
  std::string binding_hex_;
  PeerIdentity peer_;
  std::string peer_nonce_;
  State state_ = State::kAwaitHello;
  bool started_ = false;
};

std::string_view HandshakeStateName(PeerHandshake::State state);

// 16 lowercase hex digits, as node ids travel on the wire and in the API.
std::string NodeIdToHex(std::uint64_t id);
// Exactly 16 hex digits (either case); nullopt otherwise.
std::optional<std::uint64_t> ParseNodeIdHex(std::string_view text);

}  // namespace tern::ipc
