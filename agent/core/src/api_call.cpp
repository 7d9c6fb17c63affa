#include "tern/agent/api_call.hpp"

#include <nlohmann/json.hpp>
#include <tern/big_endian.hpp>
#include <tern/json_integer.hpp>

namespace tern::agent {
namespace {

using nlohmann::json;

std::string Frame(const json& header, const std::string& body) {
  const std::string text = header.dump();
  const auto length = static_cast<std::uint32_t>(text.size());
  std::string out;
  out.reserve(4 + text.size() + body.size());
  AppendBigEndian(out, length);
  out += text;
  out += body;
  return out;
}

Expected<std::pair<json, std::string>> Unframe(const std::string& payload) {
  if (payload.size() < 4) return Fail("api frame shorter than its length prefix");
  const auto length = LoadBigEndian<std::uint32_t>(payload.data());
  if (length > payload.size() - 4) return Fail("api frame header length exceeds the frame");
  json header = json::parse(payload.substr(4, length), nullptr, false);
  if (header.is_discarded() || !header.is_object()) {
    return Fail("api frame header is not a JSON object");
  }
  return std::make_pair(std::move(header), payload.substr(4 + length));
}

}  // namespace

std::string ApiResult::Header(const std::string& name) const {
  for (const auto& [key, value] : headers) {
    if (key == name) return value;
  }
  return "";
}

ApiResult JsonResult(unsigned status, const std::string& json_text) {
  ApiResult result;
  result.status = status;
  result.body = json_text;
  return result;
}

ApiResult ErrorResult(unsigned status, const std::string& message) {
  return JsonResult(status, json{{"error", message}}.dump());
}

std::string ErrorMessageOf(const ApiResult& result) {
  json body = json::parse(result.body, nullptr, false);
  if (body.is_object() && body.contains("error") && body["error"].is_string()) {
    return body["error"].get<std::string>();
  }
  return result.body.empty() ? "HTTP status " + std::to_string(result.status) : result.body;
}

std::string EncodeApiRequest(std::uint64_t request_id, const ApiCall& call) {
  json header = {{"id", request_id},
                 {"method", call.method},
                 {"target", call.target},
                 {"uid", call.caller.uid},
                 {"gid", call.caller.gid},
                 {"pid", call.caller.pid},
                 {"identified", call.caller.identified},
                 {"via", call.caller.via}};
  return Frame(header, call.body);
}

Expected<std::pair<std::uint64_t, ApiCall>> DecodeApiRequest(const std::string& payload) {
  auto parts = Unframe(payload);
  if (!parts) return Unexpected<Error>{parts.error()};
  auto& [header, body] = *parts;
  try {
    ApiCall call;
    call.method = header.at("method").get<std::string>();
    call.target = header.at("target").get<std::string>();
    call.caller.uid = JsonIntegerAt<uid_t>(header, "uid");
    call.caller.gid = JsonIntegerAt<gid_t>(header, "gid");
    call.caller.pid = JsonIntegerAt<pid_t>(header, "pid", 0);
    call.caller.identified = header.value("identified", false);
    call.caller.via = header.value("via", std::string("peer"));
    call.body = std::move(body);
    call.forwarded = true;
    return std::make_pair(JsonIntegerAt<std::uint64_t>(header, "id"), std::move(call));
  } catch (const std::exception& error) {  // json::exception, or JsonIntegerAt's
    return Fail(std::string("malformed api request frame: ") + error.what());
  }
}

std::string EncodeApiResponse(std::uint64_t request_id, const ApiResult& result) {
  json headers = json::object();
  for (const auto& [key, value] : result.headers) headers[key] = value;
  json header = {{"id", request_id},
                 {"status", result.status},
                 {"content_type", result.content_type},
                 {"headers", headers}};
  return Frame(header, result.body);
}

Expected<std::pair<std::uint64_t, ApiResult>> DecodeApiResponse(const std::string& payload) {
  auto parts = Unframe(payload);
  if (!parts) return Unexpected<Error>{parts.error()};
  auto& [header, body] = *parts;
  try {
    ApiResult result;
    result.status = JsonIntegerAt<unsigned>(header, "status");
    result.content_type = header.value("content_type", std::string("application/json"));
    const json headers = header.value("headers", json::object());
    for (const auto& [key, value] : headers.items()) {
      result.headers.emplace_back(key, value.get<std::string>());
    }
    result.body = std::move(body);
    return std::make_pair(JsonIntegerAt<std::uint64_t>(header, "id"), std::move(result));
  } catch (const std::exception& error) {  // json::exception, or JsonIntegerAt's
    return Fail(std::string("malformed api response frame: ") + error.what());
  }
}

}  // namespace tern::agent
