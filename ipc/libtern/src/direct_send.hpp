// Plain sends direct (docs/ipc.md "Plain sends direct", issue 20 item 1): Channel::send of a
// data-only message (bytes and out-of-line items, a copied send right, no reply right, a full
// queue failing or waiting) to a port whose receiver reads it with a PortReader goes over a
// connection between the two jobs, as a PortWriter's stream does: one DirectStream frame per
// message, written before send() returns.
//
// One stream per (channel, send name) in the process, shared by its threads, so the order of a
// name's messages is the process's (at least the per-thread order a sender relies on):
//  - Until a connection is welcomed its messages go through the agents unchanged (the caller's
//    own send). The first one posts a direct_open; later sends take its answer and then the
//    reader's welcome without waiting for either.
//  - Welcomed: a sync through the agents (kWait), then every eligible message numbered on the
//    connection, at most the port's queue limit ahead of what the reader has handed out. A full
//    window refuses a kFail send with queue_full and holds a kWait send up to its timeout (then
//    timed_out), as the port's queue does.
//  - A broken connection (revoked, either job moving, the reader gone, the agent restarted):
//    the frames the reader has not acknowledged go again through the agents, numbered, before
//    anything newer; a later send asks for a new connection. The sending thread may never send
//    again, so a keeper thread (started with the first stream) looks every 10 ms at each stream
//    with frames not yet received and does this for it; at exit the process waits up to 5 s for
//    its readers to have every frame.
//  - Once welcomed the stream is numbered for good: a send to the name that cannot go on the
//    connection (it carries rights or a reply right, kNotify; the connection broke and no new one
//    is welcomed yet) goes through the agents with the stream header, so the reader orders it
//    among the direct ones. A refused one gives its number back.
//  - A message to the name through the agents by another way (send_many, send_receive, a
//    PortWriter's trains: no number): what the reader may not have goes again through the
//    agents first, and the stream starts over as a new writer (plain until welcomed), so that
//    nothing sent direct later overtakes it. When the right itself leaves the job (deallocated,
//    moved in a message) the same, and the stream is forgotten.
//
// Thread-safety: all functions may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <tern/ipc.hpp>

#include "channel_impl.hpp"

namespace tern::libtern {

// nullopt: `message` goes through the agents (the caller sends it as before, after
// BeforeAgentSend). Otherwise the outcome of its direct send.
// Every Channel::send comes here first: a message of a name whose stream is numbered goes
// numbered (on the connection if it can, through the agents if not), whatever it carries.
std::optional<IpcResult<void>> SendDirect(const std::shared_ptr<Channel::Impl>& impl,
                                          const Message& message, FullPolicy policy,
                                          Timeout timeout, std::uint32_t notify_port);

// Whether the process ever made a direct-send stream: the hooks below cost one load until then.
extern std::atomic<bool> direct_sends_made;
void BeforeAgentSendSlow(Channel::Impl& impl, std::uint32_t name);
void RightLeavesSlow(Channel::Impl& impl, std::uint32_t name);

// Before a message to `name` goes through the agents (see above).
inline void BeforeAgentSend(Channel::Impl& impl, std::uint32_t name) {
  if (direct_sends_made.load(std::memory_order_relaxed)) BeforeAgentSendSlow(impl, name);
}
// Before the send right `name` leaves the job: what was sent direct on it is received first.
inline void RightLeaves(Channel::Impl& impl, std::uint32_t name) {
  if (direct_sends_made.load(std::memory_order_relaxed)) RightLeavesSlow(impl, name);
}

// Before `message` goes through the agents: its destination's stream, and those of the send
// rights it moves out of the job (the destination's, with kMoveSend; its port items').
inline void BeforeAgentSendOf(Channel::Impl& impl, const Message& message) {
  if (!direct_sends_made.load(std::memory_order_relaxed)) return;
  if (message.destination_disposition == Disposition::kMoveSend) {
    RightLeavesSlow(impl, message.destination);
  } else {
    BeforeAgentSendSlow(impl, message.destination);
  }
  for (const Item& item : message.items) {
    if (item.kind == ItemKind::kPort && item.disposition == Disposition::kMoveSend) {
      RightLeavesSlow(impl, item.name);
    }
  }
}

// The messages this process sent direct and its readers received (tests, benchmarks).
std::uint64_t DirectSendsReceived();

}  // namespace tern::libtern
