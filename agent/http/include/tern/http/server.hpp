// HttpServer: the agent's one HTTP/1.1 server (Boost.Beast), on a Unix socket for local users
// and on TCP for the dashboard.
//
// Contract:
//  - Each request goes to the handler with the Caller (uid/gid/pid from SO_PEERCRED on the Unix
//    socket) and a Responder. Keep-alive is honoured; a request body over 16 MiB gets 413, a
//    malformed request 400, and the connection closes; bad input never stops the server.
//  - On TCP, with `read_only_tcp` (the default), every method but GET/HEAD gets 403 before the
//    handler sees it: writes need the Unix socket, where the caller is known.
//  - ListenUnix refuses a path where a live server answers, and replaces a stale socket file.
//
// Thread-safety: construct, listen and Stop on the io_context's thread. The handler is called
// on that thread.
#pragma once

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <tern/expected.hpp>

#include "tern/http/responder.hpp"
#include "tern/http/types.hpp"

namespace tern::http {

using Handler = std::function<void(const Request&, const Caller&, Responder)>;

class HttpServer {
 public:
  HttpServer(boost::asio::io_context& io, Handler handler, bool read_only_tcp = true);
  ~HttpServer();

  Expected<void> ListenUnix(const std::string& path, mode_t mode = 0666);
  Expected<void> ListenTcp(const std::string& host_port);
  std::uint16_t TcpPort() const;
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// JSON and error answers in the shape of docs/api.md.
Response TextResponse(unsigned status, std::string body, const std::string& content_type);
Response ErrorResponse(unsigned status, const std::string& message);

}  // namespace tern::http
