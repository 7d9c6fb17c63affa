// AgentClient: the CLI's synchronous HTTP/1.1 client of the local agent's Unix socket.
//
// Contract: Request() returns the agent's answer whatever its status, or an Error when the
// agent cannot be reached or its answer cannot be read; the Error's message is one line that
// names the socket and suggests the fix.
//
// Thread-safety: one instance per thread.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <tern/expected.hpp>

namespace tern::cli {

struct HttpReply {
  unsigned status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // names lower-cased

  bool ok() const { return status >= 200 && status < 300; }
  std::string Header(const std::string& lower_name) const;
  // The "error" field of a JSON error body, or a fallback naming the status.
  std::string ErrorMessage() const;
};

class AgentClient {
 public:
  explicit AgentClient(std::string socket_path);

  Expected<HttpReply> Request(const std::string& method, const std::string& target,
                              const std::string& body = "") const;
  // GETs `target` and hands each line of the body to `on_line` as it arrives (server-sent
  // events) until it returns false or the agent closes the stream.
  Expected<void> Stream(const std::string& target,
                        const std::function<bool(const std::string& line)>& on_line) const;
  const std::string& socket_path() const { return socket_path_; }

 private:
  std::string socket_path_;
};

// --node-socket, else $TERN_SOCKET, else /run/tern/ternd.sock.
std::string ResolveSocketPath(const std::string& flag);

}  // namespace tern::cli
