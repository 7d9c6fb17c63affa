// SendAll: writes pieces of bytes to a stream socket, in order and whole, with gathered
// sendmsg calls; the channel to the agent and direct call connections both write this way.
//
// Thread-safety: a pure function; the caller keeps other writers off the socket meanwhile.
#pragma once

#include <span>
#include <string_view>

namespace tern::libtern {

// 0 once every byte of `pieces` is written; otherwise the errno that stopped it (EINTR is
// retried). MSG_NOSIGNAL: a closed peer is an error to report, not a SIGPIPE to die of.
int SendAll(int fd, std::span<const std::string_view> pieces);

}  // namespace tern::libtern
