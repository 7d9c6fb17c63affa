// Who is calling the agent's API over HTTP, in the terms of ApiCall (docs/api.md "Access").
//
// Contract:
//  - Unix socket: the caller is who SO_PEERCRED says, identified.
//  - TCP: every request needs `Authorization: Bearer <token>` naming a token in the token file
//    (tern token create). A read-only token reads (GET/HEAD) every job and node but no logs and
//    writes nothing; an admin token acts as root. No token, an unknown or revoked one, or an
//    unusable token file (wrong owner or mode) answers 401 with why; the file is read again on
//    every request, so a revoked token stops working at once. A browser may present the
//    token as the cookie `tern_token` instead (EventSource cannot set headers; the dashboard
//    sets it SameSite=Strict). The dashboard's static files (FindDashboardAsset) are served
//    without a token: they hold no data.
//  - TcpApiTls: a TCP listener on a loopback address speaks plain HTTP (nullptr); on any other
//    address it speaks only TLS, with the node's certificate and key ([tls] cert, key; the key
//    root's and 0600) — an agent that cannot load them refuses to start. Clients are not asked
//    for a certificate: the bearer token says who they are.
//
// Thread-safety: free functions; safe from any thread.
#pragma once

#include <sys/types.h>

#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <tern/http/types.hpp>

#include "tern/agent/api_call.hpp"
#include "tern/agent/config.hpp"

namespace tern::agent {

ApiCaller ApiCallerOf(const http::Caller& caller);

// The value of the `tern_token` cookie in a Cookie header's value, or empty.
std::string_view TokenCookie(std::string_view cookies);

// nullopt when `caller` may go on (caller's access, uid and token filled in), else the answer.
std::optional<http::Response> AuthenticateTcp(const std::string& tokens_file,
                                              const http::Request& header, http::Caller& caller,
                                              uid_t file_owner = 0);

Expected<std::shared_ptr<boost::asio::ssl::context>> TcpApiTls(const AgentConfig& config);

}  // namespace tern::agent
