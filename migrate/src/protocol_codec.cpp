#include "tern/migrate/protocol_codec.hpp"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <tern/big_endian.hpp>
#include <tern/json_integer.hpp>

namespace tern::migrate {
namespace {

using nlohmann::json;

constexpr std::string_view kPrefix = "/v1/migrations/";

// Thrown inside this file only; every entry point turns it into an Error.
struct Malformed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

bool IsJobId(std::string_view id) {
  const auto dot = id.rfind('.');
  if (dot == std::string_view::npos || dot == 0 || dot + 1 == id.size() || id.size() > 200) {
    return false;
  }
  for (std::size_t i = 0; i < id.size(); ++i) {
    const auto c = static_cast<unsigned char>(id[i]);
    const bool ok =
        i < dot ? (std::isalnum(c) || c == '-' || c == '_') : (i == dot || std::isdigit(c));
    if (!ok) return false;
  }
  return true;
}

std::string ToHex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string FromHex(std::string_view hex, const char* field) {
  if (hex.size() % 2 != 0) throw Malformed(std::string(field) + " has an odd number of digits");
  std::string out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int high = HexDigit(hex[i]), low = HexDigit(hex[i + 1]);
    if (high < 0 || low < 0) throw Malformed(std::string(field) + " is not hexadecimal");
    out.push_back(static_cast<char>(high << 4 | low));
  }
  return out;
}

json ParseObject(std::string_view body, std::size_t limit) {
  if (body.size() > limit) {
    throw Malformed("body of " + std::to_string(body.size()) + " bytes, over the limit of " +
                    std::to_string(limit));
  }
  json parsed = json::parse(body, nullptr, false);
  if (parsed.is_discarded()) throw Malformed("body is not JSON");
  if (!parsed.is_object()) throw Malformed("body is not a JSON object");
  return parsed;
}

template <typename T>
T Integer(const json& object, const char* key, T fallback) {
  try {
    return JsonIntegerAt<T>(object, key, fallback);
  } catch (const std::invalid_argument& error) {
    throw Malformed(error.what());
  }
}

std::string String(const json& object, const char* key, std::size_t limit,
                   std::string fallback = "") {
  const auto found = object.find(key);
  if (found == object.end() || found->is_null()) return fallback;
  if (!found->is_string()) throw Malformed(std::string("\"") + key + "\" is not a string");
  const auto& text = found->get_ref<const std::string&>();
  if (text.size() > limit) throw Malformed(std::string("\"") + key + "\" is too long");
  return text;
}

bool Bool(const json& object, const char* key, bool fallback) {
  const auto found = object.find(key);
  if (found == object.end()) return fallback;
  if (!found->is_boolean()) throw Malformed(std::string("\"") + key + "\" is not a boolean");
  return found->get<bool>();
}

Endpoint EndpointAt(const json& value, const char* key) {
  if (!value.is_object()) throw Malformed(std::string("\"") + key + "\" is not an object");
  return {String(value, "address", 255), Integer<std::uint16_t>(value, "port", 0)};
}

json EndpointJson(const Endpoint& endpoint) {
  return {{"address", endpoint.address}, {"port", endpoint.port}};
}

void CheckId(std::string_view id) {
  if (!IsMigrationId(id))
    throw Malformed("'" + std::string(id.substr(0, 80)) + "' is not a migration id");
}

// A length prefix (u32 or u64, big-endian) and then `bytes`.
template <typename T>
std::string Prefixed(const std::string& bytes) {
  std::string out;
  AppendBigEndian(out, static_cast<T>(bytes.size()));
  return out + bytes;
}

// ---------------------------------------------------------------- requests

}  // namespace

json OutsideFilesJson(const std::vector<OutsideFile>& files) {
  json outside = json::array();
  for (const auto& file : files) {
    outside.push_back({{"path", file.path},
                       {"size", file.size},
                       {"uid", file.uid},
                       {"gid", file.gid},
                       {"mode", file.mode},
                       {"sha256", file.sha256}});
  }
  return outside;
}

