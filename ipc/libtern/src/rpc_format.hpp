// The RPC message format of libtern (docs/ipc.md "RPC message format"): the header that every
// request, reply and acknowledgement carries as its first item.
//
//   item 0, bytes, 18 bytes: [u8 version = 1][u8 flags][u64 client id][u64 sequence]  (BE)
//   with flag 4 (a request that stands for a send_receive's message), 22 bytes: the same and
//   [u32 the message's own id]
//
// Message ids tell the three kinds apart. The caller's items follow the header.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <tern/ipc.hpp>
#include <tern/ipc/job_wire.hpp>

namespace tern::libtern {

inline constexpr std::uint32_t kRpcRequestId = 0x7e010001;
inline constexpr std::uint32_t kRpcReplyId = 0x7e010002;
inline constexpr std::uint32_t kRpcAckId = 0x7e010003;

inline constexpr std::uint8_t kRpcVersion = 1;
inline constexpr std::size_t kRpcHeaderSize = 18;

// Reply flags.
inline constexpr std::uint8_t kRpcAckWanted = 1;      // send an ack now (ack=explicit)
inline constexpr std::uint8_t kRpcHandlerFailed = 2;  // item 1: the failure's text
// Request flag: the request is a send_receive's message that fell back from a direct
// connection; the header ends with the message's own id (handed to the handler as its id).
inline constexpr std::uint8_t kRpcCarriesId = 4;
inline constexpr std::size_t kRpcHeaderWithIdSize = kRpcHeaderSize + 4;

struct RpcHeader {
  std::uint8_t flags = 0;
  std::uint64_t client = 0;
  std::uint64_t sequence = 0;
  std::uint32_t message_id = 0;  // with kRpcCarriesId only
};

Item EncodeRpcHeader(const RpcHeader& header);
// The header of an RPC message (request, reply or ack); nullopt if it has none.
std::optional<RpcHeader> DecodeRpcHeader(const Message& message);
bool IsRpcMessage(const Message& message);

}  // namespace tern::libtern
