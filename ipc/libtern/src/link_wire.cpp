#include "link_wire.hpp"

#include <memory>
#include <utility>

#include "direct_wire.hpp"

namespace tern::libtern {

void WriteLinkHello(ipc::WireWriter& out, std::uint64_t epoch) {
  ipc::AppendFrameHeader(out.out(), kLinkHello, 8);
  out.U64(epoch);
}

void WriteLinkOffer(ipc::WireWriter& out, std::uint32_t seq, const Message& message) {
  WriteDataFrameHeader(out, kLinkOffer, 4 + 4, message.items);
  out.U32(seq);
  out.U32(message.id);
  WriteDataItems(out, message.items);
}

void WriteLinkSeq(ipc::WireWriter& out, ipc::FrameType type, std::uint32_t seq) {
  ipc::AppendFrameHeader(out.out(), type, 4);
  out.U32(seq);
}

void WriteLinkMatchedBack(ipc::WireWriter& out, std::uint64_t epoch, std::uint32_t seq) {
  ipc::AppendFrameHeader(out.out(), kLinkMatchedBack, 8 + 4);
  out.U64(epoch);
  out.U32(seq);
}

Expected<LinkFrame> ParseLinkFrame(ipc::Frame frame) {
  auto payload = std::make_shared<const std::string>(std::move(frame.payload));
  ipc::WireReader reader(*payload, payload);
  LinkFrame parsed;
  parsed.type = frame.type;
  if (frame.type == kLinkHello) {
    auto epoch = reader.U64();
    if (!epoch || !reader.AtEnd()) return Fail("malformed LinkHello");
    parsed.epoch = *epoch;
    return parsed;
  }
  if (frame.type == kLinkMatchedBack) {
    auto epoch = reader.U64();
    auto seq = reader.U32();
    if (!epoch || !seq || *seq == 0 || !reader.AtEnd()) return Fail("malformed LinkMatchedBack");
    parsed.epoch = *epoch;
    parsed.seq = *seq;
    return parsed;
  }
  if (frame.type != kLinkOffer && frame.type != kLinkMatched && frame.type != kLinkCancel &&
      frame.type != kLinkCancelled) {
    return Fail("a direct link connection carries no frame of type " +
                std::to_string(static_cast<unsigned>(frame.type)));
  }
  auto seq = reader.U32();
  if (!seq || *seq == 0) return Fail("link frame without a sequence");
  parsed.seq = *seq;
  if (frame.type != kLinkOffer) {
    if (!reader.AtEnd()) return Fail("link frame has bytes after its sequence");
    return parsed;
  }
  auto id = reader.U32();
  if (!id) return Fail("LinkOffer cut short");
  auto items = ReadDataItems(reader, payload);
  if (!items) return Fail(items.error().message);
  parsed.message.id = *id;
  parsed.message.items = std::move(*items);
  return parsed;
}

}  // namespace tern::libtern
