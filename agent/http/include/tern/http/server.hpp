// HttpServer: the agent's one HTTP/1.1 server (Boost.Beast), on a Unix socket for local users
// and on TCP for the dashboard.
//
// Contract:
//  - Each request goes to the handler with the Caller (uid/gid/pid from SO_PEERCRED on the Unix
//    socket) and a Responder. Keep-alive is honoured; a malformed request gets 400 and the
//    connection closes; bad input never stops the server.
//  - Limits (ServerOptions): at most `max_connections` open connections across both listeners
//    (more are answered 503 and closed at once); the header is read first and a declared body
//    over `body_limit` is refused with 413 before any of it is read; reading one request
//    (header and body) and writing one answer each have `request_timeout`, after which the
//    connection closes; an event stream whose client lets more than `event_queue_limit` bytes
//    queue up is dropped with a log line. A handler that throws is logged and answered 500.
//  - On TCP, `authenticate_tcp` sees each request's header before its body: it fills the
//    caller (token, access, uid) or refuses with its own answer (401). Without it TCP callers
//    are anonymous and read-only. A caller without admin access gets 403 for every method but
//    GET/HEAD, before its body is read. With `tcp_tls` the TCP listener speaks only TLS.
//  - ListenUnix refuses a path where a live server answers, and replaces a stale socket file.
//
// Thread-safety: construct, listen and Stop on the io_context's thread. The handler is called
// on that thread.
#pragma once

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tern/expected.hpp>

#include "tern/http/responder.hpp"
#include "tern/http/types.hpp"

namespace tern::http {

using Handler = std::function<void(const Request&, const Caller&, Responder)>;
// Given a TCP request's header (its body not read yet) and the caller so far: fills in the
// caller, or returns the answer that refuses it.
using Authenticate = std::function<std::optional<Response>(const Request& header, Caller& caller)>;

struct ServerOptions {
  std::size_t max_connections = 256;
  std::uint64_t body_limit = 16 * 1024 * 1024;
  std::chrono::milliseconds request_timeout{30000};
  std::size_t event_queue_limit = 1024 * 1024;
  Authenticate authenticate_tcp;
  // Set: the TCP listener speaks TLS only (a client that does not is closed at the handshake).
  std::shared_ptr<boost::asio::ssl::context> tcp_tls;
};

class HttpServer {
 public:
  HttpServer(boost::asio::io_context& io, Handler handler, ServerOptions options = {});
  ~HttpServer();

  Expected<void> ListenUnix(const std::string& path, mode_t mode = 0666);
  Expected<void> ListenTcp(const std::string& host_port);
  std::uint16_t TcpPort() const;
  // Connections open now (for tests and logs).
  std::size_t Connections() const;
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// JSON and error answers in the shape of docs/api.md.
Response TextResponse(unsigned status, std::string body, const std::string& content_type);
Response ErrorResponse(unsigned status, const std::string& message);

}  // namespace tern::http
