// The IpcDirect frame: each kind round-trips with the documented layout, and malformed
// payloads are rejected (a peer's garbage closes its link instead of confusing the broker).
#include <gtest/gtest.h>

#include <tern/ipc/direct_wire.hpp>

namespace tern::ipc {
namespace {

DirectToken Token(std::uint8_t first) {
  DirectToken token{};
  for (std::size_t i = 0; i < token.size(); ++i) token[i] = static_cast<std::uint8_t>(first + i);
  return token;
}

TEST(DirectWireTest, AskHasTheDocumentedLayout) {
  const DirectAsk ask{0x0102030405060708, 0x11, ObjectId{0x22, 0x33}};
  const std::string payload = EncodeDirectFrame(ask);
  ASSERT_EQ(payload.size(), 1u + 4 * 8);
  EXPECT_EQ(payload[0], 1);
  EXPECT_EQ(payload[1], 0x01);  // big-endian ask id
  EXPECT_EQ(payload[8], 0x08);
  auto parsed = ParseDirectFrame(payload);
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(std::get<DirectAsk>(*parsed), ask);
}

TEST(DirectWireTest, GrantRoundTrips) {
  const DirectGrant grant{7, 40123, Token(0xa0)};
  const std::string payload = EncodeDirectFrame(grant);
  ASSERT_EQ(payload.size(), 1u + 8 + 2 + 16);
  EXPECT_EQ(payload[0], 2);
  EXPECT_EQ(static_cast<std::uint8_t>(payload[9]), 40123 >> 8);
  EXPECT_EQ(static_cast<std::uint8_t>(payload[11]), 0xa0);
  auto parsed = ParseDirectFrame(payload);
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(std::get<DirectGrant>(*parsed), grant);
}

TEST(DirectWireTest, RefuseRoundTrips) {
  const DirectRefuse refuse{9, "the port's receiver never asked for direct calls"};
  auto parsed = ParseDirectFrame(EncodeDirectFrame(refuse));
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(std::get<DirectRefuse>(*parsed), refuse);
}

TEST(DirectWireTest, RejectsMalformedPayloads) {
  EXPECT_FALSE(ParseDirectFrame(""));
  EXPECT_FALSE(ParseDirectFrame(std::string(1, '\x01')));
  const std::string ask = EncodeDirectFrame(DirectAsk{1, 2, ObjectId{3, 4}});
  const std::string grant = EncodeDirectFrame(DirectGrant{1, 2, Token(0)});
  const std::string refuse = EncodeDirectFrame(DirectRefuse{1, "why"});
  for (const std::string& good : {ask, grant, refuse}) {
    ASSERT_TRUE(ParseDirectFrame(good));
    for (std::size_t cut = 0; cut < good.size(); ++cut) {
      EXPECT_FALSE(ParseDirectFrame(good.substr(0, cut))) << "cut at " << cut;
    }
    EXPECT_FALSE(ParseDirectFrame(good + "x")) << "trailing byte";
  }
  std::string unknown = ask;
  unknown[0] = 4;
  EXPECT_FALSE(ParseDirectFrame(unknown));
  EXPECT_FALSE(ParseDirectFrame(EncodeDirectFrame(DirectAsk{1, 2, ObjectId{3, 0}})));
  // A refusal that claims more reason than it carries.
  std::string lying = refuse;
  lying[12] = 0x7f;
  EXPECT_FALSE(ParseDirectFrame(lying));
}

}  // namespace
}  // namespace tern::ipc