namespace {

std::string PrepareBody(const PrepareRequest& request) {
  json outside = OutsideFilesJson(request.outside);
  json job = json::parse(request.job, nullptr, false);
  json body = {{"id", request.id},
               {"lazy_source", EndpointJson(request.lazy_source)},
               {"job", job.is_object() ? job : json::object()},
               {"cpuinfo_hex", ToHex(request.cpuinfo)},
               {"dir_device", request.dir_device},
               {"dir_inode", request.dir_inode},
               {"mode", ToString(request.mode)},
               {"dry_run", request.dry_run},
               {"rss_bytes", request.rss_bytes},
               {"outside", std::move(outside)}};
  if (request.channel) body["channel"] = *request.channel;
  if (!request.closed_sockets.empty()) body["closed_sockets"] = request.closed_sockets;
  if (!request.lazy_relay.empty()) body["lazy_source"]["relay"] = request.lazy_relay;
  return body.dump();
}

PrepareRequest DecodePrepare(std::string_view text) {
  const json body = ParseObject(text, CodecLimits::kMaxJsonBody);
  PrepareRequest request;
  request.id = String(body, "id", 256);
  CheckId(request.id);
  const auto job = body.find("job");
  if (job == body.end() || !job->is_object()) throw Malformed("\"job\" is not an object");
  request.job = job->dump();
  const std::string mode = String(body, "mode", 16, "precopy");
  if (mode != "precopy" && mode != "postcopy") {
    throw Malformed("\"mode\" must be precopy or postcopy, not '" + mode + "'");
  }
  request.mode = mode == "postcopy" ? MoveMode::kPostCopy : MoveMode::kPreCopy;
  request.dry_run = Bool(body, "dry_run", false);
  if (const auto channel = body.find("channel"); channel != body.end()) {
    if (!channel->is_string()) throw Malformed("\"channel\" is not a string");
    request.channel = String(body, "channel", 64);
  }
  if (const auto closed = body.find("closed_sockets"); closed != body.end()) {
    if (!closed->is_array()) throw Malformed("\"closed_sockets\" is not an array");
    if (closed->size() > CodecLimits::kMaxClosedSockets) {
      throw Malformed("\"closed_sockets\" lists " + std::to_string(closed->size()) +
                      " sockets, over the limit of " +
                      std::to_string(CodecLimits::kMaxClosedSockets));
    }
    // They become criu arguments ("fd[N]:socket:[INODE]"): exactly that shape, nothing more.
    for (const auto& socket : *closed) {
      const std::string name = socket.is_string() ? socket.get<std::string>() : "";
      const std::string digits = name.size() > 9 && name.size() <= 30 &&
                                         name.starts_with("socket:[") && name.ends_with("]")
                                     ? name.substr(8, name.size() - 9)
                                     : "";
      if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) {
        throw Malformed("a \"closed_sockets\" entry is not \"socket:[INODE]\"");
      }
      request.closed_sockets.push_back(name);
    }
  }
  request.cpuinfo =
      FromHex(String(body, "cpuinfo_hex", 2 * CodecLimits::kMaxCpuinfo), "\"cpuinfo_hex\"");
  request.dir_device = Integer<std::uint64_t>(body, "dir_device", 0);
  request.dir_inode = Integer<std::uint64_t>(body, "dir_inode", 0);
  request.rss_bytes = Integer<std::uint64_t>(body, "rss_bytes", 0);
  if (const auto lazy = body.find("lazy_source"); lazy != body.end()) {
    request.lazy_source = EndpointAt(*lazy, "lazy_source");
    request.lazy_relay = String(*lazy, "relay", 32, "");
  }
  if (const auto outside = body.find("outside"); outside != body.end()) {
    if (!outside->is_array()) throw Malformed("\"outside\" is not an array");
    if (outside->size() > CodecLimits::kMaxOutsideFiles) {
      throw Malformed("\"outside\" lists " + std::to_string(outside->size()) +
                      " files, over the limit of " + std::to_string(CodecLimits::kMaxOutsideFiles));
    }
    for (const auto& item : *outside) {
      if (!item.is_object()) throw Malformed("an \"outside\" entry is not an object");
      OutsideFile file;
      file.path = String(item, "path", CodecLimits::kMaxPath);
      if (file.path.empty() || file.path.front() != '/') {
        throw Malformed("an \"outside\" path is not absolute");
      }
      file.size = Integer<std::uint64_t>(item, "size", 0);
      file.uid = Integer<std::uint32_t>(item, "uid", 0);
      file.gid = Integer<std::uint32_t>(item, "gid", 0);
      file.mode = Integer<std::uint32_t>(item, "mode", 0);
      file.sha256 = String(item, "sha256", 64);  // none from an older source: refused later
      request.outside.push_back(std::move(file));
    }
  }
  return request;
}

