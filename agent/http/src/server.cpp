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
#include <boost/beast/ssl.hpp>
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
using LocalStream = beast::basic_stream<Local, asio::any_io_executor>;
using TcpStream = beast::tcp_stream;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

template <typename Stream>
constexpr bool kIsTls = std::is_same_v<Stream, TlsStream>;

constexpr std::uint32_t kHeaderLimit = 16 * 1024;

// The open connections across both listeners; a Session holds one ticket while it lives.
struct ConnectionCount {
  std::atomic<std::size_t> open{0};
  std::atomic<std::uint64_t> refused{0};
};

class ConnectionTicket {
 public:
  explicit ConnectionTicket(std::shared_ptr<ConnectionCount> count) : count_(std::move(count)) {
    ++count_->open;
  }
  ~ConnectionTicket() { --count_->open; }
  ConnectionTicket(const ConnectionTicket&) = delete;
  ConnectionTicket& operator=(const ConnectionTicket&) = delete;

 private:
  std::shared_ptr<ConnectionCount> count_;
};

struct Shared {
  Handler handler;
  ServerOptions options;
  std::shared_ptr<ConnectionCount> connections = std::make_shared<ConnectionCount>();
};

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

bool IsRead(bhttp::verb method) {
  return method == bhttp::verb::get || method == bhttp::verb::head;
}

// One connection: a Unix socket, plain TCP or TLS over TCP (Stream).
template <typename Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
 public:
  Session(Caller caller, Stream stream, std::shared_ptr<const Shared> shared)
      : caller_(std::move(caller)),
        stream_(std::move(stream)),
        shared_(std::move(shared)),
        ticket_(shared_->connections) {}

  void Start() {
    if constexpr (kIsTls<Stream>) {
      // The handshake counts against the first request's time.
      Lowest().expires_after(options().request_timeout);
      stream_.async_handshake(asio::ssl::stream_base::server,
                              [self = this->shared_from_this()](beast::error_code error) {
                                if (error) {
                                  spdlog::debug("http: TLS handshake with {} failed: {}",
                                                self->caller_.remote, error.message());
                                  self->Close();
                                  return;
                                }
                                self->DoRead();
                              });
    } else {
      DoRead();
    }
  }

 private:
  const ServerOptions& options() const { return shared_->options; }
  auto& Lowest() { return beast::get_lowest_layer(stream_); }

  void DoRead() {
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(options().body_limit);
    // One deadline for the whole request, header and body: a client trickling bytes cannot
    // hold the connection longer than this.
    Lowest().expires_after(options().request_timeout);
    bhttp::async_read_header(stream_, buffer_, *parser_,
                             [self = this->shared_from_this()](
                                 beast::error_code error, std::size_t) { self->OnHeader(error); });
  }

  // Returns true when the error ended the request (answered or closed).
  bool Failed(beast::error_code error) {
    if (!error) return false;
    if (error == bhttp::error::end_of_stream || error == asio::error::eof ||
        error == beast::error::timeout || error == asio::error::operation_aborted ||
        error == asio::error::connection_reset || error == asio::ssl::error::stream_truncated) {
      if (error == beast::error::timeout) {
        spdlog::debug("http: {} sent no whole request within {} ms; closed", caller_.remote,
                      options().request_timeout.count());
      }
      Close();
    } else if (error == bhttp::error::body_limit) {
      Write(ErrorResponse(413, "request body too large (limit " +
                                   std::to_string(options().body_limit) + " bytes)"),
            false);
    } else if (error == bhttp::error::header_limit) {
      Write(ErrorResponse(431, "request header too large"), false);
    } else {
      Write(ErrorResponse(400, "malformed HTTP request: " + error.message()), false);
    }
    return true;
  }

  // The header alone decides whether the body is worth reading: who is calling, and may they.
  void OnHeader(beast::error_code error) {
    if (Failed(error)) return;
    request_caller_ = caller_;
    const Request& header = parser_->get();
    if (caller_.transport == Caller::Transport::kTcp) {
      if (options().authenticate_tcp) {
        std::optional<Response> refused;
        try {
          refused = options().authenticate_tcp(header, request_caller_);
        } catch (const std::exception& failure) {
          spdlog::error("http: authenticating {} failed: {}", caller_.remote, failure.what());
          refused = ErrorResponse(500, "cannot check the token now");
        }
        if (refused) {
          Write(std::move(*refused), false);
          return;
        }
      }
      if (request_caller_.access != Caller::Access::kAdmin && !IsRead(header.method())) {
        Write(ErrorResponse(403, "read-only access: " + std::string(header.method_string()) +
                                     " needs an admin token or the agent's Unix socket"),
              false);
        return;
      }
    }
    if (parser_->is_done()) {
      OnRead();
      return;
    }
    bhttp::async_read(stream_, buffer_, *parser_,
                      [self = this->shared_from_this()](beast::error_code error, std::size_t) {
                        if (!self->Failed(error)) self->OnRead();
                      });
  }

  void OnRead() {
    request_ = parser_->release();
    Lowest().expires_never();
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
          // Open from now: what the handler sends at once (a replay) is queued behind the
          // header, which BeginEvents writes first.
          self->events_open_ = true;
          auto events = std::make_shared<SessionEvents>(self);
          // Open at once: events sent before BeginEvents runs (a replay) are queued after the
          // header, which BeginEvents, posted first, writes first.
          self->events_open_ = true;
          asio::post(self->stream_.get_executor(), [self] { self->BeginEvents(); });
          return events;
        });
    const Responder answer = responder;
    try {
      shared_->handler(request_, request_caller_, std::move(responder));
    } catch (const std::exception& failure) {
      spdlog::error("http: {} {} from {} failed: {}", std::string(request_.method_string()),
                    std::string(request_.target()), caller_.remote, failure.what());
      answer.Send(ErrorResponse(500, std::string("internal error: ") + failure.what()));
    }
  }

  void Write(Response response, bool keep_alive) {
    spdlog::debug("http {} {} {} ({} uid {})", std::string(request_.method_string()),
                  std::string(request_.target()), response.result_int(), caller_.remote,
                  static_cast<int>(request_caller_.uid));
    response_ = std::move(response);
    response_.keep_alive(keep_alive);
    response_.prepare_payload();
    Lowest().expires_after(options().request_timeout);
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
    Lowest().expires_never();
    event_queue_.insert(0,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        "Cache-Control: no-cache\r\nConnection: close\r\n\r\n");
    if (event_writing_.empty()) WriteEvents();
    // Nothing more is expected from the client: a read that completes means it has gone.
    stream_.async_read_some(buffer_.prepare(512),
                            [self = this->shared_from_this()](beast::error_code, std::size_t) {
                              self->events_open_ = false;
                              self->Close();
                            });
  }

  void QueueEvent(const std::string& block) {
    if (!events_open_) return;
    // A client that does not read would make the queue grow without end: drop it instead.
    if (event_queue_.size() + block.size() > options().event_queue_limit) {
      spdlog::warn("http: event stream to {} dropped: it reads too slowly ({} bytes queued)",
                   caller_.remote, event_queue_.size());
      events_open_ = false;
      event_queue_.clear();
      Close();
      return;
    }
    event_queue_ += block;
    if (event_writing_.empty() && began_) WriteEvents();
  }

  void WriteEvents() {
    began_ = true;
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
    Lowest().socket().shutdown(asio::socket_base::shutdown_both, ignored);
    Lowest().close();
  }

  Caller caller_;          // who the connection is (peer credentials or address)
  Caller request_caller_;  // and who this request is (with its token)
  Stream stream_;
  std::shared_ptr<const Shared> shared_;
  ConnectionTicket ticket_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  Request request_;
  Response response_;
  std::atomic<bool> events_open_{false};
  bool began_ = false;  // the event stream's header has been handed to the socket
  std::string event_queue_;
  std::string event_writing_;
};

