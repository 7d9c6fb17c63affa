#include "tern/http/server.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <filesystem>
#include <list>
#include <nlohmann/json.hpp>

namespace tern::http {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using Tcp = asio::ip::tcp;
using Local = asio::local::stream_protocol;

constexpr std::uint64_t kBodyLimit = 16 * 1024 * 1024;
constexpr auto kIdleTimeout = std::chrono::seconds(30);

Caller CallerOf(Local::socket& socket) {
  Caller caller;
  caller.transport = Caller::Transport::kUnix;
  caller.remote = "unix";
  ucred credentials{};
  socklen_t length = sizeof credentials;
  if (::getsockopt(socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0) {
    caller.uid = credentials.uid;
    caller.gid = credentials.gid;
    caller.pid = credentials.pid;
  }
  return caller;
}

Caller CallerOf(Tcp::socket& socket) {
  Caller caller;
  boost::system::error_code error;
  const auto remote = socket.remote_endpoint(error);
  caller.remote = error ? "?" : remote.address().to_string() + ":" + std::to_string(remote.port());
  return caller;
}

template <typename Protocol>
class Session : public std::enable_shared_from_this<Session<Protocol>> {
 public:
  using Stream = beast::basic_stream<Protocol, asio::any_io_executor>;

  Session(typename Protocol::socket socket, const Handler& handler, bool read_only)
      : caller_(CallerOf(socket)),
        stream_(std::move(socket)),
        handler_(handler),
        read_only_(read_only) {}

  void Start() { DoRead(); }

 private:
  void DoRead() {
    parser_.emplace();
    parser_->body_limit(kBodyLimit);
    stream_.expires_after(kIdleTimeout);
    bhttp::async_read(stream_, buffer_, *parser_,
                      [self = this->shared_from_this()](beast::error_code error, std::size_t) {
                        self->OnRead(error);
                      });
  }

  void OnRead(beast::error_code error) {
    if (error == bhttp::error::end_of_stream || error == asio::error::eof ||
        error == beast::error::timeout || error == asio::error::operation_aborted ||
        error == asio::error::connection_reset) {
      Close();
      return;
    }
    if (error == bhttp::error::body_limit) {
      Write(ErrorResponse(413, "request body too large (limit 16 MiB)"), false);
      return;
    }
    if (error) {
      Write(ErrorResponse(400, "malformed HTTP request: " + error.message()), false);
      return;
    }
    request_ = parser_->release();
    stream_.expires_never();
    const auto method = request_.method();
    if (caller_.transport == Caller::Transport::kTcp && read_only_ && method != bhttp::verb::get &&
        method != bhttp::verb::head) {
      Write(ErrorResponse(403, "the TCP API is read-only; use the Unix socket"),
            request_.keep_alive());
      return;
    }
    // The responder keeps the session alive until the answer is written.
    auto self = this->shared_from_this();
    Responder responder(
        [self](Response response) {
          asio::post(self->stream_.get_executor(),
                     [self, response = std::move(response)]() mutable {
                       self->Write(std::move(response), self->request_.keep_alive());
                     });
        },
        [self]() -> std::shared_ptr<EventStream> {
          auto events = std::make_shared<SessionEvents>(self);
          // Open at once: events sent before BeginEvents runs (a replay) are queued after the
          // header, which BeginEvents, posted first, writes first.
          self->events_open_ = true;
          asio::post(self->stream_.get_executor(), [self] { self->BeginEvents(); });
          return events;
        });
    handler_(request_, caller_, std::move(responder));
  }

  void Write(Response response, bool keep_alive) {
    spdlog::debug("http {} {} {} ({} uid {})", std::string(request_.method_string()),
                  std::string(request_.target()), response.result_int(), caller_.remote,
                  static_cast<int>(caller_.uid));
    response_ = std::move(response);
    response_.keep_alive(keep_alive);
    response_.prepare_payload();
    stream_.expires_after(kIdleTimeout);
    bhttp::async_write(
        stream_, response_,
        [self = this->shared_from_this(), keep_alive](beast::error_code error, std::size_t) {
          if (error || !keep_alive) {
            self->Close();
            return;
          }
          self->DoRead();
        });
  }

  // Server-sent events: the session writes raw "event:/data:" blocks after a header and stays
  // open until the client leaves (seen by a read that completes) or the stream is dropped.
  class SessionEvents : public EventStream {
   public:
    explicit SessionEvents(std::shared_ptr<Session> session) : session_(std::move(session)) {}
    ~SessionEvents() override {
      auto session = session_;
      asio::post(session->stream_.get_executor(), [session] { session->Close(); });
    }
    using EventStream::Send;
    bool Send(std::string_view event, std::string_view data, std::string_view id) override {
      if (!session_->events_open_) return false;
      std::string block;
      if (!id.empty()) block = "id: " + std::string(id) + "\n";
      block += "event: " + std::string(event) + "\ndata: " + std::string(data) + "\n\n";
      auto session = session_;
      asio::post(session->stream_.get_executor(),
                 [session, block = std::move(block)] { session->QueueEvent(block); });
      return true;
    }
    bool IsOpen() const override { return session_->events_open_; }

   private:
    std::shared_ptr<Session> session_;
  };

  void BeginEvents() {
    events_open_ = true;
    stream_.expires_never();
    QueueEvent(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        "Connection: close\r\n\r\n");
    // Nothing more is expected from the client: a read that completes means it has gone.
    stream_.async_read_some(buffer_.prepare(512),
                            [self = this->shared_from_this()](beast::error_code, std::size_t) {
                              self->events_open_ = false;
                              self->Close();
                            });
  }

  void QueueEvent(const std::string& block) {
    if (!events_open_) return;
    event_queue_ += block;
    if (event_writing_.empty()) WriteEvents();
  }

  void WriteEvents() {
    if (event_queue_.empty() || !events_open_) return;
    event_writing_.swap(event_queue_);
    asio::async_write(stream_, asio::buffer(event_writing_),
                      [self = this->shared_from_this()](beast::error_code error, std::size_t) {
                        self->event_writing_.clear();
                        if (error) {
                          self->events_open_ = false;
                          self->Close();
                          return;
                        }
                        self->WriteEvents();
                      });
  }

  void Close() {
    beast::error_code ignored;
    stream_.socket().shutdown(Protocol::socket::shutdown_both, ignored);
    stream_.close();
  }

  Caller caller_;
  Stream stream_;
  const Handler& handler_;
  bool read_only_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  Request request_;
  Response response_;
  std::atomic<bool> events_open_{false};
  std::string event_queue_;
  std::string event_writing_;
};

template <typename Protocol>
class Listener : public std::enable_shared_from_this<Listener<Protocol>> {
 public:
  Listener(asio::io_context& io, const Handler& handler, bool read_only)
      : io_(io), acceptor_(io), handler_(handler), read_only_(read_only) {}

  Expected<void> Open(const typename Protocol::endpoint& endpoint, const std::string& name) {
    boost::system::error_code error;
    acceptor_.open(endpoint.protocol(), error);
    if (!error) {
      if constexpr (std::is_same_v<Protocol, Tcp>) {
        acceptor_.set_option(asio::socket_base::reuse_address(true), error);
      }
    }
    if (!error) acceptor_.bind(endpoint, error);
    if (!error) acceptor_.listen(asio::socket_base::max_listen_connections, error);
    if (error) return Fail("cannot listen on " + name + ": " + error.message());
    return {};
  }

  void Accept() {
    acceptor_.async_accept(
        asio::make_strand(io_), [self = this->shared_from_this()](
                                    beast::error_code error, typename Protocol::socket socket) {
          if (error == asio::error::operation_aborted || !self->acceptor_.is_open()) return;
          if (!error) {
            std::make_shared<Session<Protocol>>(std::move(socket), self->handler_, self->read_only_)
                ->Start();
          }
          self->Accept();
        });
  }

  void Close() {
    boost::system::error_code ignored;
    acceptor_.close(ignored);
  }

  std::uint16_t Port() const {
    if constexpr (std::is_same_v<Protocol, Tcp>) {
      boost::system::error_code error;
      return acceptor_.local_endpoint(error).port();
    }
    return 0;
  }

 private:
  asio::io_context& io_;
  typename Protocol::acceptor acceptor_;
  const Handler& handler_;
  bool read_only_;
};

}  // namespace

struct HttpServer::Impl {
  asio::io_context& io;
  Handler handler;
  bool read_only_tcp;
  std::shared_ptr<Listener<Local>> unix_listener;
  std::shared_ptr<Listener<Tcp>> tcp_listener;
  std::string unix_path;
};

HttpServer::HttpServer(asio::io_context& io, Handler handler, bool read_only_tcp)
    : impl_(std::make_unique<Impl>(Impl{io, std::move(handler), read_only_tcp, {}, {}, {}})) {}

HttpServer::~HttpServer() { Stop(); }

Expected<void> HttpServer::ListenUnix(const std::string& path, mode_t mode) {
  std::error_code fs_error;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), fs_error);
  if (std::filesystem::exists(path)) {
    Local::socket probe(impl_->io);
    boost::system::error_code error;
    probe.connect(Local::endpoint(path), error);
    if (!error) return Fail("another server is already listening on " + path);
    std::filesystem::remove(path, fs_error);  // stale: its server is gone
  }
  auto listener = std::make_shared<Listener<Local>>(impl_->io, impl_->handler, false);
  if (auto opened = listener->Open(Local::endpoint(path), path); !opened) return opened;
  ::chmod(path.c_str(), mode);
  listener->Accept();
  impl_->unix_listener = std::move(listener);
  impl_->unix_path = path;
  return {};
}

