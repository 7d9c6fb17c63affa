// The pure parts of a post-copy migration's lazy-page relay (LazyPageProxy): how the bytes of
// CRIU's page-server connection are framed inside the relays' TLS connection, and who may be at
// its other end.
//
// Each direction is a sequence of chunks `[u32 big-endian length][length bytes]` of 1 to
// kMaxRelayChunk bytes. A chunk of length 0 says that this direction ended (CRIU closed or shut
// down its socket): the receiver shuts down writing to its own CRIU socket, which CRIU reads as
// end of file, while the other direction goes on. TLS itself cannot say that: Asio's
// ssl::stream shuts a session down in both directions at once.
//
// Thread-safety: functions only; reentrant.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <tern/expected.hpp>

namespace tern::agent {

// The largest chunk either end sends or accepts: each direction holds one chunk at a time, so
// this is the relay's buffer per direction.
inline constexpr std::uint32_t kMaxRelayChunk = 64 * 1024;

std::array<std::uint8_t, 4> EncodeRelayHeader(std::uint32_t length);

// The chunk length a header announces (0: the direction ended); a length over kMaxRelayChunk is
// an error (the peer is not speaking this framing).
Expected<std::uint32_t> DecodeRelayHeader(std::span<const std::uint8_t, 4> header);

// Whether the verified certificate name of the agent at the other end of a migration's relay
// (ipc::PeerCertificateName; "" when none was verified) is the migration's peer node `expected`.
// The error says why not, for the log.
Expected<void> CheckRelayPeer(std::string_view certificate_name, std::string_view expected);

}  // namespace tern::agent
