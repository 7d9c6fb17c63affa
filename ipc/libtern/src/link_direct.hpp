// Link operations direct (docs/ipc.md "Link operations direct", issue 20 item 4): a link's
// offers go over a connection from the sender's job to the receiver's, and the receiver's
// libtern decides their matches, while the link's home decides for everything through the
// agents. The home's mode per direction (home, or direct with an epoch) keeps the two from ever
// deciding the same offer: the sender begins a direct epoch only when nothing of that direction
// waits at the home, the home then holds whatever reaches it for that direction, and the
// receiver's settle (what it matched in the epoch) turns the direction back to the home.
//
// Every link_send / link_receive of a channel goes through here and returns a libtern handle
// (top bit set) that stands for the operation wherever it is: waiting in the agents (an agent
// handle), on a connection (an offer's sequence, or a receive in the receiver's queue), or
// done. wait, poll and cancel on such a handle follow it; other handles go to the agent as
// before. `TERN_IPC_DIRECT_LINKS=0` in a job's environment keeps every link operation on the
// agents, with the agent's handles.
//
// The sender (per end it sends on): plain (its sends go through the agents) until it has a
// connection (direct_open on the end) and the home's begin (an epoch), and only while none of
// its sends on the end wait in the agents. Direct: each send is an Offer(seq) on the connection,
// at most kWindowOffers / kWindowBytes of them unanswered (later ones wait in this process, still
// numbered, and go out as answers come); Matched(seq) completes it, Cancel(seq) asks the
// receiver to drop it. A break (end of file, an error, revocation by the agents on a move or
// when the end leaves the job) sends every unanswered offer again through the agents, tagged
// (epoch, seq): the home holds them until the receiver's settle says which it took.
//
// The receiver (per end it receives on, never for receive-on-any): registers as accepting
// (direct_accept, no wait) at its first receive; a receive posted at the home that comes back
// "direct now" (the home's kick, message id ipc::kLinkDirectNowId with the epoch) makes it take
// the connection, read its Hello(epoch) and queue the receive here instead. Offers that arrive
// go to the oldest waiting receive; its Matched(seq) is owed until this job's next offer on the
// end carries it (MatchedBack, in the same write), or this job's thread waits, or 64 are owed,
// or the keeper's next turn, or the channel closes (or the process exits); those
// no receive waits for stay queued (at most kInboxOffers / kInboxBytes; past that the socket is
// left unread and the sender waits). At a break it settles the epoch (matched through N, the
// cancelled seqs), drops the offers it had not matched (the sender offers them again) and posts
// its queued receives at the home again.
//
// A keeper thread (started with the first direct link) looks at every link connection each
// 10 ms: it reads answers and offers, and carries out a break for a process that makes no
// link call meanwhile (a moved receiver must settle for its sender's offers to go on).
//
// Thread-safety: all functions may be called from any thread; one mutex per channel guards its
// link state, never held while a thread waits for an answer or a frame.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <tern/ipc.hpp>

#include "channel_impl.hpp"

namespace tern::libtern {

inline constexpr OpHandle kLinkHandleBit = 0x80000000u;
inline bool IsLinkHandle(OpHandle handle) { return (handle & kLinkHandleBit) != 0; }

// Whether link operations go through here (TERN_IPC_DIRECT_LINKS is not "0").
bool DirectLinksOn();

IpcResult<OpHandle> LinkSend(const std::shared_ptr<Channel::Impl>& impl, std::uint32_t end,
                             const Message& message);
IpcResult<OpHandle> LinkReceive(const std::shared_ptr<Channel::Impl>& impl, std::uint32_t end);
IpcResult<OpResult> LinkWait(const std::shared_ptr<Channel::Impl>& impl, OpHandle handle,
                             Timeout timeout);
IpcResult<std::optional<OpResult>> LinkPoll(const std::shared_ptr<Channel::Impl>& impl,
                                            OpHandle handle);
IpcResult<void> LinkCancel(const std::shared_ptr<Channel::Impl>& impl, OpHandle handle);

// The agent's own operations, as before direct links (the caller's handles are the agent's).
IpcResult<OpHandle> AgentLinkSend(Channel::Impl& impl, std::uint32_t end, const Message& message);
IpcResult<OpHandle> AgentLinkReceive(Channel::Impl& impl, std::uint32_t end);
IpcResult<OpResult> AgentWait(Channel::Impl& impl, OpHandle handle, Timeout timeout);
IpcResult<std::optional<OpResult>> AgentPoll(Channel::Impl& impl, OpHandle handle);
IpcResult<void> AgentCancel(Channel::Impl& impl, OpHandle handle);

// Before the link end `name` leaves the job (in a message, or deallocated): its connections are
// ended here first (the sender's unanswered offers go through the agents, the receiver
// settles), while the job still holds the end.
extern std::atomic<bool> direct_links_made;
void LinkEndLeavesSlow(Channel::Impl& impl, std::uint32_t name);
inline void LinkEndLeaves(Channel::Impl& impl, std::uint32_t name) {
  if (direct_links_made.load(std::memory_order_relaxed)) LinkEndLeavesSlow(impl, name);
}
inline void LinkEndsLeaveIn(Channel::Impl& impl, const Message& message) {
  if (!direct_links_made.load(std::memory_order_relaxed)) return;
  for (const Item& item : message.items) {
    if (item.kind == ItemKind::kLinkEnd ||
        (item.kind == ItemKind::kPort && item.disposition == Disposition::kMoveLinkEnd)) {
      LinkEndLeavesSlow(impl, item.name);
    }
  }
}

// The channel closes: what its link receivers owe their senders (matches not yet told) is
// written now, without waiting and without the agent.
void LinkChannelCloses(Channel::Impl& impl);

// Link offers this process's receivers matched on a connection (tests, benchmarks).
std::uint64_t DirectLinkMatches();

}  // namespace tern::libtern
