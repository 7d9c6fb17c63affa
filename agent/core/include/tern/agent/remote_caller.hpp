// CheckForwardedCaller: what a request another agent forwarded may do here, as the uid it
// carries (docs/security.md "Forwarded requests").
//
// Contract: the uid of a forwarded call is believed because it arrived over a peer link, and a
// peer link is established only with a node of the cluster's CA, named as it claims, that
// knows the cluster secret (PeerTransport). Root on another node is not root here unless
// `allow_remote_root`: a user's request (it entered the cluster through an agent's API, `via`
// "unix" or "tcp ...") for uid 0 is refused for everything but reads, and reads are answered as
// to an anonymous caller (identified = false, as the read-only TCP API). Calls the agents make
// for themselves (the balancer's moves, `/v1/migrations/...` between a migration's source and
// destination: the move was authorized where the job lives) pass.
//
// Thread-safety: a pure function.
#pragma once

#include <string>
#include <tern/agent/api_call.hpp>
#include <tern/expected.hpp>

namespace tern::agent {

// `origin_via` is the caller's `via` as the sending agent gave it (before this node replaced it
// with "peer NODE"); `call` may be changed (a read demoted to anonymous). Fails with the message
// to answer (403), e.g. "remote root is off on node3: ...".
Expected<void> CheckForwardedCaller(ApiCall& call, const std::string& origin_via,
                                    bool allow_remote_root, const std::string& this_node);

}  // namespace tern::agent
