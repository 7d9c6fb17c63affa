#include "tern/http/server.hpp"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <filesystem>
#include <future>
#include <thread>

#include "tls_test_certs.hpp"

namespace tern::http {
namespace {

namespace asio = boost::asio;
namespace bhttp = boost::beast::http;

// A server on its own thread whose handler echoes what it learned about the request.
class ServerFixture : public ::testing::Test {
 protected:
  void SetUp() override { Start(); }
  // Tests that need other limits stop the default server and start their own.
  void Start(ServerOptions options = {}) {
    if (server_) TearDown();
    io_.restart();
    path_ = (std::filesystem::temp_directory_path() /
             ("tern-http-" + std::to_string(getpid()) + ".sock"))
                .string();
    server_ = std::make_unique<HttpServer>(
        io_,
        [this](const Request& request, const Caller& caller, Responder respond) {
          if (request.target() == "/throw") throw std::runtime_error("a handler bug");
          if (request.target() == "/events") {
            auto stream = respond.StartEventStream();
            stream->Send("hello", "replayed");
            streams_.push_back(stream);
            return;
          }
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
              " len=" + std::to_string(request.body().size()) + " token=" + caller.token;
          respond.Send(TextResponse(200, body, "text/plain"));
        },
        std::move(options));
    auto unix_ok = server_->ListenUnix(path_);
    ASSERT_TRUE(unix_ok) << unix_ok.error().message;
    auto tcp_ok = server_->ListenTcp("127.0.0.1:0");
    ASSERT_TRUE(tcp_ok) << tcp_ok.error().message;
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    if (!server_) return;
    // Stopped on its own thread before the loop ends: a Stop left queued would otherwise run
    // against the next test's server.
    std::promise<void> stopped;
    asio::post(io_, [this, &stopped] {
      streams_.clear();
      server_->Stop();
      stopped.set_value();
    });
    stopped.get_future().wait();
    io_.stop();
    thread_.join();
    server_.reset();
  }

