// The secret a job proves itself with when it re-attaches its IPC channel (docs/ipc.md "A
// channel the job reconnects"), derived on the agent's side only: libtern never needs it
// computed, and does not link OpenSSL.
//
// Thread-safety: a free function on values.
#pragma once

#include <string>
#include <string_view>

namespace tern::ipc {

// The job's secret: HMAC-SHA256 of its id under the cluster secret (`cluster_key`), so that the
// node a job moved to knows the secret the job learnt on the node it came from, even when it
// was killed before it could say its own hello (a move's destination restarted after the
// commit). A job learns only its own; the cluster secret does not follow from it. kJobSecretSize
// bytes; empty when `cluster_key` is empty (then the caller draws a random one).
std::string JobSecret(std::string_view cluster_key, std::string_view job);

}  // namespace tern::ipc
