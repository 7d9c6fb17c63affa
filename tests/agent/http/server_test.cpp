#include "tern/http/server.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <filesystem>
#include <thread>

namespace tern::http {
namespace {

namespace asio = boost::asio;
namespace bhttp = boost::beast::http;

// A server on its own thread whose handler echoes what it learned about the request.
class ServerFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = (std::filesystem::temp_directory_path() /
             ("tern-http-" + std::to_string(getpid()) + ".sock"))
                .string();
    server_ = std::make_unique<HttpServer>(
        io_, [this](const Request& request, const Caller& caller, Responder respond) {
          if (request.target() == "/later") {
            std::thread([respond] {
              std::this_thread::sleep_for(std::chrono::milliseconds(50));
              respond.Send(TextResponse(200, "late", "text/plain"));
            }).detach();
            return;
          }
          const std::string body =
              std::string(request.method_string()) + " " + std::string(request.target()) +
              " uid=" + std::to_string(caller.uid) + " pid=" + std::to_string(caller.pid) +
              " len=" + std::to_string(request.body().size());
          respond.Send(TextResponse(200, body, "text/plain"));
        });
    auto unix_ok = server_->ListenUnix(path_);
    ASSERT_TRUE(unix_ok) << unix_ok.error().message;
    auto tcp_ok = server_->ListenTcp("127.0.0.1:0");
    ASSERT_TRUE(tcp_ok) << tcp_ok.error().message;
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    asio::post(io_, [this] { server_->Stop(); });
    io_.stop();
    thread_.join();
  }

  bhttp::response<bhttp::string_body> UnixRequest(bhttp::verb verb, const std::string& target,
                                                  std::string body = "") {
    asio::io_context io;
    asio::local::stream_protocol::socket socket(io);
    socket.connect(asio::local::stream_protocol::endpoint(path_));
    return Exchange(socket, verb, target, std::move(body));
  }

  bhttp::response<bhttp::string_body> TcpRequest(bhttp::verb verb, const std::string& target) {
    asio::io_context io;
    asio::ip::tcp::socket socket(io);
    socket.connect({asio::ip::make_address("127.0.0.1"), server_->TcpPort()});
    return Exchange(socket, verb, target, "");
  }

  template <typename Socket>
  bhttp::response<bhttp::string_body> Exchange(Socket& socket, bhttp::verb verb,
                                               const std::string& target, std::string body) {
    bhttp::request<bhttp::string_body> request{verb, target, 11};
    request.set(bhttp::field::host, "t");
    request.body() = std::move(body);
    request.prepare_payload();
    bhttp::write(socket, request);
    boost::beast::flat_buffer buffer;
    bhttp::response<bhttp::string_body> response;
    bhttp::read(socket, buffer, response);
    return response;
  }

  asio::io_context io_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  std::string path_;
};

TEST_F(ServerFixture, UnixCallerIsKnownFromPeerCredentials) {
  auto response = UnixRequest(bhttp::verb::post, "/v1/x?a=1", "body");
  EXPECT_EQ(response.result_int(), 200u);
  EXPECT_EQ(response.body(), "POST /v1/x?a=1 uid=" + std::to_string(getuid()) +
                                 " pid=" + std::to_string(getpid()) + " len=4");
}

TEST_F(ServerFixture, HandlerMayAnswerLaterFromAnotherThread) {
  EXPECT_EQ(UnixRequest(bhttp::verb::get, "/later").body(), "late");
}

TEST_F(ServerFixture, TcpIsReadOnly) {
  auto get = TcpRequest(bhttp::verb::get, "/v1/info");
  EXPECT_EQ(get.result_int(), 200u);
  EXPECT_NE(get.body().find("uid=" + std::to_string(static_cast<uid_t>(-1))), std::string::npos);
  auto post = TcpRequest(bhttp::verb::post, "/v1/jobs");
  EXPECT_EQ(post.result_int(), 403u);
  EXPECT_NE(post.body().find("read-only"), std::string::npos);
}

TEST_F(ServerFixture, MalformedRequestGets400AndTheServerGoesOn) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::snprintf(address.sun_path, sizeof address.sun_path, "%s", path_.c_str());
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  const std::string garbage = "THIS IS NOT HTTP\r\n\r\n";
  ASSERT_EQ(::write(fd, garbage.data(), garbage.size()), static_cast<ssize_t>(garbage.size()));
  char reply[512] = {};
  const ssize_t got = ::read(fd, reply, sizeof reply - 1);
  ::close(fd);
  ASSERT_GT(got, 0);
  EXPECT_NE(std::string(reply).find("400"), std::string::npos) << reply;
  EXPECT_EQ(UnixRequest(bhttp::verb::get, "/still/alive").result_int(), 200u);
}

TEST_F(ServerFixture, OversizedBodyGets413) {
  // The declared length alone is refused: the server need not read 17 MiB to say no.
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::snprintf(address.sun_path, sizeof address.sun_path, "%s", path_.c_str());
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  const std::string head = "POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 17825792\r\n\r\n";
  ASSERT_EQ(::write(fd, head.data(), head.size()), static_cast<ssize_t>(head.size()));
  char reply[512] = {};
  const ssize_t got = ::read(fd, reply, sizeof reply - 1);
  ::close(fd);
  ASSERT_GT(got, 0);
  EXPECT_NE(std::string(reply).find("413"), std::string::npos) << reply;
}

TEST_F(ServerFixture, SecondServerOnALiveSocketIsRefused) {
  asio::io_context other_io;
  HttpServer other(other_io, [](const Request&, const Caller&, Responder) {});
  auto listening = other.ListenUnix(path_);
  ASSERT_FALSE(listening);
  EXPECT_NE(listening.error().message.find("already listening"), std::string::npos);
}

TEST(HttpServerTest, StaleSocketFileIsReplaced) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("tern-http-stale-" + std::to_string(getpid()) + ".sock"))
                               .string();
  {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::snprintf(address.sun_path, sizeof address.sun_path, "%s", path.c_str());
    ::unlink(path.c_str());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    ::close(fd);  // the file stays, nobody listens
  }
  asio::io_context io;
  HttpServer server(io, [](const Request&, const Caller&, Responder) {});
  auto listening = server.ListenUnix(path);
  EXPECT_TRUE(listening) << listening.error().message;
  server.Stop();
}

}  // namespace
}  // namespace tern::http
