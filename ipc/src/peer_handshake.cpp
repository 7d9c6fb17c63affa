#include "tern/ipc/peer_handshake.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <nlohmann/json.hpp>
#include <random>

namespace tern::ipc {
namespace {

using nlohmann::json;

constexpr std::size_t kNonceBytes = 32;

std::string Hex(const unsigned char* data, std::size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (std::size_t i = 0; i < size; ++i) {
    out.push_back(kDigits[data[i] >> 4]);
    out.push_back(kDigits[data[i] & 15]);
  }
  return out;
}

bool IsHex(std::string_view text) {
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return false;
    }
  }
  return true;
}

std::string FreshNonce() {
  unsigned char bytes[kNonceBytes];
  if (RAND_bytes(bytes, sizeof bytes) != 1) {
    // OpenSSL's generator failed (no entropy?): fall back to the OS generator, never to zeros.
    std::random_device device;
    for (auto& byte : bytes) byte = static_cast<unsigned char>(device());
  }
  return Hex(bytes, sizeof bytes);
}

// The string field `key` of `body`, or nullopt if absent or not a string.
std::optional<std::string> StringField(const json& body, const char* key) {
  auto found = body.find(key);
  if (found == body.end() || !found->is_string()) return std::nullopt;
  return found->get<std::string>();
}

// Parses a handshake payload: a JSON object of bounded size, or nullopt.
std::optional<json> ParseBody(const Frame& frame) {
  if (frame.payload.size() > kMaxHandshakePayload) return std::nullopt;
  json body = json::parse(frame.payload, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) return std::nullopt;
  return body;
}

}  // namespace

std::string NodeIdToHex(std::uint64_t id) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, id >>= 4) out[static_cast<std::size_t>(i)] = kDigits[id & 15];
  return out;
}

std::optional<std::uint64_t> ParseNodeIdHex(std::string_view text) {
  if (text.size() != 16 || !IsHex(text)) return std::nullopt;
  std::uint64_t id = 0;
  for (char c : text) {
    const int digit = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
    id = id << 4 | static_cast<std::uint64_t>(digit);
  }
  return id;
}

std::string_view HandshakeStateName(PeerHandshake::State state) {
  switch (state) {
    case PeerHandshake::State::kAwaitHello:
      return "AwaitHello";
    case PeerHandshake::State::kAwaitProof:
      return "AwaitProof";
    case PeerHandshake::State::kAwaitAccepted:
      return "AwaitAccepted";
    case PeerHandshake::State::kEstablished:
      return "Established";
    case PeerHandshake::State::kRefused:
      return "Refused";
  }
  return "Unknown";
}

PeerHandshake::PeerHandshake(PeerIdentity self, std::string secret, std::string nonce_hex)
    : self_(std::move(self)),
      secret_(std::move(secret)),
      nonce_(nonce_hex.empty() ? FreshNonce() : std::move(nonce_hex)) {}

void PeerHandshake::BindToChannel(std::string peer_certificate_name, std::string channel_binding) {
  certificate_name_ = std::move(peer_certificate_name);
  binding_hex_ =
      Hex(reinterpret_cast<const unsigned char*>(channel_binding.data()), channel_binding.size());
}

std::string PeerHandshake::Proof(std::uint64_t sender, std::uint64_t receiver,
                                 std::string_view sender_nonce,
                                 std::string_view receiver_nonce) const {
  std::string message = "tern-auth-v2|" + NodeIdToHex(sender) + "|" + NodeIdToHex(receiver) + "|";
  message.append(sender_nonce).append("|").append(receiver_nonce).append("|").append(binding_hex_);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), secret_.data(), static_cast<int>(secret_.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), digest, &length);
  return Hex(digest, length);
}

PeerHandshake::Actions PeerHandshake::Start() {
  Actions actions;
  if (started_) return actions;
  started_ = true;
  const json hello = {{"node", self_.name},
                      {"node_id", NodeIdToHex(self_.node_id)},
                      {"address", self_.address},
                      {"api_address", self_.api_address},
                      {"nonce", nonce_}};
  actions.send.push_back(Frame{FrameType::kHello, hello.dump()});
  return actions;
}

PeerHandshake::Actions PeerHandshake::Refuse(std::string reason) {
  Actions actions;
  state_ = State::kRefused;
  actions.outcome = Outcome::kRefused;
  actions.reason = std::move(reason);
  actions.send.push_back(Frame{FrameType::kAuthRefused, json{{"reason", actions.reason}}.dump()});
  return actions;
}

