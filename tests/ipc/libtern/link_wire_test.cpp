// The frames of a direct link connection (link_wire.hpp): what is written reads back the same,
// and a malformed frame is an error, never a half-read offer.
#include "link_wire.hpp"

#include <gtest/gtest.h>

#include <string>
#include <tern/ipc.hpp>
#include <vector>

namespace tern::libtern {
namespace {

// The frames `out` holds, decoded.
std::vector<ipc::Frame> Frames(ipc::WireWriter& out) {
  std::string bytes = out.out();
  for (const auto& shared : out.shared()) bytes.insert(shared.at, shared.bytes);
  ipc::FrameDecoder decoder;
  EXPECT_TRUE(decoder.Feed(bytes));
  std::vector<ipc::Frame> frames;
  while (auto frame = decoder.Next()) frames.push_back(std::move(*frame));
  return frames;
}

TEST(LinkWire, EveryFrameReadsBackAsWritten) {
  ipc::WireWriter out(/*share_data=*/true);
  WriteLinkHello(out, 0x1122334455667788ULL);
  Message offer = BytesMessage(0, "hello", 1);
  offer.items.push_back(Item::OutOfLine(std::string(100000, 'x')));  // shared, not copied
  WriteLinkOffer(out, 7, offer);
  WriteLinkSeq(out, kLinkMatched, 7);
  WriteLinkSeq(out, kLinkCancel, 8);
  WriteLinkSeq(out, kLinkCancelled, 8);
  WriteLinkMatchedBack(out, 0x0102030405060708ULL, 9);
  auto frames = Frames(out);
  ASSERT_EQ(frames.size(), 6u);
  auto hello = ParseLinkFrame(frames[0]);
  ASSERT_TRUE(hello) << hello.error().message;
  EXPECT_EQ(hello->epoch, 0x1122334455667788ULL);
  auto parsed = ParseLinkFrame(frames[1]);
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(parsed->type, kLinkOffer);
  EXPECT_EQ(parsed->seq, 7u);
  EXPECT_EQ(parsed->message.id, 1u);
  ASSERT_EQ(parsed->message.items.size(), 2u);
  EXPECT_EQ(parsed->message.items[0].bytes(), "hello");
  EXPECT_EQ(parsed->message.items[1].kind, ItemKind::kOutOfLine);
  EXPECT_EQ(parsed->message.items[1].bytes(), std::string(100000, 'x'));
  for (std::size_t i = 2; i < 5; ++i) {
    auto seq = ParseLinkFrame(frames[i]);
    ASSERT_TRUE(seq) << seq.error().message;
    EXPECT_EQ(seq->type, frames[i].type);
    EXPECT_EQ(seq->seq, i == 2 ? 7u : 8u);
  }
  auto back = ParseLinkFrame(frames[5]);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->type, kLinkMatchedBack);
  EXPECT_EQ(back->epoch, 0x0102030405060708ULL);
  EXPECT_EQ(back->seq, 9u);
}

TEST(LinkWire, MalformedFramesAreErrors) {
  const auto parse = [](ipc::FrameType type, std::string payload) {
    return static_cast<bool>(ParseLinkFrame(ipc::Frame{type, std::move(payload)}));
  };
  EXPECT_FALSE(parse(kLinkHello, "short"));
  EXPECT_FALSE(parse(kLinkHello, std::string(9, '\1')));    // a byte after the epoch
  EXPECT_FALSE(parse(kLinkMatched, std::string(4, '\0')));  // sequence 0
  EXPECT_FALSE(parse(kLinkMatched, std::string(5, '\1')));
  EXPECT_FALSE(parse(kLinkMatchedBack, std::string(4, '\1')));   // no epoch
  EXPECT_FALSE(parse(kLinkMatchedBack, std::string(12, '\0')));  // sequence 0
  EXPECT_FALSE(parse(kLinkMatchedBack, std::string(13, '\1')));
  EXPECT_FALSE(parse(static_cast<ipc::FrameType>(40), std::string(4, '\1')));  // a call's type
  // An offer whose item count claims more than it holds, and one carrying a port right.
  ipc::WireWriter bad;
  bad.U32(1);
  bad.U32(1);
  bad.U32(1000);
  EXPECT_FALSE(parse(kLinkOffer, bad.Take()));
  ipc::WireWriter port;
  port.U32(1);
  port.U32(1);
  port.U32(1);
  port.U8(static_cast<std::uint8_t>(ItemKind::kPort));
  port.Bytes("x");
  EXPECT_FALSE(parse(kLinkOffer, port.Take()));
}

}  // namespace
}  // namespace tern::libtern
