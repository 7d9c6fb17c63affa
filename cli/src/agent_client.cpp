#include "tern/cli/agent_client.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <cstdlib>
#include <nlohmann/json.hpp>

namespace tern::cli {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;

std::string HttpReply::Header(const std::string& lower_name) const {
  auto found = headers.find(lower_name);
  return found == headers.end() ? "" : found->second;
}

std::string HttpReply::ErrorMessage() const {
  auto json = nlohmann::json::parse(body, nullptr, false);
  if (json.is_object() && json.contains("error") && json["error"].is_string()) {
    return json["error"].get<std::string>();
  }
  return "the agent answered HTTP " + std::to_string(status);
}

Expected<void> AgentClient::Stream(
    const std::string& target, const std::function<bool(const std::string& line)>& on_line) const {
  asio::io_context io;
  asio::local::stream_protocol::socket socket(io);
  boost::system::error_code error;
  socket.connect(asio::local::stream_protocol::endpoint(socket_path_), error);
  if (error) {
    return Fail("cannot reach the agent at " + socket_path_ + ": " + error.message() +
                " (is ternd running? try 'tern doctor')");
  }
  const std::string request = "GET " + target + " HTTP/1.1\r\nHost: ternd\r\n\r\n";
  asio::write(socket, asio::buffer(request), error);
  if (error) return Fail("cannot send to the agent: " + error.message());
  std::string pending;
  bool in_body = false;
  char buffer[4096];
  while (true) {
    const std::size_t n = socket.read_some(asio::buffer(buffer), error);
    if (error) break;
    pending.append(buffer, n);
    if (!in_body) {
      const auto end = pending.find("\r\n\r\n");
      if (end == std::string::npos) continue;
      if (pending.rfind("HTTP/1.1 200", 0) != 0) {
        return Fail("the agent refused the event stream: " + pending.substr(0, pending.find('\r')));
      }
      pending.erase(0, end + 4);
      in_body = true;
    }
    std::size_t newline;
    while ((newline = pending.find('\n')) != std::string::npos) {
      const std::string line = pending.substr(0, newline);
      pending.erase(0, newline + 1);
      if (!on_line(line)) return {};
    }
  }
  return Fail("the agent closed the event stream");
}

std::string ResolveSocketPath(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* env = std::getenv("TERN_SOCKET"); env != nullptr && *env != '\0') return env;
  return "/run/tern/ternd.sock";
}

AgentClient::AgentClient(std::string socket_path) : socket_path_(std::move(socket_path)) {}

Expected<HttpReply> AgentClient::Request(const std::string& method, const std::string& target,
                                         const std::string& body) const {
  asio::io_context io;
  asio::local::stream_protocol::socket socket(io);
  boost::system::error_code error;
  socket.connect(asio::local::stream_protocol::endpoint(socket_path_), error);
  if (error) {
    return Fail("cannot reach the agent at " + socket_path_ + ": " + error.message() +
                " (is ternd running? try 'tern doctor')");
  }
  http::request<http::string_body> request{http::string_to_verb(method), target, 11};
  request.set(http::field::host, "ternd");
  request.set(http::field::user_agent, "tern-cli");
  if (!body.empty()) request.set(http::field::content_type, "application/json");
  request.body() = body;
  request.prepare_payload();
  http::write(socket, request, error);
  if (error) return Fail("cannot send to the agent at " + socket_path_ + ": " + error.message());
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 * 1024 * 1024);
  http::read(socket, buffer, parser, error);
  if (error) return Fail("no answer from the agent at " + socket_path_ + ": " + error.message());
  auto response = parser.release();
  HttpReply reply;
  reply.status = response.result_int();
  reply.body = std::move(response.body());
  for (const auto& field : response) {
    std::string name(field.name_string());
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    reply.headers[name] = std::string(field.value());
  }
  return reply;
}

}  // namespace tern::cli
