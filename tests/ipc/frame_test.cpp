#include <gtest/gtest.h>

#include "tern/ipc/frame.hpp"

namespace tern::ipc {
namespace {

TEST(FrameTest, RoundTripInOneFeed) {
  FrameDecoder decoder;
  std::string wire = EncodeFrame(FrameType::kHeartbeat, "hello");
  AppendFrame(wire, FrameType::kApiRequest, std::string("\0bin\xff", 5));
  AppendFrame(wire, FrameType::kApiResponse, "");
  ASSERT_TRUE(decoder.Feed(wire));
  auto first = decoder.Next();
  ASSERT_TRUE(first);
  EXPECT_EQ(first->type, FrameType::kHeartbeat);
  EXPECT_EQ(first->payload, "hello");
  auto second = decoder.Next();
  ASSERT_TRUE(second);
  EXPECT_EQ(second->payload, std::string("\0bin\xff", 5));
  auto third = decoder.Next();
  ASSERT_TRUE(third);
  EXPECT_EQ(third->type, FrameType::kApiResponse);
  EXPECT_TRUE(third->payload.empty());
  EXPECT_FALSE(decoder.Next());
}

TEST(FrameTest, ByteByByteFeeding) {
  FrameDecoder decoder;
  const std::string wire = EncodeFrame(FrameType::kHello, std::string(1000, 'x'));
  for (size_t i = 0; i < wire.size(); ++i) {
    ASSERT_TRUE(decoder.Feed(wire.substr(i, 1)));
    if (i + 1 < wire.size()) {
      EXPECT_FALSE(decoder.Next());
    }
  }
  auto frame = decoder.Next();
  ASSERT_TRUE(frame);
  EXPECT_EQ(frame->payload.size(), 1000u);
}

TEST(FrameTest, HeaderIsBigEndianLengthThenType) {
  const std::string wire = EncodeFrame(FrameType::kApiRequest, "abc");
  ASSERT_EQ(wire.size(), kFrameHeaderSize + 3);
  EXPECT_EQ(wire.substr(0, 6), std::string("\0\0\0\x03\0\x0b", 6));
}

TEST(FrameTest, OversizeLengthIsMalformedAndNeverAllocated) {
  FrameDecoder decoder(1024);
  const std::string header("\x7f\xff\xff\xff\0\x01", 6);
  auto fed = decoder.Feed(header);
  ASSERT_FALSE(fed);
  EXPECT_NE(fed.error().message.find("exceeds the limit"), std::string::npos);
  EXPECT_FALSE(decoder.Feed("more"));  // stays broken
}

}  // namespace
}  // namespace tern::ipc
