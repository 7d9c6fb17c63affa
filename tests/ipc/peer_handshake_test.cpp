#include <gtest/gtest.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <tern/ipc/peer_handshake.hpp>

namespace tern::ipc {
namespace {

using Outcome = PeerHandshake::Outcome;
using State = PeerHandshake::State;

struct Side {
  Outcome outcome = Outcome::kPending;
  std::string reason;
  bool refused_by_peer = false;
  PeerIdentity peer;
};

struct Result {
  Side a, b;
};

void Record(Side& side, const PeerHandshake::Actions& actions) {
  if (actions.outcome == Outcome::kPending) return;
  EXPECT_EQ(side.outcome, Outcome::kPending) << "a second outcome: " << actions.reason;
  side.outcome = actions.outcome;
  side.reason = actions.reason;
  side.refused_by_peer = actions.refused_by_peer;
  side.peer = actions.peer;
}

// Delivers frames between two handshakes (as two TCP directions would) until both are quiet.
// `tamper` may rewrite each frame from a to b.
Result Exchange(PeerHandshake& a, PeerHandshake& b,
                const std::function<void(Frame&)>& tamper = nullptr) {
  Result result;
  std::vector<Frame> to_b = a.Start().send;
  std::vector<Frame> to_a = b.Start().send;
  for (int round = 0; round < 10 && (!to_a.empty() || !to_b.empty()); ++round) {
    std::vector<Frame> next_a, next_b;
    for (auto& frame : to_b) {
      if (tamper) tamper(frame);
      if (result.b.outcome != Outcome::kPending) break;  // the link is closed
      auto actions = b.OnFrame(frame);
      next_a.insert(next_a.end(), actions.send.begin(), actions.send.end());
      Record(result.b, actions);
    }
    for (auto& frame : to_a) {
      if (result.a.outcome != Outcome::kPending) break;
      auto actions = a.OnFrame(frame);
      next_b.insert(next_b.end(), actions.send.begin(), actions.send.end());
      Record(result.a, actions);
    }
    to_a = std::move(next_a);
    to_b = std::move(next_b);
  }
  return result;
}

PeerIdentity Node(std::uint64_t id, const std::string& name) {
  return {name, id, "10.0.0." + std::to_string(id) + ":7071",
          "10.0.0." + std::to_string(id) + ":7070"};
}

TEST(PeerHandshakeTest, SameSecretEstablishesBothSides) {
  PeerHandshake a(Node(1, "a"), "s3cret"), b(Node(0xfedcba9876543210, "b"), "s3cret");
  auto result = Exchange(a, b);
  ASSERT_EQ(result.a.outcome, Outcome::kEstablished) << result.a.reason;
  ASSERT_EQ(result.b.outcome, Outcome::kEstablished) << result.b.reason;
  EXPECT_EQ(result.a.peer.name, "b");
  EXPECT_EQ(result.a.peer.node_id, 0xfedcba9876543210u);
  EXPECT_EQ(result.a.peer.address, "10.0.0.18364758544493064720:7071");
  EXPECT_EQ(result.b.peer.node_id, 1u);
  EXPECT_EQ(result.b.peer.api_address, "10.0.0.1:7070");
  EXPECT_EQ(a.state(), State::kEstablished);
  EXPECT_EQ(b.state(), State::kEstablished);
  EXPECT_EQ(a.peer_nonce(), b.nonce());
  EXPECT_EQ(a.nonce().size(), 64u);
  EXPECT_NE(a.nonce(), b.nonce());
}

TEST(PeerHandshakeTest, HelloCarriesTheDocumentedFields) {
  PeerHandshake a(Node(0x2a, "a"), "s");
  auto actions = a.Start();
  ASSERT_EQ(actions.send.size(), 1u);
  EXPECT_EQ(actions.send[0].type, FrameType::kHello);
  auto hello = nlohmann::json::parse(actions.send[0].payload);
  EXPECT_EQ(hello["node"], "a");
  EXPECT_EQ(hello["node_id"], "000000000000002a");
  EXPECT_EQ(hello["address"], "10.0.0.42:7071");
  EXPECT_EQ(hello["api_address"], "10.0.0.42:7070");
  EXPECT_EQ(hello["nonce"].get<std::string>().size(), 64u);
}

TEST(PeerHandshakeTest, WrongSecretIsRefusedOnBothSides) {
  PeerHandshake a(Node(1, "a"), "right"), b(Node(2, "b"), "wrong");
  auto result = Exchange(a, b);
  EXPECT_EQ(result.a.outcome, Outcome::kRefused);
  EXPECT_EQ(result.b.outcome, Outcome::kRefused);
  EXPECT_NE(result.a.reason.find("secret"), std::string::npos) << result.a.reason;
  EXPECT_NE(result.b.reason.find("secret"), std::string::npos) << result.b.reason;
  EXPECT_EQ(a.state(), State::kRefused);
  EXPECT_EQ(b.state(), State::kRefused);
}

TEST(PeerHandshakeTest, TamperedProofIsRefused) {
  PeerHandshake a(Node(1, "a"), "s"), b(Node(2, "b"), "s");
  auto result = Exchange(a, b, [](Frame& frame) {
    if (frame.type != FrameType::kAuthProof) return;
    auto body = nlohmann::json::parse(frame.payload);
    std::string proof = body["proof"];
    proof[10] = proof[10] == '0' ? '1' : '0';
    frame.payload = nlohmann::json{{"proof", proof}}.dump();
  });
  EXPECT_EQ(result.b.outcome, Outcome::kRefused);
  EXPECT_FALSE(result.b.refused_by_peer);
  EXPECT_NE(result.b.reason.find("does not verify"), std::string::npos) << result.b.reason;
  // a hears b's AuthRefused: it is refused too, by the peer.
  EXPECT_EQ(result.a.outcome, Outcome::kRefused);
  EXPECT_TRUE(result.a.refused_by_peer);
  EXPECT_NE(result.a.reason.find("the peer refused us"), std::string::npos) << result.a.reason;
}

TEST(PeerHandshakeTest, ReplayedProofFromAnotherSessionIsRefused) {
  // An eavesdropper records a proof from one session and replays it in another: the
  // receiver's fresh nonce makes it useless.
  std::string recorded;
  {
    PeerHandshake a(Node(1, "a"), "s"), b(Node(2, "b"), "s");
    Exchange(a, b, [&](Frame& frame) {
      if (frame.type == FrameType::kAuthProof) recorded = frame.payload;
    });
  }
  ASSERT_FALSE(recorded.empty());
  PeerHandshake a(Node(1, "a"), "s"), b(Node(2, "b"), "s");
  auto result = Exchange(a, b, [&](Frame& frame) {
    if (frame.type == FrameType::kAuthProof) frame.payload = recorded;
  });
  EXPECT_EQ(result.b.outcome, Outcome::kRefused);
}

TEST(PeerHandshakeTest, SameNodeIdIsRefused) {
  PeerHandshake a(Node(7, "a"), "s"), b(Node(7, "impostor"), "s");
  auto result = Exchange(a, b);
  EXPECT_EQ(result.a.outcome, Outcome::kRefused);
  EXPECT_EQ(result.b.outcome, Outcome::kRefused);
  EXPECT_NE(result.a.reason.find("own node id"), std::string::npos) << result.a.reason;
}

TEST(PeerHandshakeTest, DataBeforeAuthenticationIsRefused) {
  PeerHandshake a(Node(1, "a"), "s");
  a.Start();
  auto actions = a.OnFrame(Frame{FrameType::kApiRequest, "{}"});
  EXPECT_EQ(actions.outcome, Outcome::kRefused);
  ASSERT_EQ(actions.send.size(), 1u);
  EXPECT_EQ(actions.send[0].type, FrameType::kAuthRefused);
  EXPECT_EQ(a.state(), State::kRefused);
}

TEST(PeerHandshakeTest, MalformedPayloadsAreRefusedNotThrown) {
  const std::string nonce(64, 'a');
  const std::vector<std::string> hellos = {
      "not json",
      "[1,2]",
      R"({"node":"x","node_id":"zz","nonce":")" + nonce + R"("})",
      R"({"node":"x","node_id":"-000000000000001","nonce":")" + nonce + R"("})",
      R"({"node":"x","node_id":"00000000000000002","nonce":")" + nonce + R"("})",
      R"({"node":"x","node_id":"0000000000000002","nonce":"short"})",
      R"({"node":"x","node_id":"0000000000000002","nonce":12})",
      R"({"node":5,"node_id":"0000000000000002","nonce":")" + nonce + R"("})",
      std::string(5000, '['),
  };
  for (const auto& hello : hellos) {
    PeerHandshake a(Node(1, "a"), "s");
    a.Start();
    auto actions = a.OnFrame(Frame{FrameType::kHello, hello});
    EXPECT_EQ(actions.outcome, Outcome::kRefused) << hello;
    EXPECT_NE(actions.reason.find("malformed"), std::string::npos) << actions.reason;
  }
  // A proof that is not a string.
  PeerHandshake a(Node(1, "a"), "s");
  a.Start();
  auto hello = nlohmann::json{
      {"node", "b"}, {"node_id", "0000000000000002"}, {"nonce", nonce}, {"address", 3}};
  ASSERT_EQ(a.OnFrame(Frame{FrameType::kHello, hello.dump()}).outcome, Outcome::kPending);
  EXPECT_EQ(a.peer().address, "");  // a non-string address is ignored
  auto actions = a.OnFrame(Frame{FrameType::kAuthProof, R"({"proof":42})"});
  EXPECT_EQ(actions.outcome, Outcome::kRefused);
}

TEST(PeerHandshakeTest, FramesAfterTheEndAreRefusedSilently) {
  PeerHandshake a(Node(1, "a"), "s"), b(Node(2, "b"), "s");
  Exchange(a, b);
  auto actions = a.OnFrame(Frame{FrameType::kHello, "{}"});
  EXPECT_EQ(actions.outcome, Outcome::kRefused);
  EXPECT_TRUE(actions.send.empty());
}

TEST(PeerHandshakeTest, NodeIdHex) {
  EXPECT_EQ(NodeIdToHex(0x1234abcd), "000000001234abcd");
  EXPECT_EQ(ParseNodeIdHex("000000001234ABCD"), 0x1234abcdu);
  EXPECT_EQ(ParseNodeIdHex("ffffffffffffffff"), ~std::uint64_t{0});
  EXPECT_FALSE(ParseNodeIdHex("1234"));
  EXPECT_FALSE(ParseNodeIdHex("0x00000000000012"));
}

}  // namespace
}  // namespace tern::ipc

