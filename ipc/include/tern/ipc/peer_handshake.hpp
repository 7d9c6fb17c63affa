// PeerHandshake: mutual authentication of two agents that share a cluster secret, as a
// sans-I/O state machine (events: the peer's frames; actions: frames to send and an outcome).
//
//   kAwaitHello ──Hello──► kAwaitProof ──AuthProof ok──► kAwaitAccepted ──AuthAccepted──► kEstablished
//        │                      │ proof wrong: send AuthRefused                │
//        └──────────────────────┴──── AuthRefused / malformed / unexpected ────┴────► kRefused
//
// Both sides send Hello {node, node_id, address, api_address, nonce}, then AuthProof =
// HMAC-SHA256(secret, "tern-auth-v1|" + sender_id + "|" + receiver_id + "|" + sender_nonce +
// "|" + receiver_nonce), checked in constant time. The secret never crosses the wire; a replayed
// proof fails because the receiver's nonce is fresh. A peer claiming our own node id is refused.
//
// Thread-safety: not thread-safe; one PeerLink drives one instance.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tern/ipc/frame.hpp"

namespace tern::ipc {

struct PeerIdentity {
  std::string name;
  std::uint64_t node_id = 0;
  std::string address;      // peer transport host:port it advertises
  std::string api_address;  // its TCP API
};

struct HandshakeStep {
  std::vector<Frame> send;
  bool established = false;
  bool refused = false;
  std::string reason;  // why refused
};

class PeerHandshake {
 public:
  enum class State { kAwaitHello, kAwaitProof, kAwaitAccepted, kEstablished, kRefused };

  // `nonce` is injectable for tests; empty means 32 fresh random bytes.
  PeerHandshake(PeerIdentity self, std::string secret, std::string nonce = "");

  HandshakeStep Start();
  HandshakeStep OnFrame(const Frame& frame);

  State state() const { return state_; }
  const PeerIdentity& peer() const { return peer_; }

 private:
  HandshakeStep Refuse(std::string reason, bool tell_peer);
  std::string Proof(std::uint64_t sender, std::uint64_t receiver, const std::string& sender_nonce,
                    const std::string& receiver_nonce) const;

  PeerIdentity self_;
  std::string secret_;
  std::string nonce_;
  PeerIdentity peer_;
  std::string peer_nonce_;
  State state_ = State::kAwaitHello;
};

std::string NodeIdToHex(std::uint64_t id);

}  // namespace tern::ipc