std::string RestoreBody(const RestoreRequest& request) {
  return Prefixed<std::uint64_t>(request.images) + request.job_dir;
}

RestoreRequest DecodeRestore(std::string id, std::string_view body) {
  if (body.size() < 8) throw Malformed("body shorter than its 8-byte length");
  const auto length = LoadBigEndian<std::uint64_t>(body.data());
  if (length > body.size() - 8) throw Malformed("image archive longer than the body");
  if (length > CodecLimits::kMaxArchive || body.size() - 8 - length > CodecLimits::kMaxArchive) {
    throw Malformed("an archive over the limit of " + std::to_string(CodecLimits::kMaxArchive) +
                    " bytes");
  }
  return {std::move(id), std::string(body.substr(8, length)), std::string(body.substr(8 + length))};
}

std::string CommitBody(const CommitRequest& request) {
  return Prefixed<std::uint32_t>(request.stats) + request.ipc_state;
}

CommitRequest DecodeCommit(std::string id, std::string_view body) {
  CommitRequest request;
  request.id = std::move(id);
  std::string_view stats = body;
  if (!body.empty() && body.front() != '{') {  // an older source sends the JSON alone
    if (body.size() < 4) throw Malformed("body shorter than its 4-byte length");
    const std::uint64_t length = LoadBigEndian<std::uint32_t>(body.data());
    if (length > body.size() - 4) throw Malformed("stats longer than the body");
    stats = body.substr(4, length);
    if (body.size() - 4 - length > CodecLimits::kMaxIpcState) {
      throw Malformed("IPC state over the limit of " + std::to_string(CodecLimits::kMaxIpcState) +
                      " bytes");
    }
    request.ipc_state = std::string(body.substr(4 + length));
  }
  if (!stats.empty()) request.stats = ParseObject(stats, CodecLimits::kMaxStats).dump();
  return request;
}

std::string RequestName(const Request& request) { return std::string(NameOf(ToMessage(request))); }

}  // namespace

bool IsMigrationId(std::string_view id) {
  const auto dash = id.rfind('-');
  if (dash == std::string_view::npos || id.size() - dash != 9) return false;
  if (!IsJobId(id.substr(0, dash))) return false;
  return std::all_of(id.begin() + static_cast<std::ptrdiff_t>(dash) + 1, id.end(),
                     [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; });
}

WireCall Encode(const Request& request) {
  struct Visitor {
    WireCall operator()(const PrepareRequest& m) const {
      return {"POST", std::string(kPrefix) + "prepare", PrepareBody(m)};
    }
    WireCall operator()(const RestoreRequest& m) const {
      return {"POST", std::string(kPrefix) + m.id + "/restore", RestoreBody(m)};
    }
    WireCall operator()(const CommitRequest& m) const {
      return {"POST", std::string(kPrefix) + m.id + "/commit", CommitBody(m)};
    }
    WireCall operator()(const AbortRequest& m) const {
      return {"POST", std::string(kPrefix) + m.id + "/abort", ""};
    }
    WireCall operator()(const OutcomeQuery& m) const {
      return {"GET", std::string(kPrefix) + m.id, ""};
    }
    WireCall operator()(const IpcStateQuery& m) const {
      return {"GET", std::string(kPrefix) + m.id + "/ipc-state", ""};
    }
  };
  return std::visit(Visitor{}, request);
}

