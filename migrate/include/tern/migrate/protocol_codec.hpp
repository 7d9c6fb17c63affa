// The one codec of the migration protocol's messages (protocol_messages.hpp): a request to and
// from the method, target and body of a forwarded API call, a reply to and from its status and
// body. The bytes are those the agent's MigrationDriver sent before this codec existed (bodies
// in docs/wire.md "Migration calls"), so either side can switch to it alone.
//
// Decoding takes what a peer sent: every size is bounded (the limits below), every field is
// checked for its type and range, and malformed input is an Error naming the message and the
// field, never an exception or a crash. Unknown JSON fields are ignored (a newer peer may add
// some); a field that an older peer leaves out gets the value that peer meant.
//
// Thread-safety: free functions on values; safe from any thread.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <vector>

#include "tern/migrate/protocol_messages.hpp"

namespace tern::migrate {

// The shape of the agent's migration ids ("JOBID-xxxxxxxx", jobs::IsValidMigrationId): they name
// directories under the state directory, so nothing else passes.
bool IsMigrationId(std::string_view id);

struct CodecLimits {
  static constexpr std::size_t kMaxJsonBody = 1 << 20;  // prepare, its reply, ...
  static constexpr std::size_t kMaxOutsideFiles = 4096;
  static constexpr std::size_t kMaxClosedSockets = 4096;
  static constexpr std::size_t kMaxPath = 4096;
  static constexpr std::size_t kMaxCpuinfo = 256 << 10;    // bytes, before hex
  static constexpr std::size_t kMaxArchive = 48ull << 20;  // each of a restore's two
  static constexpr std::size_t kMaxStats = 64 << 10;
  static constexpr std::size_t kMaxIpcState = 64ull << 20;
};

struct WireCall {
  std::string method;  // "GET" or "POST"
  std::string target;  // "/v1/migrations/..."
  std::string body;
};

struct WireAnswer {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
};

// The prepare body's "outside" list: the agent's driver builds its prepare with it too, so the
// bytes are the codec's before the driver speaks in messages.
nlohmann::json OutsideFilesJson(const std::vector<OutsideFile>& files);

WireCall Encode(const Request& request);
Expected<Request> DecodeRequest(std::string_view method, std::string_view target,
                                std::string_view body);

WireAnswer Encode(const Reply& reply);
// `answered` is the request this answers: it says which reply to expect and its id.
Expected<Reply> DecodeReply(const Request& answered, const WireAnswer& answer);

}  // namespace tern::migrate
