// The migration protocol's messages between a source agent (S) and a destination agent (D), as
// typed values. They travel as forwarded API calls (docs/wire.md "API forwarding"): a request is
// an HTTP method, a target under /v1/migrations and a body; its reply is the call's answer
// (status and body). protocol_codec.hpp turns them into those bytes and back; nothing else
// should build or parse a migration body.
//
//   S -> D  PrepareRequest   POST /v1/migrations/prepare        -> PrepareReply
//   S -> D  RestoreRequest   POST /v1/migrations/MID/restore    -> RestoreReply
//   S -> D  CommitRequest    POST /v1/migrations/MID/commit     -> CommitReply
//   S -> D  AbortRequest     POST /v1/migrations/MID/abort      -> AbortReply
//   D -> S  OutcomeQuery     GET  /v1/migrations/MID            -> OutcomeReply
//   D -> S  IpcStateQuery    GET  /v1/migrations/MID/ipc-state  -> IpcStateReply
//
// Every message names its migration (`id`, "JOB-xxxxxxxx"); a reply carries the id of the
// request it answers (on the wire the call says it, not the reply's body).
//
// Thread-safety: plain values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "tern/migrate/preflight.hpp"

namespace tern::migrate {

enum class MoveMode { kPreCopy, kPostCopy };
std::string_view ToString(MoveMode mode);  // "precopy", "postcopy" (as on the wire)

// Compared as values (tests, duplicates); kept here so that preflight.hpp stays as it is.
inline bool operator==(const OutsideFile& a, const OutsideFile& b) {
  return a.path == b.path && a.size == b.size && a.uid == b.uid && a.gid == b.gid &&
         a.mode == b.mode && a.sha256 == b.sha256;
}

struct Endpoint {
  std::string address;
  std::uint16_t port = 0;
  bool operator==(const Endpoint&) const = default;
};

struct PrepareRequest {
  std::string id;
  std::string job;  // the job's persistent record (jobs::PersistentJson), a JSON object's text
  MoveMode mode = MoveMode::kPreCopy;
  bool dry_run = false;
  // The job's IPC channel as dumped ("socket:[INODE]", "" if it moves as it is); absent from an
  // older source, whose destination then starts CRIU at restore.
  std::optional<std::string> channel;
  // The job's same-node direct connections dumped as external ("socket:[INODE]"): the parked
  // `criu restore` gives the job a closed socket for each (migrate::RestoreOptions).
  std::vector<std::string> closed_sockets;
  std::string cpuinfo;  // `criu cpuinfo dump` of the source (hex on the wire)
  std::uint64_t dir_device = 0;
  std::uint64_t dir_inode = 0;
  std::uint64_t rss_bytes = 0;
  std::vector<OutsideFile> outside;
  Endpoint lazy_source;  // post-copy: where the source's relay serves the job's memory
  // Post-copy: how that stream travels ("agents-tls": through `ternd page-relay` processes,
  // inside the nodes' mutual TLS). "" from an older source, whose stream would be in the
  // clear: D refuses it.
  std::string lazy_relay;
  bool operator==(const PrepareRequest&) const = default;
};

struct PrepareReply {
  std::string id;
  unsigned status = 200;      // 200: ready (or, for a dry run, the checks passed)
  std::string error;          // status != 200
  std::string checks = "[]";  // a JSON array's text, shown to the user as it is
  bool shared_dir = false;
  std::optional<Endpoint> page_server;  // pre-copy
  bool operator==(const PrepareReply&) const = default;
};

struct RestoreRequest {
  std::string id;
  std::string images;   // archive (migrate/archive.hpp) of CRIU's images
  std::string job_dir;  // archive of the job directory, "" on a shared file system
  bool operator==(const RestoreRequest&) const = default;
};

struct RestoreReply {
  std::string id;
  unsigned status = 200;  // 200: D holds a restored, stopped copy
  std::string error;
  std::int64_t pid = 0;
  double restore_ms = 0;
  std::uint64_t pages_bytes = 0;
  bool operator==(const RestoreReply&) const = default;
};

struct CommitRequest {
  std::string id;
  std::string stats = "{}";  // the move's figures, a JSON object's text
  std::string ipc_state;     // the job's IPC rights and unread bytes (port_router), maybe ""
  bool operator==(const CommitRequest&) const = default;
};

struct CommitReply {
  std::string id;
  unsigned status = 200;  // 200: the job runs on D; 404: D holds no copy of this move
  std::string error;
  std::string job = "{}";  // the job as D now runs it, a JSON object's text
  bool operator==(const CommitReply&) const = default;
};

struct AbortRequest {
  std::string id;
  bool operator==(const AbortRequest&) const = default;
};

struct AbortReply {
  std::string id;
  unsigned status = 200;
  std::string error;
  bool operator==(const AbortReply&) const = default;
};

// What S decided. kPending (S is still moving the job: wait) is new; an older source answers
// "unknown" for it, and an older destination treats "pending" as no answer (it asks again).
enum class Outcome { kUnknown, kPending, kCommitted, kAborted };
std::string_view ToString(Outcome outcome);

struct OutcomeQuery {
  std::string id;
  bool operator==(const OutcomeQuery&) const = default;
};

struct OutcomeReply {
  std::string id;
  Outcome outcome = Outcome::kUnknown;
  bool operator==(const OutcomeReply&) const = default;
};

struct IpcStateQuery {
  std::string id;
  bool operator==(const IpcStateQuery&) const = default;
};

struct IpcStateReply {
  std::string id;
  unsigned status = 200;  // 404: S kept none (nothing to hand over, or not committed)
  std::string state;
  bool operator==(const IpcStateReply&) const = default;
};

using Request = std::variant<PrepareRequest, RestoreRequest, CommitRequest, AbortRequest,
                             OutcomeQuery, IpcStateQuery>;
using Reply =
    std::variant<PrepareReply, RestoreReply, CommitReply, AbortReply, OutcomeReply, IpcStateReply>;
// What a machine sends or is given: either kind.
using Message = std::variant<PrepareRequest, RestoreRequest, CommitRequest, AbortRequest,
                             OutcomeQuery, IpcStateQuery, PrepareReply, RestoreReply, CommitReply,
                             AbortReply, OutcomeReply, IpcStateReply>;

std::string_view NameOf(const Message& message);  // "PrepareRequest", ... (logs, tests)
const std::string& IdOf(const Message& message);
bool IsRequest(const Message& message);
Message ToMessage(const Request& request);
Message ToMessage(const Reply& reply);

}  // namespace tern::migrate
