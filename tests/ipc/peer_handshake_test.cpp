#include <gtest/gtest.h>

#include <functional>

#include "tern/ipc/peer_handshake.hpp"

namespace tern::ipc {
namespace {

struct Outcome {
  bool a_established = false, b_established = false, a_refused = false, b_refused = false;
  std::string a_reason, b_reason;
};

// Delivers frames between two handshakes until neither has anything more to say.
Outcome Exchange(PeerHandshake& a, PeerHandshake& b,
            const std::function<void(Frame&)>& tamper_a_to_b = nullptr) {
  Outcome outcome;
  std::vector<Frame> to_b = a.Start().send;
  std::vector<Frame> to_a = b.Start().send;
  for (int round = 0; round < 10 && (!to_a.empty() || !to_b.empty()); ++round) {
    std::vector<Frame> next_a, next_b;
    for (auto& frame : to_b) {
      if (tamper_a_to_b) tamper_a_to_b(frame);
      if (b.state() == PeerHandshake::State::kRefused) break;
      auto step = b.OnFrame(frame);
      next_a.insert(next_a.end(), step.send.begin(), step.send.end());
      outcome.b_established |= step.established;
      if (step.refused) outcome.b_refused = true, outcome.b_reason = step.reason;
    }
    for (auto& frame : to_a) {
      if (a.state() == PeerHandshake::State::kRefused) break;
      auto step = a.OnFrame(frame);
      next_b.insert(next_b.end(), step.send.begin(), step.send.end());
      outcome.a_established |= step.established;
      if (step.refused) outcome.a_refused = true, outcome.a_reason = step.reason;
    }
    to_a = std::move(next_a);
    to_b = std::move(next_b);
  }
  return outcome;
}

PeerIdentity Node(std::uint64_t id, const std::string& name) {
  return {name, id, "10.0.0." + std::to_string(id) + ":7071", ""};
}

TEST(PeerHandshakeTest, SameSecretEstablishesBothSides) {
  PeerHandshake a(Node(1, "a"), "s3cret"), b(Node(2, "b"), "s3cret");
  auto outcome = Exchange(a, b);
  EXPECT_TRUE(outcome.a_established);
  EXPECT_TRUE(outcome.b_established);
  EXPECT_EQ(a.peer().name, "b");
  EXPECT_EQ(b.peer().node_id, 1u);
  EXPECT_EQ(a.state(), PeerHandshake::State::kEstablished);
}

TEST(PeerHandshakeTest, WrongSecretIsRefusedOnBothSides) {
  PeerHandshake a(Node(1, "a"), "right"), b(Node(2, "b"), "wrong");
  auto outcome = Exchange(a, b);
  EXPECT_FALSE(outcome.a_established);
  EXPECT_FALSE(outcome.b_established);
  EXPECT_TRUE(outcome.a_refused);
  EXPECT_TRUE(outcome.b_refused);
  EXPECT_NE(outcome.a_reason.find("secret"), std::string::npos) << outcome.a_reason;
}

TEST(PeerHandshakeTest, TamperedProofIsRefused) {
  PeerHandshake a(Node(1, "a"), "s"), b(Node(2, "b"), "s");
  auto outcome = Exchange(a, b, [](Frame& frame) {
    if (frame.type == FrameType::kAuthProof) frame.payload[12] ^= 1;
  });
  EXPECT_TRUE(outcome.b_refused);
  EXPECT_FALSE(outcome.b_established);
  EXPECT_FALSE(outcome.a_established);
}

TEST(PeerHandshakeTest, OwnNodeIdIsRefused) {
  PeerHandshake a(Node(7, "a"), "s"), b(Node(7, "impostor"), "s");
  auto outcome = Exchange(a, b);
  EXPECT_TRUE(outcome.a_refused);
  EXPECT_NE(outcome.a_reason.find("own node id"), std::string::npos);
}

TEST(PeerHandshakeTest, DataBeforeAuthenticationIsRefused) {
  PeerHandshake a(Node(1, "a"), "s");
  a.Start();
  auto step = a.OnFrame(Frame{FrameType::kApiRequest, "{}"});
  EXPECT_TRUE(step.refused);
  ASSERT_EQ(step.send.size(), 1u);
  EXPECT_EQ(step.send[0].type, FrameType::kAuthRefused);
}

TEST(PeerHandshakeTest, MalformedHelloIsRefusedNotThrown) {
  PeerHandshake a(Node(1, "a"), "s");
  a.Start();
  EXPECT_TRUE(a.OnFrame(Frame{FrameType::kHello, "not json"}).refused);
  PeerHandshake b(Node(1, "b"), "s");
  b.Start();
  EXPECT_TRUE(b.OnFrame(Frame{FrameType::kHello, R"({"node":"x","node_id":"zz","nonce":"1"})"})
                  .refused);
}

}  // namespace
}  // namespace tern::ipc
