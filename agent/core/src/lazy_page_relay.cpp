#include "lazy_page_relay.hpp"

namespace tern::agent {

std::array<std::uint8_t, 4> EncodeRelayHeader(std::uint32_t length) {
  return {static_cast<std::uint8_t>(length >> 24), static_cast<std::uint8_t>(length >> 16),
          static_cast<std::uint8_t>(length >> 8), static_cast<std::uint8_t>(length)};
}

Expected<std::uint32_t> DecodeRelayHeader(std::span<const std::uint8_t, 4> header) {
  const std::uint32_t length = std::uint32_t{header[0]} << 24 | std::uint32_t{header[1]} << 16 |
                               std::uint32_t{header[2]} << 8 | std::uint32_t{header[3]};
  if (length > kMaxRelayChunk) {
    return Fail("a relay chunk of " + std::to_string(length) + " bytes (at most " +
                std::to_string(kMaxRelayChunk) + ")");
  }
  return length;
}

Expected<void> CheckRelayPeer(std::string_view certificate_name, std::string_view expected) {
  if (certificate_name.empty()) return Fail("it has no certificate the cluster CA signed");
  if (expected.empty() || certificate_name != expected) {
    return Fail("its certificate is for " + std::string(certificate_name) +
                ", not for the migration's peer " + std::string(expected));
  }
  return {};
}

}  // namespace tern::agent
