#include "tern/ipc/peer_handshake.hpp"

#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <nlohmann/json.hpp>

namespace tern::ipc {
namespace {

using nlohmann::json;

std::string Hex(const unsigned char* data, std::size_t size) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (std::size_t i = 0; i < size; ++i) {
    out.push_back(digits[data[i] >> 4]);
    out.push_back(digits[data[i] & 15]);
  }
  return out;
}

}  // namespace

std::string NodeIdToHex(std::uint64_t id) {
  char text[17] = {};
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(id));
  return text;
}

PeerHandshake::PeerHandshake(PeerIdentity self, std::string secret, std::string nonce)
    : self_(std::move(self)), secret_(std::move(secret)), nonce_(std::move(nonce)) {
  if (nonce_.empty()) {
    unsigned char bytes[32];
    RAND_bytes(bytes, sizeof bytes);
    nonce_ = Hex(bytes, sizeof bytes);
  }
}

std::string PeerHandshake::Proof(std::uint64_t sender, std::uint64_t receiver,
                                 const std::string& sender_nonce,
                                 const std::string& receiver_nonce) const {
  const std::string message = "tern-auth-v1|" + NodeIdToHex(sender) + "|" +
                              NodeIdToHex(receiver) + "|" + sender_nonce + "|" + receiver_nonce;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), secret_.data(), static_cast<int>(secret_.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), digest, &length);
  return Hex(digest, length);
}

HandshakeStep PeerHandshake::Start() {
  HandshakeStep step;
  json hello = {{"node", self_.name},
                {"node_id", NodeIdToHex(self_.node_id)},
                {"address", self_.address},
                {"api_address", self_.api_address},
                {"nonce", nonce_}};
  step.send.push_back(Frame{FrameType::kHello, hello.dump()});
  return step;
}

HandshakeStep PeerHandshake::Refuse(std::string reason, bool tell_peer) {
  HandshakeStep step;
  state_ = State::kRefused;
  step.refused = true;
  step.reason = std::move(reason);
  if (tell_peer) {
    step.send.push_back(Frame{FrameType::kAuthRefused, json{{"reason", step.reason}}.dump()});
  }
  return step;
}

HandshakeStep PeerHandshake::OnFrame(const Frame& frame) {
  if (state_ == State::kRefused || state_ == State::kEstablished) {
    return Refuse("handshake frame after the handshake ended", false);
  }
  if (frame.type == FrameType::kAuthRefused) {
    json body = json::parse(frame.payload, nullptr, false);
    const std::string reason = body.is_object() ? body.value("reason", "") : "";
    return Refuse("the peer refused us: " + (reason.empty() ? "no reason given" : reason), false);
  }
  json body = json::parse(frame.payload, nullptr, false);
  if (!body.is_object()) return Refuse("malformed handshake payload", true);
  switch (state_) {
    case State::kAwaitHello: {
      if (frame.type != FrameType::kHello) {
        return Refuse(std::string("expected Hello, got ") + std::string(FrameTypeName(frame.type)),
                      true);
      }
      try {
        peer_.name = body.at("node").get<std::string>();
        peer_.node_id = std::stoull(body.at("node_id").get<std::string>(), nullptr, 16);
        peer_.address = body.value("address", "");
        peer_.api_address = body.value("api_address", "");
        peer_nonce_ = body.at("nonce").get<std::string>();
      } catch (const std::exception&) {
        return Refuse("malformed Hello", true);
      }
      if (peer_nonce_.size() < 32) return Refuse("Hello nonce too short", true);
      if (peer_.node_id == self_.node_id) {
        return Refuse("peer claims our own node id " + NodeIdToHex(self_.node_id), true);
      }
      state_ = State::kAwaitProof;
      HandshakeStep step;
      step.send.push_back(
          Frame{FrameType::kAuthProof,
                json{{"proof", Proof(self_.node_id, peer_.node_id, nonce_, peer_nonce_)}}.dump()});
      return step;
    }
    case State::kAwaitProof: {
      if (frame.type != FrameType::kAuthProof) return Refuse("expected AuthProof", true);
      const std::string proof = body.value("proof", "");
      const std::string expected = Proof(peer_.node_id, self_.node_id, peer_nonce_, nonce_);
      if (proof.size() != expected.size() ||
          CRYPTO_memcmp(proof.data(), expected.data(), expected.size()) != 0) {
        return Refuse("bad cluster secret (the peer's proof does not verify)", true);
      }
      state_ = State::kAwaitAccepted;
      HandshakeStep step;
      step.send.push_back(Frame{FrameType::kAuthAccepted, "{}"});
      return step;
    }
    case State::kAwaitAccepted: {
      if (frame.type != FrameType::kAuthAccepted) return Refuse("expected AuthAccepted", true);
      state_ = State::kEstablished;
      HandshakeStep step;
      step.established = true;
      return step;
    }
    default:
      return Refuse("unexpected handshake state", false);
  }
}

}  // namespace tern::ipc
