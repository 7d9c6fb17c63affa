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
  Transport transport = Transport::kTcp;
  // From SO_PEERCRED on Unix sockets; -1 on TCP, where the caller is anonymous.
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  pid_t pid = -1;
  std::string remote;  // "ip:port" on TCP, "unix" otherwise
};

}  // namespace tern::http