Expected<void> HttpServer::ListenTcp(const std::string& host_port) {
  const auto colon = host_port.rfind(':');
  if (colon == std::string::npos) return Fail("TCP listen address must be host:port: " + host_port);
  boost::system::error_code error;
  const auto address = asio::ip::make_address(host_port.substr(0, colon), error);
  if (error) return Fail("bad TCP listen address " + host_port + ": " + error.message());
  std::uint16_t port = 0;
  try {
    port = static_cast<std::uint16_t>(std::stoul(host_port.substr(colon + 1)));
  } catch (const std::exception&) {
    return Fail("bad port in " + host_port);
  }
  auto listener = std::make_shared<Listener<Tcp>>(impl_->io, impl_->handler, impl_->read_only_tcp);
  if (auto opened = listener->Open(Tcp::endpoint(address, port), host_port); !opened) {
    return opened;
  }
  listener->Accept();
  impl_->tcp_listener = std::move(listener);
  return {};
}

std::uint16_t HttpServer::TcpPort() const {
  return impl_->tcp_listener ? impl_->tcp_listener->Port() : 0;
}

void HttpServer::Stop() {
  if (impl_->unix_listener) {
    impl_->unix_listener->Close();
    impl_->unix_listener.reset();
    std::error_code ignored;
    std::filesystem::remove(impl_->unix_path, ignored);
  }
  if (impl_->tcp_listener) {
    impl_->tcp_listener->Close();
    impl_->tcp_listener.reset();
  }
}

Response TextResponse(unsigned status, std::string body, const std::string& content_type) {
  Response response{static_cast<bhttp::status>(status), 11};
  response.set(bhttp::field::content_type, content_type);
  response.body() = std::move(body);
  response.prepare_payload();
  return response;
}

Response ErrorResponse(unsigned status, const std::string& message) {
  return TextResponse(status, nlohmann::json{{"error", message}}.dump() + "\n", "application/json");
}

}  // namespace tern::http
