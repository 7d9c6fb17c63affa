#include "tern/ipc/direct_wire.hpp"

#include <tern/ipc/job_wire.hpp>

namespace tern::ipc {
namespace {

enum class Kind : std::uint8_t { kAsk = 1, kGrant = 2, kRefuse = 3 };

// A refusal's reason is one log line; more is a broken peer.
constexpr std::size_t kMaxWhy = 4096;

}  // namespace

std::string EncodeDirectFrame(const DirectFrame& frame) {
  WireWriter out;
  if (const auto* ask = std::get_if<DirectAsk>(&frame)) {
    out.U8(static_cast<std::uint8_t>(Kind::kAsk));
    out.U64(ask->ask);
    out.U64(ask->origin);
    out.U64(ask->port.home);
    out.U64(ask->port.serial);
  } else if (const auto* grant = std::get_if<DirectGrant>(&frame)) {
    out.U8(static_cast<std::uint8_t>(Kind::kGrant));
    out.U64(grant->ask);
    out.U16(grant->tcp_port);
    out.out().append(reinterpret_cast<const char*>(grant->token.data()), grant->token.size());
  } else {
    const auto& refuse = std::get<DirectRefuse>(frame);
    out.U8(static_cast<std::uint8_t>(Kind::kRefuse));
    out.U64(refuse.ask);
    out.Bytes(std::string_view(refuse.why).substr(0, kMaxWhy));
  }
  return out.Take();
}

Expected<DirectFrame> ParseDirectFrame(std::string_view payload) {
  WireReader in(payload);
  const auto kind = in.U8();
  const auto ask = in.U64();
  if (!ask) return Fail("malformed IpcDirect frame: cut short");
  DirectFrame frame;
  switch (static_cast<Kind>(*kind)) {
    case Kind::kAsk: {
      const auto origin = in.U64();
      const auto home = in.U64();
      const auto serial = in.U64();
      if (!serial) return Fail("malformed IpcDirect ask: cut short");
      if (*serial == 0) return Fail("malformed IpcDirect ask: no port");
      frame = DirectAsk{*ask, *origin, ObjectId{*home, *serial}};
      break;
    }
    case Kind::kGrant: {
      DirectGrant grant{*ask, 0, {}};
      const auto port = in.U16();
      if (!port || in.remaining() < grant.token.size()) {
        return Fail("malformed IpcDirect grant: cut short");
      }
      grant.tcp_port = *port;
      const std::string_view token = in.rest().substr(0, grant.token.size());
      std::copy(token.begin(), token.end(), reinterpret_cast<char*>(grant.token.data()));
      in = WireReader(in.rest().substr(grant.token.size()));
      frame = grant;
      break;
    }
    case Kind::kRefuse: {
      auto why = in.Bytes();
      if (!why) return Fail("malformed IpcDirect refusal: cut short");
      if (why->size() > kMaxWhy) return Fail("malformed IpcDirect refusal: reason too long");
      frame = DirectRefuse{*ask, std::move(*why)};
      break;
    }
    default:
      return Fail("malformed IpcDirect frame: unknown kind " + std::to_string(*kind));
  }
  if (!in.AtEnd()) return Fail("malformed IpcDirect frame: bytes after its end");
  return frame;
}

}  // namespace tern::ipc
