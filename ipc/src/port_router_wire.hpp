// The agent-to-agent IPC frames (FrameType::kIpcRemote) of PortRouter: one Envelope type with
// a kind, a correlation ticket and the fields the kinds use (docs/ipc.md "Objects and their
// homes"). Internal to tern_ipc.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/port_router.hpp>
#include <vector>

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
  kLinkPost = 8,        // object=end, a=1 receive, b=op handle, message for a send
  kLinkCancel = 9,      // object=end, b=op handle -> kLinkCancelResult
  kSetLinkHolder = 10,  // object=end, a=1 in transit
  kBreakLinkEnd = 11,   // object=end
  kRegionFetch = 12,    // object=region -> kRegionFetchResult text=bytes
  kNameQuery = 13,      // text=name -> kNameQueryResult object
  kJobMoved = 14,       // job: it lives on the sending node now (holders, waiters, link ops)
  kEnqueueBatch = 15,   // batch, a/b/c/object2 as kEnqueue -> kEnqueueResult a=accepted
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
};

struct TransitRight {
  RightType type = RightType::kNone;
  ObjectId id;
};

struct TransitItem {
  ItemKind kind = ItemKind::kBytes;
  std::shared_ptr<const std::string> data;
  TransitRight right;
};

struct TransitMessage {
  ObjectId destination;
  TransitRight reply;
  std::uint32_t id = 0;
  std::vector<TransitItem> items;
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
  std::vector<TransitMessage> batch;  // kEnqueueBatch: data-only messages to `object`, in order
};

// An object id as two big-endian u64 (home, serial); shared with the job hand-off state.
void WriteId(WireWriter& w, ObjectId id);
std::optional<ObjectId> ReadId(WireReader& r);

std::string EncodeEnvelope(const Envelope& envelope);
std::optional<Envelope> DecodeEnvelope(std::string_view payload);

}  // namespace tern::ipc::router
