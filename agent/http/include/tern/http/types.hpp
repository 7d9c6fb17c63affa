// The HTTP types of the agent's one server, and who is calling.
//
// Thread-safety: plain values.
#pragma once

#include <sys/types.h>

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <string>

namespace tern::http {

using Request = boost::beast::http::request<boost::beast::http::string_body>;
using Response = boost::beast::http::response<boost::beast::http::string_body>;

struct Caller {
  enum class Transport { kUnix, kTcp };
  // What a TCP caller's bearer token allows: nothing, GET/HEAD only, or everything as root.
  enum class Access { kNone, kReadOnly, kAdmin };
  Transport transport = Transport::kTcp;
  // From SO_PEERCRED on Unix sockets; on TCP -1, or 0 for an admin token.
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  pid_t pid = -1;
  Access access = Access::kNone;  // TCP only; set by ServerOptions::authenticate_tcp
  std::string token;              // the token's name, for logs
  std::string remote;             // "ip:port" on TCP, "unix" otherwise
};

}  // namespace tern::http