template <typename Protocol>
class Listener : public std::enable_shared_from_this<Listener<Protocol>> {
 public:
  Listener(asio::io_context& io, std::shared_ptr<const Shared> shared)
      : io_(io), acceptor_(io), shared_(std::move(shared)) {}

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
    name_ = name;
    return {};
  }

  void Accept() {
    acceptor_.async_accept(
        asio::make_strand(io_), [self = this->shared_from_this()](
                                    beast::error_code error, typename Protocol::socket socket) {
          if (error == asio::error::operation_aborted || !self->acceptor_.is_open()) return;
          if (!error) self->Admit(std::move(socket));
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
  void Admit(typename Protocol::socket socket) {
    auto& count = *shared_->connections;
    if (count.open.load() >= shared_->options.max_connections) {
      // Over the cap: a short answer without blocking (a fresh socket's send buffer is empty),
      // then close. Logged for the first refusal and every 1000th after.
      if (count.refused++ % 1000 == 0) {
        spdlog::warn("http: {} connections open on {}, the limit; refusing more ({} so far)",
                     count.open.load(), name_, count.refused.load());
      }
      static constexpr std::string_view kBusy =
          "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
          "Content-Length: 44\r\nConnection: close\r\n\r\n"
          "{\"error\":\"too many connections, try again\"}";
      boost::system::error_code ignored;
      socket.non_blocking(true, ignored);
      socket.write_some(asio::buffer(kBusy.data(), kBusy.size()), ignored);
      socket.close(ignored);
      return;
    }
    Caller caller = CallerOf(socket);
    if constexpr (std::is_same_v<Protocol, Local>) {
      std::make_shared<Session<LocalStream>>(std::move(caller), LocalStream(std::move(socket)),
                                             shared_)
          ->Start();
    } else if (shared_->options.tcp_tls) {
      std::make_shared<Session<TlsStream>>(
          std::move(caller), TlsStream(TcpStream(std::move(socket)), *shared_->options.tcp_tls),
          shared_)
          ->Start();
    } else {
      std::make_shared<Session<TcpStream>>(std::move(caller), TcpStream(std::move(socket)), shared_)
          ->Start();
    }
  }

  asio::io_context& io_;
  typename Protocol::acceptor acceptor_;
  std::shared_ptr<const Shared> shared_;
  std::string name_;
};

}  // namespace

struct HttpServer::Impl {
  asio::io_context& io;
  std::shared_ptr<Shared> shared;
  std::shared_ptr<Listener<Local>> unix_listener;
  std::shared_ptr<Listener<Tcp>> tcp_listener;
  std::string unix_path;
};

HttpServer::HttpServer(asio::io_context& io, Handler handler, ServerOptions options)
    : impl_(std::make_unique<Impl>(
          Impl{io,
               std::make_shared<Shared>(Shared{std::move(handler), std::move(options)}),
               {},
               {},
               {}})) {}

std::size_t HttpServer::Connections() const { return impl_->shared->connections->open.load(); }

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
  auto listener = std::make_shared<Listener<Local>>(impl_->io, impl_->shared);
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
  auto listener = std::make_shared<Listener<Tcp>>(impl_->io, impl_->shared);
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
