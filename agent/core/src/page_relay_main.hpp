// `ternd page-relay`: one post-copy migration's lazy-page stream, carried between the two nodes
// inside mutual TLS by a process of its own, so that it outlives the agent that started it.
//
// Why a process: CRIU's two ends (`criu dump --lazy-pages`, `criu lazy-pages`) keep serving and
// fetching a moved job's memory after the commit, and they are not in the agent's kill scope. A
// relay inside the agent was: an agent killed after the commit cut the stream and lost the job.
// This process is started by the agent (PageRelayProcess) and is not killed when the agent dies;
// a restarted agent does not know it and leaves it alone.
//
// Contract (the command line is the agent's and this process's only interface):
//   ternd page-relay serve --criu-fd N --listen-fd L --peer NODE --ca F --cert F --key F
//                          [--migration ID] [--accept-patience-ms MS] [--idle-timeout-s S]
//   ternd page-relay dial  --criu-fd N --connect HOST:PORT --peer NODE --ca F --cert F --key F
//                          [--status-fd S] [--migration ID] [--idle-timeout-s S]
//  - fd N is a connected socket to CRIU's --ps-socket end; fd L (serve) a listening TCP socket
//    the agent bound (so the agent knows the port before this process runs).
//  - Only a peer whose certificate the CA signed and names NODE gets in (LazyPageProxy).
//  - dial writes one byte to fd S once the peer is in; if it cannot get in, it exits non-zero
//    and S reads end of file.
//  - Exits 0 when both directions of the stream have ended, non-zero on any error, on no peer
//    within the accept patience (serve), and after the idle timeout without a byte either way.
//  - SIGTERM/SIGINT end it at once (its CRIU end then reads end of file). It calls setsid():
//    signals to the agent's session or process group do not reach it.
#pragma once

namespace tern::agent {

// argv[0] is "page-relay". Returns the process's exit code.
int RunPageRelay(int argc, char** argv);

}  // namespace tern::agent