  // A raw connection, for requests a well-behaved client would not send.
  int Connect(bool tcp = false) {
    int fd = -1;
    if (tcp) {
      fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in address{};
      address.sin_family = AF_INET;
      address.sin_port = htons(server_->TcpPort());
      address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    } else {
      fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
      sockaddr_un address{};
      address.sun_family = AF_UNIX;
      std::snprintf(address.sun_path, sizeof address.sun_path, "%s", path_.c_str());
      EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    }
    // A server that waits where it should answer fails the test instead of hanging it.
    timeval timeout{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    return fd;
  }
  static void Send(int fd, const std::string& text) {
    ASSERT_EQ(::write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  }
  // Everything the server sends until it closes (or 10 s pass).
  static std::string ReadAll(int fd) {
    std::string all;
    char chunk[4096];
    for (;;) {
      const ssize_t got = ::read(fd, chunk, sizeof chunk);
      if (got <= 0) break;
      all.append(chunk, static_cast<std::size_t>(got));
    }
    return all;
  }

  bhttp::response<bhttp::string_body> UnixRequest(bhttp::verb verb, const std::string& target,
                                                  std::string body = "") {
    asio::io_context io;
    asio::local::stream_protocol::socket socket(io);
    socket.connect(asio::local::stream_protocol::endpoint(path_));
    return Exchange(socket, verb, target, std::move(body));
  }

  bhttp::response<bhttp::string_body> TcpRequest(bhttp::verb verb, const std::string& target,
                                                 const std::string& token = "") {
    asio::io_context io;
    asio::ip::tcp::socket socket(io);
    socket.connect({asio::ip::make_address("127.0.0.1"), server_->TcpPort()});
    return Exchange(socket, verb, target, "", token);
  }

  template <typename Socket>
  bhttp::response<bhttp::string_body> Exchange(Socket& socket, bhttp::verb verb,
                                               const std::string& target, std::string body,
                                               const std::string& token = "") {
    bhttp::request<bhttp::string_body> request{verb, target, 11};
    request.set(bhttp::field::host, "t");
    if (!token.empty()) request.set(bhttp::field::authorization, "Bearer " + token);
    request.body() = std::move(body);
    request.prepare_payload();
    bhttp::write(socket, request);
    boost::beast::flat_buffer buffer;
    bhttp::response<bhttp::string_body> response;
    bhttp::read(socket, buffer, response);
    return response;
  }

  asio::io_context io_;
  std::vector<std::shared_ptr<EventStream>> streams_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  std::string path_;
};

TEST_F(ServerFixture, UnixCallerIsKnownFromPeerCredentials) {
  auto response = UnixRequest(bhttp::verb::post, "/v1/x?a=1", "body");
  EXPECT_EQ(response.result_int(), 200u);
  EXPECT_EQ(response.body(), "POST /v1/x?a=1 uid=" + std::to_string(getuid()) +
                                 " pid=" + std::to_string(getpid()) + " len=4 token=");
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

ServerOptions WithTokens() {
  ServerOptions options;
  options.authenticate_tcp = [](const Request& header, Caller& caller) -> std::optional<Response> {
    const auto field = header.find(bhttp::field::authorization);
    if (field == header.end()) return ErrorResponse(401, "no token");
    if (field->value() == "Bearer admin") {
      caller.access = Caller::Access::kAdmin;
      caller.uid = 0;
    } else if (field->value() == "Bearer reader") {
      caller.access = Caller::Access::kReadOnly;
    } else {
      return ErrorResponse(401, "unknown token");
    }
    caller.token = std::string(field->value().substr(7));
    return std::nullopt;
  };
  return options;
}

TEST_F(ServerFixture, TcpCallersAreWhoTheirTokenSays) {
  Start(WithTokens());
  EXPECT_EQ(TcpRequest(bhttp::verb::get, "/v1/info").result_int(), 401u);
  EXPECT_EQ(TcpRequest(bhttp::verb::get, "/v1/info", "forged").result_int(), 401u);
  auto read = TcpRequest(bhttp::verb::get, "/v1/info", "reader");
  EXPECT_EQ(read.result_int(), 200u);
  EXPECT_NE(read.body().find("token=reader"), std::string::npos) << read.body();
  auto write = TcpRequest(bhttp::verb::post, "/v1/jobs", "reader");
  EXPECT_EQ(write.result_int(), 403u) << "a read-only token may only GET";
  auto admin = TcpRequest(bhttp::verb::post, "/v1/jobs", "admin");
  EXPECT_EQ(admin.result_int(), 200u);
  EXPECT_NE(admin.body().find("uid=0 "), std::string::npos) << admin.body();
}

TEST_F(ServerFixture, AWriteWithoutAdminIsRefusedBeforeItsBodyIsRead) {
  Start(WithTokens());
  int fd = Connect(/*tcp=*/true);
  // A body is announced but never sent: the answer must not wait for it.
  Send(fd,
       "POST /v1/jobs HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer reader\r\n"
       "Content-Length: 1000000\r\n\r\n");
  const std::string reply = ReadAll(fd);
  ::close(fd);
  EXPECT_NE(reply.find(" 403 "), std::string::npos) << reply;
  fd = Connect(/*tcp=*/true);
  Send(fd, "POST /v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n");
  const std::string anonymous = ReadAll(fd);
  ::close(fd);
  EXPECT_NE(anonymous.find(" 401 "), std::string::npos) << anonymous;
}

TEST_F(ServerFixture, ConnectionsOverTheCapAre503AndTheServerGoesOn) {
  ServerOptions options;
  options.max_connections = 2;
  Start(options);
  int first = Connect();
  int second = Connect();
  // Both are admitted once the server has seen them.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (server_->Connections() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::yield();
  }
  ASSERT_EQ(server_->Connections(), 2u);
  int third = Connect();
  const std::string refused = ReadAll(third);
  ::close(third);
  EXPECT_NE(refused.find(" 503 "), std::string::npos) << refused;
  EXPECT_NE(refused.find("too many connections"), std::string::npos) << refused;
  ::close(first);
  ::close(second);
  while (server_->Connections() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::yield();
  }
  EXPECT_EQ(UnixRequest(bhttp::verb::get, "/again").result_int(), 200u);
}

TEST_F(ServerFixture, ARequestThatDoesNotArriveInTimeIsClosed) {
  ServerOptions options;
  options.request_timeout = std::chrono::milliseconds(300);
  Start(options);
  int fd = Connect();
  const auto started = std::chrono::steady_clock::now();
  Send(fd, "GET /slow HTTP/1.1\r\nHost: t\r\n");  // the header never ends
  const std::string reply = ReadAll(fd);
  const auto waited = std::chrono::steady_clock::now() - started;
  ::close(fd);
  EXPECT_EQ(reply, "") << "closed without an answer";
  EXPECT_LT(waited, std::chrono::seconds(5)) << "closed by the request timeout, not ours";
  EXPECT_EQ(UnixRequest(bhttp::verb::get, "/still/alive").result_int(), 200u);
}

TEST_F(ServerFixture, AHandlerThatThrowsGets500AndTheServerGoesOn) {
  auto response = UnixRequest(bhttp::verb::get, "/throw");
  EXPECT_EQ(response.result_int(), 500u);
  EXPECT_NE(response.body().find("a handler bug"), std::string::npos) << response.body();
  EXPECT_EQ(UnixRequest(bhttp::verb::get, "/still/alive").result_int(), 200u);
}

TEST_F(ServerFixture, AnEventStreamReplaysWhatWasSentAtOnce) {
  int fd = Connect();
  Send(fd, "GET /events HTTP/1.1\r\nHost: t\r\n\r\n");
  std::string got;
  char chunk[1024];
  while (got.find("replayed") == std::string::npos) {
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    ASSERT_GT(n, 0) << "the stream closed or stalled; so far: " << got;
    got.append(chunk, static_cast<std::size_t>(n));
  }
  ::close(fd);
  EXPECT_EQ(got.find("HTTP/1.1 200 OK"), 0u) << got;
  EXPECT_NE(got.find("event: hello\ndata: replayed\n\n"), std::string::npos) << got;
}

TEST_F(ServerFixture, AnEventReaderThatDoesNotReadIsDropped) {
  ServerOptions options;
  options.event_queue_limit = 64 * 1024;
  Start(options);
  int fd = Connect();
  Send(fd, "GET /events HTTP/1.1\r\nHost: t\r\n\r\n");
  // The client never reads again. Events are sent until the server gives up on it; without a
  // bound this would queue all 256 MiB.
  std::shared_ptr<EventStream> stream;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!stream && std::chrono::steady_clock::now() < deadline) {
    std::promise<std::shared_ptr<EventStream>> found;
    asio::post(io_, [&] { found.set_value(streams_.empty() ? nullptr : streams_.back()); });
    stream = found.get_future().get();
  }
  ASSERT_TRUE(stream) << "the handler never opened the stream";
  const std::string event(4096, 'x');
  bool dropped = false;
  for (int i = 0; i < 64 * 1024 && !dropped; ++i) {
    // Sent on the server's thread, as the agent does; each wait lets the server's writes run.
    std::promise<bool> sent;
    asio::post(io_, [&] { sent.set_value(stream->Send("x", event)); });
    dropped = !sent.get_future().get();
  }
  ::close(fd);
  EXPECT_TRUE(dropped) << "a reader that never reads was kept";
  EXPECT_EQ(UnixRequest(bhttp::verb::get, "/still/alive").result_int(), 200u);
}

TEST_F(ServerFixture, WithTlsTheTcpListenerSpeaksOnlyTls) {
  ipc::testing::TestCa ca;
  const auto files = ca.Issue("node1");
  auto server_tls = ipc::MakeTlsContext(files, ipc::TlsRole::kServer);
  ASSERT_TRUE(server_tls) << server_tls.error().message;
  (*server_tls)->set_verify_mode(asio::ssl::verify_none);
  ServerOptions options = WithTokens();
  options.tcp_tls = *server_tls;
  Start(options);

  // A client that checks the node's certificate against the cluster CA, as a dashboard would.
  asio::ssl::context client_tls(asio::ssl::context::tls_client);
  client_tls.load_verify_file(files.ca);
  client_tls.set_verify_mode(asio::ssl::verify_peer);
  asio::io_context io;
  boost::beast::ssl_stream<asio::ip::tcp::socket> stream(io, client_tls);
  stream.next_layer().connect({asio::ip::make_address("127.0.0.1"), server_->TcpPort()});
  stream.handshake(asio::ssl::stream_base::client);
  bhttp::request<bhttp::string_body> request{bhttp::verb::get, "/v1/info", 11};
  request.set(bhttp::field::host, "t");
  request.set(bhttp::field::authorization, "Bearer reader");
  bhttp::write(stream, request);
  boost::beast::flat_buffer buffer;
  bhttp::response<bhttp::string_body> response;
  bhttp::read(stream, buffer, response);
  EXPECT_EQ(response.result_int(), 200u);
  EXPECT_NE(response.body().find("token=reader"), std::string::npos) << response.body();

  // Plain HTTP to the TLS port gets no HTTP answer.
  int fd = Connect(/*tcp=*/true);
  Send(fd, "GET /v1/info HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer reader\r\n\r\n");
  const std::string plain = ReadAll(fd);
  ::close(fd);
  EXPECT_EQ(plain.find("HTTP/1.1 200"), std::string::npos) << plain;
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