namespace tern::ipc {
namespace {

// Issue 14 finding 1, adapted to TLS: a relay without the cluster secret sits between node a
// and node b and passes each one's frames to the other unchanged. It holds TLS sessions with
// both (so it has a certificate of the cluster CA, here node c's), but the two sessions are
// different: different channel bindings. Before TLS the relay got b established to "a".
TEST(PeerHandshakeRelayTest, ARelayWithAnotherNodesCertificateIsRefused) {
  PeerHandshake a(Node(1, "a"), "shared"), b(Node(2, "b"), "shared");
  a.BindToChannel("c", std::string(32, 'X'));  // a's TLS session with the relay
  b.BindToChannel("c", std::string(32, 'Y'));  // b's TLS session with the relay
  auto result = Exchange(a, b);                // the relay: every frame passed on unchanged
  EXPECT_EQ(result.a.outcome, Outcome::kRefused);
  EXPECT_EQ(result.b.outcome, Outcome::kRefused)
      << "b accepted the relay as " << result.b.peer.name;
  EXPECT_NE(result.b.reason.find("certificate is for c but its Hello claims a"), std::string::npos)
      << result.b.reason;
}

// Even a relay holding certificates that name a and b (but not the secret) gets nowhere: the
// proofs cover each TLS session, so a proof relayed from one session fails in the other.
TEST(PeerHandshakeRelayTest, ARelayedProofFailsInAnotherTlsSession) {
  PeerHandshake a(Node(1, "a"), "shared"), b(Node(2, "b"), "shared");
  a.BindToChannel("b", std::string(32, 'X'));
  b.BindToChannel("a", std::string(32, 'Y'));
  auto result = Exchange(a, b);
  ASSERT_EQ(result.a.outcome, Outcome::kRefused);
  ASSERT_EQ(result.b.outcome, Outcome::kRefused)
      << "b accepted the relay as " << result.b.peer.name;
  EXPECT_NE(result.a.reason.find("bad cluster secret"), std::string::npos) << result.a.reason;
  EXPECT_NE(result.a.reason.find("TLS session"), std::string::npos) << result.a.reason;
}

// The honest case: one TLS session, the same binding on both ends, names as certified.
TEST(PeerHandshakeRelayTest, OneSessionWithMatchingNamesEstablishes) {
  PeerHandshake a(Node(1, "a"), "shared"), b(Node(2, "b"), "shared");
  a.BindToChannel("b", std::string(32, 'Z'));
  b.BindToChannel("a", std::string(32, 'Z'));
  auto result = Exchange(a, b);
  EXPECT_EQ(result.a.outcome, Outcome::kEstablished) << result.a.reason;
  EXPECT_EQ(result.b.outcome, Outcome::kEstablished) << result.b.reason;
}

}  // namespace
}  // namespace tern::ipc
