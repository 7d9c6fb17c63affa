#include "direct_wire.hpp"

#include <utility>

namespace tern::libtern {

namespace {
constexpr std::size_t kItemHeaderSize = 5;  // [u8 kind][u32 length]
}  // namespace

std::size_t DataItemsSize(std::span<const Item> items) {
  std::size_t size = 0;
  for (const Item& item : items) size += kItemHeaderSize + item.bytes().size();
  return size;
}

// The frame header needs the payload's length before the items: it is counted, not measured
// after writing, so that large items never pass through a temporary buffer.
void WriteDataFrameHeader(ipc::WireWriter& out, ipc::FrameType type, std::size_t fixed,
                          std::span<const Item> items) {
  const std::size_t length = fixed + 4 + DataItemsSize(items);
  ipc::AppendFrameHeader(out.out(), type, static_cast<std::uint32_t>(length));
}

void WriteDataItems(ipc::WireWriter& out, std::span<const Item> items) {
  out.U32(static_cast<std::uint32_t>(items.size()));
  for (const Item& item : items) {
    out.U8(static_cast<std::uint8_t>(item.kind));
    out.Data(item.bytes(), item.data);
  }
}

Expected<std::vector<Item>> ReadDataItems(ipc::WireReader& reader,
                                          const std::shared_ptr<const std::string>& payload) {
  auto count = reader.U32();
  if (!count) return Fail("direct frame cut short");
  if (*count > reader.remaining() / kItemHeaderSize) {
    return Fail("direct frame claims more items than it holds");
  }
  std::vector<Item> items;
  items.reserve(*count);
  for (std::uint32_t i = 0; i < *count; ++i) {
    auto kind = reader.U8();
    if (!kind) return Fail("direct frame cut short");
    const auto item_kind = static_cast<ItemKind>(*kind);
    if (item_kind != ItemKind::kBytes && item_kind != ItemKind::kOutOfLine) {
      return Fail("a direct frame carries data items only");
    }
    auto bytes = reader.BytesView();
    if (!bytes) return Fail("direct frame cut short");
    items.push_back(Item::Shared(item_kind, payload, *bytes));
  }
  if (!reader.AtEnd()) return Fail("direct frame has bytes after its items");
  return items;
}

bool IsDataOnly(std::span<const Item> items) {
  for (const Item& item : items) {
    if (item.kind != ItemKind::kBytes && item.kind != ItemKind::kOutOfLine) return false;
  }
  return true;
}

void WriteDirectCall(ipc::WireWriter& out, DirectCallKind kind, std::uint64_t client,
                     std::uint64_t sequence, std::span<const Item> items,
                     std::uint32_t message_id) {
  const bool with_id = kind == DirectCallKind::kMessage;
  WriteDataFrameHeader(out, ipc::FrameType::kDirectCall, 1 + 8 + 8 + (with_id ? 4 : 0), items);
  out.U8(static_cast<std::uint8_t>(kind));
  out.U64(client);
  out.U64(sequence);
  if (with_id) out.U32(message_id);
  WriteDataItems(out, items);
}

void WriteDirectAnswer(ipc::WireWriter& out, DirectOutcome outcome, std::uint8_t flags,
                       std::uint64_t client, std::uint64_t sequence, std::span<const Item> items) {
  WriteDataFrameHeader(out, ipc::FrameType::kDirectAnswer, 1 + 1 + 8 + 8, items);
  out.U8(static_cast<std::uint8_t>(outcome));
  out.U8(flags);
  out.U64(client);
  out.U64(sequence);
  WriteDataItems(out, items);
}

Expected<DirectCall> ParseDirectCall(std::shared_ptr<const std::string> payload) {
  ipc::WireReader reader(*payload, payload);
  auto kind = reader.U8();
  auto client = reader.U64();
  auto sequence = reader.U64();
  if (!sequence) return Fail("DirectCall cut short");
  if (*kind != static_cast<std::uint8_t>(DirectCallKind::kRequest) &&
      *kind != static_cast<std::uint8_t>(DirectCallKind::kAck) &&
      *kind != static_cast<std::uint8_t>(DirectCallKind::kMessage)) {
    return Fail("DirectCall of unknown kind " + std::to_string(*kind));
  }
  std::uint32_t message_id = 0;
  if (*kind == static_cast<std::uint8_t>(DirectCallKind::kMessage)) {
    auto id = reader.U32();
    if (!id) return Fail("DirectCall cut short");
    message_id = *id;
  }
  auto items = ReadDataItems(reader, payload);
  if (!items) return Fail(items.error().message);
  if (*kind == static_cast<std::uint8_t>(DirectCallKind::kAck) && !items->empty()) {
    return Fail("a DirectCall ack carries no items");
  }
  return DirectCall{static_cast<DirectCallKind>(*kind), *client, *sequence, message_id,
                    std::move(*items)};
}

Expected<DirectAnswer> ParseDirectAnswer(std::shared_ptr<const std::string> payload) {
  ipc::WireReader reader(*payload, payload);
  auto outcome = reader.U8();
  auto flags = reader.U8();
  auto client = reader.U64();
  auto sequence = reader.U64();
  if (!sequence) return Fail("DirectAnswer cut short");
  if (*outcome > static_cast<std::uint8_t>(DirectOutcome::kCallThroughAgents)) {
    return Fail("DirectAnswer of unknown outcome " + std::to_string(*outcome));
  }
  auto items = ReadDataItems(reader, payload);
  if (!items) return Fail(items.error().message);
  return DirectAnswer{static_cast<DirectOutcome>(*outcome), *flags, *client, *sequence,
                      std::move(*items)};
}

}  // namespace tern::libtern
