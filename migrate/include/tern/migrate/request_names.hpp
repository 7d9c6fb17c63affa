// RequestNames: the names NameOf (protocol_messages.hpp) gives the requests one agent sends
// another about a move ("PrepareRequest", ..., "IpcStateQuery"), in migrate::Request's order.
// The fault hook's "lose" names a kind of request by them.
//
// Thread-safety: a constant table; safe from any thread.
#pragma once

#include <span>
#include <string_view>

namespace tern::migrate {

std::span<const std::string_view> RequestNames();

}  // namespace tern::migrate