Expected<Request> DecodeRequest(std::string_view method, std::string_view target,
                                std::string_view body) {
  try {
    if (target.substr(0, kPrefix.size()) != kPrefix) {
      throw Malformed("'" + std::string(target.substr(0, 80)) + "' is not a migration call");
    }
    std::string_view rest = target.substr(kPrefix.size());
    const auto slash = rest.find('/');
    const std::string_view first = rest.substr(0, slash);
    const std::string_view second =
        slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
    if (method == "POST" && first == "prepare" && slash == std::string_view::npos) {
      try {
        return Request{DecodePrepare(body)};
      } catch (const Malformed& error) {
        throw Malformed(std::string("malformed prepare request: ") + error.what());
      }
    }
    CheckId(first);
    std::string id(first);
    if (method == "GET" && slash == std::string_view::npos) {
      return Request{OutcomeQuery{std::move(id)}};
    }
    if (method == "GET" && second == "ipc-state") return Request{IpcStateQuery{std::move(id)}};
    if (method == "POST" && second == "restore") {
      try {
        return Request{DecodeRestore(std::move(id), body)};
      } catch (const Malformed& error) {
        throw Malformed(std::string("malformed restore request: ") + error.what());
      }
    }
    if (method == "POST" && second == "commit") {
      try {
        return Request{DecodeCommit(std::move(id), body)};
      } catch (const Malformed& error) {
        throw Malformed(std::string("malformed commit request: ") + error.what());
      }
    }
    if (method == "POST" && second == "abort") return Request{AbortRequest{std::move(id)}};
    throw Malformed("no such migration call: " + std::string(method) + " " +
                    std::string(target.substr(0, 120)));
  } catch (const Malformed& error) {
    return Fail(error.what());
  }
}

// ---------------------------------------------------------------- replies

namespace {

WireAnswer ErrorAnswer(unsigned status, const std::string& error, const json& extra = {}) {
  json body = {{"error", error}};
  if (extra.is_object()) body.update(extra);
  return {status, "application/json", body.dump()};
}

json ChecksJson(const std::string& checks) {
  json parsed = json::parse(checks, nullptr, false);
  return parsed.is_array() ? parsed : json::array();
}

std::string ErrorOf(const WireAnswer& answer) {
  json body = json::parse(answer.body, nullptr, false);
  if (body.is_object() && body.contains("error") && body["error"].is_string()) {
    return body["error"].get<std::string>().substr(0, 4096);
  }
  return answer.body.empty() || answer.body.size() > 4096
             ? "HTTP status " + std::to_string(answer.status)
             : answer.body;
}

std::string ChecksOf(const json& body) {
  const auto checks = body.find("checks");
  if (checks == body.end()) return "[]";
  if (!checks->is_array()) throw Malformed("\"checks\" is not an array");
  return checks->dump();
}

}  // namespace

WireAnswer Encode(const Reply& reply) {
  struct Visitor {
    WireAnswer operator()(const PrepareReply& m) const {
      if (m.status != 200)
        return ErrorAnswer(m.status, m.error, {{"checks", ChecksJson(m.checks)}});
      json body = {{"checks", ChecksJson(m.checks)}, {"shared_dir", m.shared_dir}};
      if (m.page_server) body["page_server"] = EndpointJson(*m.page_server);
      return {200, "application/json", body.dump()};
    }
    WireAnswer operator()(const RestoreReply& m) const {
      if (m.status != 200) return ErrorAnswer(m.status, m.error);
      return {200, "application/json",
              json{{"pid", m.pid}, {"restore_ms", m.restore_ms}, {"pages_bytes", m.pages_bytes}}
                  .dump()};
    }
    WireAnswer operator()(const CommitReply& m) const {
      if (m.status != 200) return ErrorAnswer(m.status, m.error);
      return {200, "application/json", m.job};
    }
    WireAnswer operator()(const AbortReply& m) const {
      if (m.status != 200) return ErrorAnswer(m.status, m.error);
      return {200, "application/json", "{}"};
    }
    WireAnswer operator()(const OutcomeReply& m) const {
      return {200, "application/json", json{{"id", m.id}, {"outcome", ToString(m.outcome)}}.dump()};
    }
    WireAnswer operator()(const IpcStateReply& m) const {
      if (m.status != 200) return ErrorAnswer(m.status, "no IPC state kept for " + m.id);
      return {200, "application/octet-stream", m.state};
    }
  };
  return std::visit(Visitor{}, reply);
}

