// The IpcDirect frame (FrameType::kIpcDirect, 33) between agents, which sets up a direct call
// connection between two jobs (docs/ipc.md "Direct calls", "Between the agents"):
//   [u8 kind][...], integers big-endian;
//   kind 1, ask:    [u64 ask id][u64 origin node][u64 port home][u64 port serial]
//   kind 2, grant:  [u64 ask id][u16 tcp port][16-byte token]
//   kind 3, refuse: [u64 ask id][u32 length][why]
// Kind numbers are wire format: never renumber, only append.
//
// Thread-safety: plain values and pure functions.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <tern/ipc/port_router.hpp>
#include <variant>

namespace tern::ipc {

using DirectToken = std::array<std::uint8_t, 16>;

struct DirectAsk {
  std::uint64_t ask = 0;
  std::uint64_t origin = 0;  // the client's node: grants and refusals go there
  ObjectId port;
  bool operator==(const DirectAsk&) const = default;
};
struct DirectGrant {
  std::uint64_t ask = 0;
  std::uint16_t tcp_port = 0;  // on the granting node's address
  DirectToken token{};
  bool operator==(const DirectGrant&) const = default;
};
struct DirectRefuse {
  std::uint64_t ask = 0;
  std::string why;
  bool operator==(const DirectRefuse&) const = default;
};
using DirectFrame = std::variant<DirectAsk, DirectGrant, DirectRefuse>;

// The frame's payload (without the frame header).
std::string EncodeDirectFrame(const DirectFrame& frame);
// Fails on an unknown kind, a payload cut short or with bytes left over, a refusal whose
// reason is over 4 KiB, and an ask for an invalid port (serial 0).
Expected<DirectFrame> ParseDirectFrame(std::string_view payload);

}  // namespace tern::ipc
