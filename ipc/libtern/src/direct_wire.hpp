// The frames of a direct connection between two jobs (docs/ipc.md "Direct calls", "On the
// connection"): DirectCall (client to server) and DirectAnswer (server to client), integers
// big-endian, items as [u8 kind: bytes 1 / out-of-line 3][u32 length][data].
//
//   DirectCall   [u8 kind: 1 request, 2 ack][u64 client][u64 sequence][u32 count][items]
//                kind 3, a send_receive's message: [u8 3][u64 client][u64 sequence]
//                [u32 message id][u32 count][items]
//   DirectAnswer [u8 outcome][u8 rpc flags][u64 client][u64 sequence][u32 count][items]
//
// Encoding writes a whole frame (its header too) into a data-sharing WireWriter: large items
// are listed in shared(), not copied, and libtern::Pieces puts them in place for one writev.
// Decoding takes a frame's payload as the owner of the items it returns (views, no copies).
// Anything malformed (short, trailing bytes, an item that is not data, an unknown kind or
// outcome) is an error: the connection is then broken.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <tern/expected.hpp>
#include <tern/ipc.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/job_wire.hpp>
#include <vector>

namespace tern::libtern {

enum class DirectCallKind : std::uint8_t {
  kRequest = 1,
  kAck = 2,
  kMessage = 3,  // a send_receive: a request with the sender's message id (docs/ipc.md)
};
enum class DirectOutcome : std::uint8_t {
  kReply = 0,
  kCallThroughAgents = 1,  // the reply holds rights: the server keeps it for the agent path
};

struct DirectCall {
  DirectCallKind kind = DirectCallKind::kRequest;
  std::uint64_t client = 0;
  std::uint64_t sequence = 0;
  std::uint32_t message_id = 0;  // kMessage only
  std::vector<Item> items;
};

struct DirectAnswer {
  DirectOutcome outcome = DirectOutcome::kReply;
  std::uint8_t flags = 0;  // kRpcAckWanted, kRpcHandlerFailed
  std::uint64_t client = 0;
  std::uint64_t sequence = 0;
  std::vector<Item> items;
};

// Whether every item is data (bytes, out-of-line): only those travel on a direct connection.
bool IsDataOnly(std::span<const Item> items);

// The pieces of a frame that ends in data items, for the other direct frames (link_wire.hpp):
// the size of `items` as [u32 count][items] writes them less the count; the frame header of a
// payload of `fixed` bytes and then those items; the items ([u32 count][items]); and the items
// read back (views into `payload`; anything but data, or bytes after them, is an error).
std::size_t DataItemsSize(std::span<const Item> items);
void WriteDataFrameHeader(ipc::WireWriter& out, ipc::FrameType type, std::size_t fixed,
                          std::span<const Item> items);
void WriteDataItems(ipc::WireWriter& out, std::span<const Item> items);
Expected<std::vector<Item>> ReadDataItems(ipc::WireReader& reader,
                                          const std::shared_ptr<const std::string>& payload);

// Appends the whole frame to `out` (a data-sharing writer, empty or holding earlier frames).
// `items` must be data only; `message_id` is written for kMessage only.
void WriteDirectCall(ipc::WireWriter& out, DirectCallKind kind, std::uint64_t client,
                     std::uint64_t sequence, std::span<const Item> items,
                     std::uint32_t message_id = 0);
void WriteDirectAnswer(ipc::WireWriter& out, DirectOutcome outcome, std::uint8_t flags,
                       std::uint64_t client, std::uint64_t sequence, std::span<const Item> items);

// `payload` is a frame's payload of the matching type.
Expected<DirectCall> ParseDirectCall(std::shared_ptr<const std::string> payload);
Expected<DirectAnswer> ParseDirectAnswer(std::shared_ptr<const std::string> payload);

}  // namespace tern::libtern