Expected<Reply> DecodeReply(const Request& answered, const WireAnswer& answer) {
  const std::string id = IdOf(ToMessage(answered));
  const bool ok = answer.status == 200;
  try {
    switch (answered.index()) {
      case 0: {  // PrepareRequest
        PrepareReply reply{id, answer.status};
        if (answer.body.size() > CodecLimits::kMaxJsonBody) throw Malformed("body too long");
        json body = json::parse(answer.body, nullptr, false);
        if (!ok) {
          reply.error = ErrorOf(answer);
          if (body.is_object()) reply.checks = ChecksOf(body);
          return Reply{std::move(reply)};
        }
        body = ParseObject(answer.body, CodecLimits::kMaxJsonBody);
        reply.checks = ChecksOf(body);
        reply.shared_dir = Bool(body, "shared_dir", false);
        if (const auto server = body.find("page_server"); server != body.end()) {
          reply.page_server = EndpointAt(*server, "page_server");
        }
        return Reply{std::move(reply)};
      }
      case 1: {  // RestoreRequest
        RestoreReply reply{id, answer.status};
        if (!ok) {
          reply.error = ErrorOf(answer);
          return Reply{std::move(reply)};
        }
        const json body = ParseObject(answer.body, CodecLimits::kMaxJsonBody);
        reply.pid = Integer<std::int64_t>(body, "pid", 0);
        const auto ms = body.find("restore_ms");
        if (ms != body.end() && !ms->is_number()) throw Malformed("\"restore_ms\" not a number");
        reply.restore_ms = ms == body.end() ? 0.0 : ms->get<double>();
        reply.pages_bytes = Integer<std::uint64_t>(body, "pages_bytes", 0);
        return Reply{std::move(reply)};
      }
      case 2: {  // CommitRequest
        CommitReply reply{id, answer.status};
        if (!ok) {
          reply.error = ErrorOf(answer);
          return Reply{std::move(reply)};
        }
        reply.job = ParseObject(answer.body, CodecLimits::kMaxJsonBody).dump();
        return Reply{std::move(reply)};
      }
      case 3: {  // AbortRequest
        AbortReply reply{id, answer.status};
        if (!ok) reply.error = ErrorOf(answer);
        return Reply{std::move(reply)};
      }
      case 4: {  // OutcomeQuery: anything but a clear answer is no answer
        if (!ok) return Fail("no outcome for " + id + ": " + ErrorOf(answer));
        const json body = ParseObject(answer.body, CodecLimits::kMaxJsonBody);
        const std::string outcome = String(body, "outcome", 32);
        OutcomeReply reply{id};
        if (outcome == "committed") {
          reply.outcome = Outcome::kCommitted;
        } else if (outcome == "aborted") {
          reply.outcome = Outcome::kAborted;
        } else if (outcome == "pending") {
          reply.outcome = Outcome::kPending;
        } else if (outcome == "unknown" || outcome.empty()) {
          reply.outcome = Outcome::kUnknown;
        } else {
          throw Malformed("unknown outcome '" + outcome + "'");
        }
        return Reply{std::move(reply)};
      }
      default: {  // IpcStateQuery
        IpcStateReply reply{id, answer.status};
        if (ok && answer.body.size() > CodecLimits::kMaxIpcState) throw Malformed("too long");
        if (ok) reply.state = answer.body;
        return Reply{std::move(reply)};
      }
    }
  } catch (const Malformed& error) {
    return Fail("malformed answer to " + RequestName(answered) + " of " + id + ": " + error.what());
  }
}

}  // namespace tern::migrate
