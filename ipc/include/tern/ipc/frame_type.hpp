// Frame types of the node-to-node transport (and, later, the job-to-agent channel).
//
// Wire: [u32 length, big-endian][u16 type, big-endian][payload of `length` bytes].
// `length` counts the payload only. Control payloads are JSON objects (see docs/wire.md);
// numbers here are part of the wire format: never renumber, only append.
#pragma once

#include <cstdint>
#include <string_view>

namespace tern::ipc {

enum class FrameType : std::uint16_t {
  // Handshake (see peer_handshake.hpp).
  kHello = 1,         // {"node","node_id","address","api_address","nonce"}
  kAuthProof = 2,     // {"proof"}: HMAC-SHA256 over both nonces and both ids, hex
  kAuthAccepted = 3,  // {}
  kAuthRefused = 4,   // {"reason"}
  // Cluster control.
  kHeartbeat = 10,    // obsolete (before gossip): {"load":[...], "members":[...]}; ignored
  kApiRequest = 11,   // [u32 json length][json {"id","method","target","uid","gid","pid"}][body]
  kApiResponse = 12,  // [u32 json length][json {"id","status","headers":{...}}][body]
  kGossip = 13,       // {"entries":[{"load":{...},"age_ms":N,"dead":false}...]} (balancer/gossip)
  kLinkIdle = 14,     // {"step":"ask"|"yes"|"no"}: closing an idle link without losing a frame
  // Job-to-agent IPC channel (job_wire.hpp).
  kIpcRequest = 20,  // [u32 request id][u16 op][body]
  kIpcReply = 21,    // [u32 request id][u16 status][body]
  // Re-attaching a job's channel (job_attach.hpp, docs/wire.md "The job channel").
  kIpcHello = 22,     // agent -> job, on every new channel: [bytes job][bytes secret][bytes path]
  kIpcAttach = 23,    // job -> agent's job socket: [u8 version][bytes job][bytes secret]
  kIpcAttached = 24,  // agent -> job: [u8 outcome][bytes why]; ok carries the new channel's fd
  // Agent-to-agent IPC (ipc/port_router.hpp): an operation on an object homed at the
  // receiver, or its result.
  kIpcRemote = 30,
  // One chunk of an IpcRemote payload too large for one frame (out-of-line data), sent as a
  // blast: [u64 blast id][u32 index][u32 count][bytes], at most 8 chunks unacknowledged.
  kIpcBlast = 31,
  kIpcBlastAck = 32,  // [u64 blast id][u32 index]: the receiver took that chunk
  // Setting up a direct call connection between two jobs (docs/ipc.md "Direct calls"):
  // [u8 kind: 1 ask, 2 grant, 3 refuse][...].
  kIpcDirect = 33,
  // An IpcRemote payload with a trailer [u64 epoch][u64 seq] (peer_sequence.hpp, docs/ipc.md
  // "Sends that wait for their home"): held while its node cannot be reached, sent again when
  // the link is back, and run once. A blast's reassembled payload carries the same trailer.
  kIpcSequenced = 34,
  kIpcSequenceAck = 35,  // [u64 epoch][u64 seq]: all up to seq handled and journalled
  // On a direct call connection, job to job (never on an agent's link).
  kDirectCall = 40,    // client -> server: a request or an acknowledgement
  kDirectAnswer = 41,  // server -> client: the reply, or "call again through the agents"
};

// A stable, human-readable name for logs ("Hello", "Heartbeat", ...); "Unknown" for a number
// this build does not know (an unknown type is not an error: newer peers may send it).
std::string_view FrameTypeName(FrameType type);

}  // namespace tern::ipc
