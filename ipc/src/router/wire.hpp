// The agent-to-agent IPC frames (FrameType::kIpcRemote) of PortRouter: one Envelope type with
// a kind, a correlation ticket and the fields the kinds use (docs/ipc.md "Objects and their
// homes"). Internal to tern_ipc.
#pragma once

#include <boost/container/small_vector.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/port_router.hpp>
#include <vector>

#include "train_run.hpp"

namespace tern::ipc::router {

enum class Remote : std::uint8_t {
  // Operations run at an object's home.
  kEnqueue = 1,         // message -> kEnqueueResult (ticket 0: a notification, no result)
  kReceiveWait = 2,     // object=port, a=timeout ms -> kReceiveResult
  kRefDelta = 3,        // object, delta, a=1 region -> kRefDeltaResult when ticket != 0
  kSetHolder = 4,       // object=port, a=1 in transit
  kDestroyPort = 5,     // object=port
  kNotifyRequest = 6,   // object=port, object2=notify port, a=kind, c=name in asker's table
  kPortStatus = 7,      // object=port -> kPortStatusResult a=queued b=limit c=send refs
  kLinkPost = 8,        // object=end, a=1 receive, b=op handle, message for a send (below)
  kLinkCancel = 9,      // object=end, b=op handle -> kLinkCancelResult
  kSetLinkHolder = 10,  // object=end, a=1 in transit
  kBreakLinkEnd = 11,   // object=end
  // object=region, delta=offset -> kRegionFetchResult text=up to 4 MiB from offset,
  // delta=the region's size (the copy is fetched a chunk at a time)
  kRegionFetch = 12,
  kNameQuery = 13,  // text=name -> kNameQueryResult object
  kJobMoved = 14,   // job: it lives on the sending node now (holders, waiters, link ops)
  kEnqueueBatch =
      15,  // batch (a train run), a/b/c/object2 as kEnqueue -> kEnqueueResult a=accepted
  // Link operations direct (docs/ipc.md "Link operations direct"), at the link's home. A
  // kLinkPost of a tagged send (link_send_tagged) has delta=its epoch (never 0), c=its seq.
  // object=the sender's end -> kLinkDirectBeginResult delta=the epoch (kUnavailable, text=why)
  kLinkDirectBegin = 16,
  // object=the receiver's end, delta=epoch, c=matched through, text=the cancelled seqs, each a
  // big-endian u32 -> kLinkSettleResult
  kLinkSettle = 17,
  // Results, sent back to the asking node.
  kEnqueueResult = 64,
  kReceiveResult = 65,
  kRefDeltaResult = 66,
  kNotifyResult = 67,
  kPortStatusResult = 68,
  kLinkCompleted = 69,  // b=op handle, object=end, status, message for a receive
  kLinkCancelResult = 70,
  kRegionFetchResult = 71,
  kNameQueryResult = 72,
  kLinkDirectBeginResult = 73,
  kLinkSettleResult = 74,
};

// kEnqueue's `delta` holds how the home treats the message (flags).
// Always queued, past the queue limit, and never answered when the envelope has no ticket: a
// notification, or a message sent on a send-once right (as in Mach, a send-once message is
// not held to the limit).
constexpr std::int64_t kEnqueueBeyondLimit = 1;
// The sender waits for a receive after this send (send_receive), so an "ok" may wait, at most
// kLazyResultMs, for the next frame the home sends to the sender's node, and go in its write.
constexpr std::int64_t kEnqueueLazyResult = 2;
constexpr std::uint32_t kLazyResultMs = 1;

struct TransitRight {
  RightType type = RightType::kNone;
  ObjectId id;
};

// A data item is a view into a shared buffer that `owner` keeps alive: the item's own string,
// or a whole train (a job's kSendBatch request, a peer's envelope), so that a train's messages
// cost no allocation each. A queue is taken from its front, so at most the trains at its two
// ends keep bytes that were already taken.
struct TransitItem {
  ItemKind kind = ItemKind::kBytes;
  std::shared_ptr<const std::string> owner;
  std::string_view bytes;
  TransitRight right;

  // A data item that is all of `data`.
  static TransitItem Data(ItemKind kind, std::shared_ptr<const std::string> data);
  // A job's item as it travels: its data stay in the item's buffer (rights are filled in by
  // the caller).
  static TransitItem Of(const Item& item);
};

struct TransitMessage {
  ObjectId destination;
  TransitRight reply;
  std::uint32_t id = 0;
  // Nearly every message has one item: kept inline, without an allocation.
  boost::container::small_vector<TransitItem, 1> items;
};

struct Envelope {
  Remote kind = Remote::kEnqueue;
  std::uint64_t ticket = 0;
  std::uint64_t origin = 0;  // the node that asked (results go there)
  std::string job;           // the job on `origin` the operation is for
  ObjectId object;
  ObjectId object2;
  std::uint32_t a = 0, b = 0, c = 0;
  std::int64_t delta = 0;
  JobStatus status = JobStatus::kOk;
  std::string text;
  std::optional<TransitMessage> message;
  TrainRun batch;  // kEnqueueBatch: data-only messages to `object`, in order
};

// An object id as two big-endian u64 (home, serial); shared with the job hand-off state.
void WriteId(WireWriter& w, ObjectId id);
std::optional<ObjectId> ReadId(WireReader& r);

std::string EncodeEnvelope(const Envelope& envelope);
// The message an envelope carries keeps `payload`: its data items are views into it.
std::optional<Envelope> DecodeEnvelope(std::shared_ptr<const std::string> payload);

}  // namespace tern::ipc::router
