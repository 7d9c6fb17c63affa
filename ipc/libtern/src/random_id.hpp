// Ids that keep apart the RPC clients and stream writers of every job on every node: a
// receiver keeps its duplicate table (RpcServer) or its order table (PortReader) by them, across
// everyone who sends to its port.
//
// Thread-safety: may be called from any thread.
#pragma once

#include <cstdint>

namespace tern::libtern {

// Random bits keep ids of different jobs apart; the pid and a counter keep this process's apart
// even if std::random_device were weak. Never 0.
std::uint64_t NewRandomId();

}  // namespace tern::libtern
