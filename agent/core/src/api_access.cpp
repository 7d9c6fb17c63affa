#include "api_access.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/ip/address.hpp>
#include <tern/http/server.hpp>
#include <tern/http/tokens.hpp>
#include <tern/ipc/tls_files.hpp>

#include "tern/agent/dashboard.hpp"
#include "tern/agent/target.hpp"

namespace tern::agent {
namespace {

http::Response Unauthorized(const std::string& message) {
  http::Response response = http::ErrorResponse(401, message);
  response.set(boost::beast::http::field::www_authenticate, "Bearer realm=\"tern\"");
  return response;
}

}  // namespace

std::string_view TokenCookie(std::string_view cookies) {
  // "a=1; tern_token=XYZ; b=2": browsers send cookies, not headers, with EventSource.
  constexpr std::string_view kName = "tern_token=";
  while (!cookies.empty()) {
    while (!cookies.empty() && (cookies.front() == ' ' || cookies.front() == ';')) {
      cookies.remove_prefix(1);
    }
    const std::size_t end = std::min(cookies.find(';'), cookies.size());
    const std::string_view pair = cookies.substr(0, end);
    if (pair.substr(0, kName.size()) == kName) return pair.substr(kName.size());
    cookies.remove_prefix(end);
  }
  return {};
}

ApiCaller ApiCallerOf(const http::Caller& caller) {
  ApiCaller out;
  if (caller.transport == http::Caller::Transport::kUnix) {
    out.uid = caller.uid;
    out.gid = caller.gid;
    out.pid = caller.pid;
    out.identified = true;
    out.via = "unix";
    return out;
  }
  out.via = "tcp " + caller.remote + (caller.token.empty() ? "" : " token " + caller.token);
  if (caller.access == http::Caller::Access::kAdmin) {
    out.uid = 0;
    out.gid = 0;
    out.identified = true;
  }
  return out;
}

std::optional<http::Response> AuthenticateTcp(const std::string& tokens_file,
                                              const http::Request& header, http::Caller& caller,
                                              uid_t file_owner) {
  std::string_view presented;
  const auto field = header.find(boost::beast::http::field::authorization);
  if (field != header.end()) {
    const std::string_view value = field->value();
    constexpr std::string_view kScheme = "Bearer ";
    if (value.size() <= kScheme.size() || value.substr(0, kScheme.size()) != kScheme) {
      return Unauthorized("the Authorization header must be `Bearer <token>`");
    }
    presented = value.substr(kScheme.size());
  } else if (const auto cookie = header.find(boost::beast::http::field::cookie);
             cookie != header.end()) {
    presented = TokenCookie(cookie->value());
  }
  if (presented.empty()) {
    const bool read = header.method() == boost::beast::http::verb::get ||
                      header.method() == boost::beast::http::verb::head;
    // The dashboard's files hold no data: a browser loads them, then asks for a token.
    if (read && FindDashboardAsset(ParseTarget(std::string(header.target())).path) != nullptr) {
      return std::nullopt;
    }
    return Unauthorized(
        "the TCP API needs a token: send `Authorization: Bearer <token>` (root makes one with "
        "`tern token create`)");
  }
  auto entries = http::ReadTokens(tokens_file, file_owner);
  if (!entries) {
    spdlog::error("api: refusing TCP callers: {}", entries.error().message);
    return Unauthorized("the agent cannot use its token file now; see its log");
  }
  auto token = http::FindToken(*entries, presented);
  if (!token) {
    spdlog::info("api: {} refused: {}", caller.remote, token.error().message);
    return Unauthorized(token.error().message);
  }
  caller.token = token->name;
  if (token->access == http::TokenAccess::kAdmin) {
    caller.access = http::Caller::Access::kAdmin;
    caller.uid = 0;
    caller.gid = 0;
  } else {
    caller.access = http::Caller::Access::kReadOnly;
  }
  return std::nullopt;
}

Expected<std::shared_ptr<boost::asio::ssl::context>> TcpApiTls(const AgentConfig& config) {
  const auto colon = config.api_listen.rfind(':');
  std::string host = config.api_listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  boost::system::error_code error;
  const auto address = boost::asio::ip::make_address(host, error);
  if (error) return Fail("[api] listen: bad address '" + config.api_listen + "'");
  if (address.is_loopback()) return std::shared_ptr<boost::asio::ssl::context>{};
  auto context =
      ipc::MakeTlsContext({config.tls_ca, config.tls_cert, config.tls_key}, ipc::TlsRole::kServer);
  if (!context) {
    return Fail("[api] listen = \"" + config.api_listen +
                "\" is not a loopback address, so the TCP API speaks only TLS, with the "
                "node's [tls] certificate: " +
                context.error().message);
  }
  // Ours alone, not yet handed out: API clients are known by their token, not a certificate.
  (*context)->set_verify_mode(boost::asio::ssl::verify_none);
  return *context;
}

}  // namespace tern::agent
