// Fuzz target: what a client or a peer sends the agent's API, up to the point where a handler
// with live state (jobs, migrations, the cluster) takes over. The input is read two ways:
//  - as the bytes of an HTTP/1.1 request on the API socket: Beast's request parser with the
//    body limit HttpServer sets (agent/http/src/server.cpp), then the target through
//    ParseTarget (agent/core/src/target.cpp) as AgentApi::Handle and the /v1/events route do,
//    ids through the shape checks the handlers apply, and the body as the JSON they parse;
//  - as a forwarded call or answer from a peer (kApiRequest / kApiResponse payloads:
//    DecodeApiRequest / DecodeApiResponse in agent/core/src/api_call.cpp), whose target goes
//    through ParseTarget too, and which must survive an encode/decode round trip.
//
// Properties checked: a target ParseTarget calls valid has no segment that is ".", ".." or
// holds '/' or NUL (such segments become file names); an id that passes IsValidJobId or
// IsValidMigrationId has no '/' either; a decoded peer call re-encodes to an equal call.
//
// AgentApi::Handle itself is not driven: behind it, requests start jobs as users and run CRIU.
#include <boost/beast/core/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <tern/agent/api_call.hpp>
#include <tern/agent/target.hpp>
#include <tern/jobs/job_record.hpp>

#include "fuzz_check.hpp"

namespace {

namespace bhttp = boost::beast::http;

void CheckTarget(const std::string& raw) {
  const tern::agent::Target target = tern::agent::ParseTarget(raw);
  for (const std::string& segment : target.segments) {
    if (target.valid()) {
      FUZZ_CHECK(segment != "." && segment != "..", "a valid target with a dot segment");
      FUZZ_CHECK(segment.find('/') == std::string::npos, "a valid target's segment holds '/'");
      FUZZ_CHECK(segment.find('\0') == std::string::npos, "a valid target's segment holds NUL");
    }
    if (tern::jobs::IsValidJobId(segment) || tern::jobs::IsValidMigrationId(segment)) {
      FUZZ_CHECK(segment.find_first_of(std::string("/\0", 2)) == std::string::npos &&
                     segment != "." && segment != "..",
                 "an id that passes its shape check is not a plain file name");
    }
  }
  // What the /v1/events route and list handlers read from the query.
  (void)target.Get("since", "");
  (void)target.Get("local", "");
}

void HttpRequest(std::string_view bytes) {
  bhttp::request_parser<bhttp::string_body> parser;
  parser.body_limit(16 * 1024 * 1024);  // as HttpServer
  parser.eager(true);
  boost::beast::error_code error;
  std::size_t used = 0;
  while (used < bytes.size() && !parser.is_done()) {
    const std::size_t n =
        parser.put(boost::asio::buffer(bytes.data() + used, bytes.size() - used), error);
    if (error == bhttp::error::need_more) break;
    if (error || n == 0) return;
    used += n;
  }
  if (!error && !parser.is_done()) parser.put_eof(error);
  if (error || !parser.is_done()) return;
  const auto request = parser.release();
  CheckTarget(std::string(request.target()));
  (void)nlohmann::json::parse(request.body(), nullptr, false);
}

void PeerCall(const std::string& payload) {
  if (auto decoded = tern::agent::DecodeApiRequest(payload)) {
    const auto& [id, call] = *decoded;
    CheckTarget(call.target);
    auto again = tern::agent::DecodeApiRequest(tern::agent::EncodeApiRequest(id, call));
    FUZZ_CHECK(again.has_value(), "a decoded peer call does not decode once re-encoded");
    FUZZ_CHECK(again->first == id && again->second.method == call.method &&
                   again->second.target == call.target && again->second.body == call.body &&
                   again->second.caller.uid == call.caller.uid &&
                   again->second.caller.identified == call.caller.identified,
               "a peer call changes in an encode/decode round trip");
  }
  if (auto decoded = tern::agent::DecodeApiResponse(payload)) {
    const auto& [id, result] = *decoded;
    auto again = tern::agent::DecodeApiResponse(tern::agent::EncodeApiResponse(id, result));
    FUZZ_CHECK(again.has_value() && again->second.status == result.status &&
                   again->second.body == result.body,
               "a peer answer changes in an encode/decode round trip");
    (void)tern::agent::ErrorMessageOf(result);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  HttpRequest(bytes);
  PeerCall(bytes);
  CheckTarget(bytes);
  return 0;
}
