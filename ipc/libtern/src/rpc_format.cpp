#include "rpc_format.hpp"

namespace tern::libtern {

Item EncodeRpcHeader(const RpcHeader& header) {
  ipc::WireWriter writer;
  writer.U8(kRpcVersion);
  writer.U8(header.flags);
  writer.U64(header.client);
  writer.U64(header.sequence);
  if (header.flags & kRpcCarriesId) writer.U32(header.message_id);
  return Item::Bytes(writer.Take());
}

bool IsRpcMessage(const Message& message) {
  return message.id == kRpcRequestId || message.id == kRpcReplyId || message.id == kRpcAckId;
}

std::optional<RpcHeader> DecodeRpcHeader(const Message& message) {
  if (!IsRpcMessage(message) || message.items.empty()) return std::nullopt;
  const Item& first = message.items.front();
  if (first.kind != ItemKind::kBytes) return std::nullopt;
  ipc::WireReader reader(first.bytes());
  auto version = reader.U8();
  auto flags = reader.U8();
  auto client = reader.U64();
  auto sequence = reader.U64();
  if (!sequence || *version != kRpcVersion) return std::nullopt;
  const bool with_id = (*flags & kRpcCarriesId) != 0;
  if (first.bytes().size() != (with_id ? kRpcHeaderWithIdSize : kRpcHeaderSize)) {
    return std::nullopt;
  }
  RpcHeader header{*flags, *client, *sequence};
  if (with_id) header.message_id = *reader.U32();
  return header;
}

}  // namespace tern::libtern