PeerHandshake::Actions PeerHandshake::OnFrame(const Frame& frame) {
  if (state_ == State::kRefused || state_ == State::kEstablished) {
    Actions actions;
    actions.outcome = Outcome::kRefused;
    actions.reason = std::string("handshake frame ") + std::string(FrameTypeName(frame.type)) +
                     " after the handshake ended (" + std::string(HandshakeStateName(state_)) + ")";
    return actions;
  }
  if (frame.type == FrameType::kAuthRefused) {
    const auto body = ParseBody(frame);
    const auto reason = body ? StringField(*body, "reason") : std::nullopt;
    Actions actions;
    state_ = State::kRefused;
    actions.outcome = Outcome::kRefused;
    actions.refused_by_peer = true;
    actions.reason =
        "the peer refused us: " +
        (reason && !reason->empty() ? reason->substr(0, 200) : std::string("no reason given"));
    return actions;
  }
  switch (state_) {
    case State::kAwaitHello:
      return OnHello(frame);
    case State::kAwaitProof:
      return OnProof(frame);
    case State::kAwaitAccepted:
      return OnAccepted(frame);
    case State::kEstablished:
    case State::kRefused:
      break;
  }
  return Refuse("unexpected handshake state");
}

PeerHandshake::Actions PeerHandshake::OnHello(const Frame& frame) {
  if (frame.type != FrameType::kHello) {
    return Refuse("expected Hello, got " + std::string(FrameTypeName(frame.type)));
  }
  const auto body = ParseBody(frame);
  if (!body) return Refuse("malformed Hello: not a JSON object of at most 4096 bytes");
  const auto name = StringField(*body, "node");
  const auto id_hex = StringField(*body, "node_id");
  const auto nonce = StringField(*body, "nonce");
  const auto node_id = id_hex ? ParseNodeIdHex(*id_hex) : std::nullopt;
  if (!name || !node_id || !nonce) {
    return Refuse("malformed Hello: needs string \"node\", \"node_id\" (16 hex digits), \"nonce\"");
  }
  if (nonce->size() != 2 * kNonceBytes || !IsHex(*nonce)) {
    return Refuse("malformed Hello: nonce must be 64 hex digits");
  }
  peer_.name = *name;
  peer_.node_id = *node_id;
  peer_.address = StringField(*body, "address").value_or("");
  peer_.api_address = StringField(*body, "api_address").value_or("");
  peer_nonce_ = *nonce;
  if (peer_.node_id == self_.node_id) {
    return Refuse("the peer claims our own node id " + NodeIdToHex(self_.node_id));
  }
  if (certificate_name_ && *certificate_name_ != peer_.name) {
    return Refuse("its certificate is for " +
                  (certificate_name_->empty() ? std::string("no node") : *certificate_name_) +
                  " but its Hello claims " + peer_.name.substr(0, 64));
  }
  state_ = State::kAwaitProof;
  Actions actions;
  const std::string proof = Proof(self_.node_id, peer_.node_id, nonce_, peer_nonce_);
  actions.send.push_back(Frame{FrameType::kAuthProof, json{{"proof", proof}}.dump()});
  return actions;
}

PeerHandshake::Actions PeerHandshake::OnProof(const Frame& frame) {
  if (frame.type != FrameType::kAuthProof) {
    return Refuse("expected AuthProof, got " + std::string(FrameTypeName(frame.type)));
  }
  const auto body = ParseBody(frame);
  const auto proof = body ? StringField(*body, "proof") : std::nullopt;
  if (!proof) return Refuse("malformed AuthProof: needs string \"proof\"");
  const std::string expected = Proof(peer_.node_id, self_.node_id, peer_nonce_, nonce_);
  if (proof->size() != expected.size() ||
      CRYPTO_memcmp(proof->data(), expected.data(), expected.size()) != 0) {
    return Refuse(binding_hex_.empty()
                      ? "bad cluster secret (the peer's proof does not verify)"
                      : "bad cluster secret (the peer's proof does not verify for this TLS "
                        "session)");
  }
  state_ = State::kAwaitAccepted;
  Actions actions;
  actions.send.push_back(Frame{FrameType::kAuthAccepted, "{}"});
  return actions;
}

PeerHandshake::Actions PeerHandshake::OnAccepted(const Frame& frame) {
  if (frame.type != FrameType::kAuthAccepted) {
    return Refuse("expected AuthAccepted, got " + std::string(FrameTypeName(frame.type)));
  }
  state_ = State::kEstablished;
  Actions actions;
  actions.outcome = Outcome::kEstablished;
  actions.peer = peer_;
  return actions;
}

}  // namespace tern::ipc
