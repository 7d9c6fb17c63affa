// ApiCall / ApiResult: one request to the agent API and its answer, independent of where it
// came from — the HTTP server (Unix socket or TCP) or a peer agent forwarding a user's request
// over the authenticated cluster link. The same handler code serves all three, so a request
// forwarded to the node that holds a job is answered exactly as if it had been made there.
//
// Peer encoding (frames kApiRequest / kApiResponse, docs/wire.md):
//   [u32 big-endian json length][json header][raw body]
//
// Thread-safety: plain values; the codec functions are pure.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <tern/expected.hpp>
#include <utility>
#include <vector>

namespace tern::agent {

struct ApiCaller {
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  pid_t pid = 0;
  // False for the dashboard's TCP API: read-only, and no identity.
  bool identified = false;
  std::string via;  // "unix", "tcp 10.0.0.1:5555", "peer node2"
};

struct ApiCall {
  std::string method;
  std::string target;  // path and query, e.g. "/v1/jobs?local=1"
  std::string body;
  ApiCaller caller;
  // Set when another agent sent the call: it is answered from local state only, never
  // forwarded again (no loops, one hop).
  bool forwarded = false;
};

struct ApiResult {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;

  std::string Header(const std::string& name) const;
};

using ApiDone = std::function<void(ApiResult)>;

ApiResult JsonResult(unsigned status, const std::string& json_text);
ApiResult ErrorResult(unsigned status, const std::string& message);
// The "error" field of a JSON error body, or the body itself when it is not one.
std::string ErrorMessageOf(const ApiResult& result);

std::string EncodeApiRequest(std::uint64_t request_id, const ApiCall& call);
Expected<std::pair<std::uint64_t, ApiCall>> DecodeApiRequest(const std::string& payload);
std::string EncodeApiResponse(std::uint64_t request_id, const ApiResult& result);
Expected<std::pair<std::uint64_t, ApiResult>> DecodeApiResponse(const std::string& payload);

}  // namespace tern::agent
