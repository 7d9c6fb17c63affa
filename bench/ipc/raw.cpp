// tern-bench-ipc-raw: the baselines of bench/ipc — a raw Unix stream socket, raw TCP
// (TCP_NODELAY) and ZeroMQ (libzmq) between two processes.
//
//   tern-bench-ipc-raw {unix,tcp,zmq}-{server,client} {pingpong,stream}
//       [--size S] [--count N] [--warmup W] [--host H] [--port P] [--path F] [--label L]
//
// The server serves exactly one run (the same OP, --size, --count and --warmup as its client)
// and exits; the client prints one JSON line on stdout.
//
// Raw sockets frame every message as [u32 length, big-endian][payload].
//   pingpong: the client writes one frame (header and payload in one write), the server reads it
//     and writes it back the same way; one round trip per message, timed one by one.
//   stream: the sender appends frames to a 64 KiB buffer and writes the buffer when the next
//     frame would not fit (one write per ~963 messages of 64 B, per 15 of 4 KiB); a message
//     larger than the buffer goes out at once as one writev(header, payload). The receiver
//     reads into a 256 KiB buffer and parses frames in place; a larger message is assembled in
//     a buffer of its own. After the last message the receiver writes one byte back, and the
//     sender's clock stops when that byte arrives.
// ZeroMQ: REQ/REP for pingpong (zmq_send / zmq_recv); PUSH/PULL for stream, one zmq_send per
//   message (libzmq batches on its own), with a second PUSH/PULL pair (port + 1, or PATH.ack)
//   that carries the receiver's confirmations. With --path the endpoints are ipc://PATH.
// Both stream variants first send --warmup messages and wait for their confirmation, untimed.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#include <zmq.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "common.hpp"

namespace tern::bench {
namespace {

constexpr std::string_view kUsage =
    "tern-bench-ipc-raw {unix,tcp,zmq}-{server,client} {pingpong,stream} [--size S] "
    "[--count N] [--warmup W] [--host H] [--port P] [--path F] [--label L]";
constexpr std::size_t kBatchBytes = 64 * 1024;
constexpr std::size_t kReadBufferBytes = 256 * 1024;

[[noreturn]] void DieErrno(const std::string& what) { Die(what + ": " + std::strerror(errno)); }

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

void WriteAll(int fd, const void* data, std::size_t length) {
  const char* p = static_cast<const char*>(data);
  while (length > 0) {
    const ssize_t n = ::write(fd, p, length);
    if (n < 0) {
      if (errno == EINTR) continue;
      DieErrno("write");
    }
    p += n;
    length -= static_cast<std::size_t>(n);
  }
}

void WriteVAll(int fd, iovec* iov, int count) {
  while (count > 0) {
    ssize_t n = ::writev(fd, iov, count);
    if (n < 0) {
      if (errno == EINTR) continue;
      DieErrno("writev");
    }
    while (count > 0 && static_cast<std::size_t>(n) >= iov->iov_len) {
      n -= static_cast<ssize_t>(iov->iov_len);
      ++iov;
      --count;
    }
    if (count > 0) {
      iov->iov_base = static_cast<char*>(iov->iov_base) + n;
      iov->iov_len -= static_cast<std::size_t>(n);
    }
  }
}

void ReadExact(int fd, void* data, std::size_t length) {
  char* p = static_cast<char*>(data);
  while (length > 0) {
    const ssize_t n = ::read(fd, p, length);
    if (n < 0) {
      if (errno == EINTR) continue;
      DieErrno("read");
    }
    if (n == 0) Die("the peer closed the connection");
    p += n;
    length -= static_cast<std::size_t>(n);
  }
}

void PutU32(char* out, std::uint32_t v) {
  v = htonl(v);
  std::memcpy(out, &v, 4);
}

std::uint32_t GetU32(const char* in) {
  std::uint32_t v = 0;
  std::memcpy(&v, in, 4);
  return ntohl(v);
}

// Reads length-prefixed frames through a 256 KiB buffer; a message that does not fit is
// assembled in a buffer of its own.
class FrameReader {
 public:
  explicit FrameReader(int fd) : fd_(fd), buffer_(kReadBufferBytes) {}

  // The next message's payload; valid until the next call.
  std::string_view Next() {
    Fill(4);
    const std::size_t length = GetU32(buffer_.data() + begin_);
    if (4 + length <= buffer_.size()) {
      Fill(4 + length);
      const std::string_view payload(buffer_.data() + begin_ + 4, length);
      begin_ += 4 + length;
      return payload;
    }
    begin_ += 4;
    large_.resize(length);
    const std::size_t have = std::min(length, end_ - begin_);
    std::memcpy(large_.data(), buffer_.data() + begin_, have);
    begin_ += have;
    ReadExact(fd_, large_.data() + have, length - have);
    return {large_.data(), length};
  }

 private:
  void Fill(std::size_t wanted) {
    if (end_ - begin_ >= wanted) return;
    if (begin_ + wanted > buffer_.size()) {
      std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
    while (end_ - begin_ < wanted) {
      const ssize_t n = ::read(fd_, buffer_.data() + end_, buffer_.size() - end_);
      if (n < 0) {
        if (errno == EINTR) continue;
        DieErrno("read");
      }
      if (n == 0) Die("the peer closed the connection");
      end_ += static_cast<std::size_t>(n);
    }
  }

  int fd_;
  std::vector<char> buffer_;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
  std::vector<char> large_;
};

// Appends frames to a 64 KiB batch and writes it when the next frame would not fit.
class FrameWriter {
 public:
  explicit FrameWriter(int fd) : fd_(fd) { batch_.reserve(kBatchBytes); }

  void Add(std::string_view payload) {
    if (4 + payload.size() > kBatchBytes) {
      Flush();
      char header[4];
      PutU32(header, static_cast<std::uint32_t>(payload.size()));
      iovec iov[2] = {{header, 4}, {const_cast<char*>(payload.data()), payload.size()}};
      WriteVAll(fd_, iov, 2);
      return;
    }
    if (batch_.size() + 4 + payload.size() > kBatchBytes) Flush();
    const std::size_t at = batch_.size();
    batch_.resize(at + 4 + payload.size());
    PutU32(batch_.data() + at, static_cast<std::uint32_t>(payload.size()));
    std::memcpy(batch_.data() + at + 4, payload.data(), payload.size());
  }

  void Flush() {
    if (!batch_.empty()) WriteAll(fd_, batch_.data(), batch_.size());
    batch_.clear();
  }

 private:
  int fd_;
  std::vector<char> batch_;
};

// ---------------------------------------------------------------- connection set-up

void SetNoDelay(int fd) {
  const int one = 1;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    DieErrno("TCP_NODELAY");
  }
}

sockaddr_un UnixAddress(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof address.sun_path) Die("socket path too long: " + path);
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  return address;
}

sockaddr_in TcpAddress(const std::string& host, int port) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &address.sin_addr) != 1) Die("bad address " + host);
  return address;
}

Fd AcceptOne(Fd& listener) {
  if (::listen(listener.get(), 1) != 0) DieErrno("listen");
  Fd connection(::accept(listener.get(), nullptr, nullptr));
  if (connection.get() < 0) DieErrno("accept");
  return connection;
}

Fd ServeUnix(const Options& options) {
  Fd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (listener.get() < 0) DieErrno("socket");
  ::unlink(options.path.c_str());
  const sockaddr_un address = UnixAddress(options.path);
  if (::bind(listener.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    DieErrno("bind " + options.path);
  }
  Fd connection = AcceptOne(listener);
  ::unlink(options.path.c_str());
  return connection;
}

Fd ServeTcp(const Options& options) {
  Fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (listener.get() < 0) DieErrno("socket");
  const int one = 1;
  ::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  const sockaddr_in address = TcpAddress("0.0.0.0", options.port);
  if (::bind(listener.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    DieErrno("bind port " + std::to_string(options.port));
  }
  Fd connection = AcceptOne(listener);
  SetNoDelay(connection.get());
  return connection;
}

// Connects, retrying for 10 s while the server is not listening yet.
template <typename Address>
Fd ConnectWithRetry(int family, const Address& address, const std::string& what) {
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (true) {
    Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) DieErrno("socket");
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0) {
      return fd;
    }
    if ((errno != ECONNREFUSED && errno != ENOENT) || Clock::now() > deadline) {
      DieErrno("connect " + what);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

Fd ConnectUnix(const Options& options) {
  return ConnectWithRetry(AF_UNIX, UnixAddress(options.path), options.path);
}

Fd ConnectTcp(const Options& options) {
  Fd fd = ConnectWithRetry(AF_INET, TcpAddress(options.host, options.port),
                           options.host + ":" + std::to_string(options.port));
  SetNoDelay(fd.get());
  return fd;
}

// ---------------------------------------------------------------- raw sockets

void SocketServer(const Options& options, int fd) {
  FrameReader reader(fd);
  if (options.op == "pingpong") {
    std::vector<char> reply;
    for (std::uint64_t i = 0; i < options.warmup + options.count; ++i) {
      const std::string_view message = reader.Next();
      reply.resize(4 + message.size());
      PutU32(reply.data(), static_cast<std::uint32_t>(message.size()));
      std::memcpy(reply.data() + 4, message.data(), message.size());
      WriteAll(fd, reply.data(), reply.size());
    }
    return;
  }
  for (const std::uint64_t n : {options.warmup, options.count}) {
    for (std::uint64_t i = 0; i < n; ++i) {
      if (reader.Next().size() != options.size) Die("a message of the wrong size arrived");
    }
    const char done = 1;
    WriteAll(fd, &done, 1);
  }
}

void SocketClient(const Options& options, int fd, const std::string& path) {
  const std::string payload(options.size, 'x');
  if (options.op == "pingpong") {
    std::vector<char> frame(4 + options.size);
    PutU32(frame.data(), static_cast<std::uint32_t>(options.size));
    std::memcpy(frame.data() + 4, payload.data(), payload.size());
    FrameReader reader(fd);
    std::vector<double> samples;
    samples.reserve(options.count);
    for (std::uint64_t i = 0; i < options.warmup + options.count; ++i) {
      const auto start = Clock::now();
      WriteAll(fd, frame.data(), frame.size());
      if (reader.Next().size() != options.size) Die("a reply of the wrong size arrived");
      if (i >= options.warmup) samples.push_back(Micros(Clock::now() - start));
    }
    ReportPingPong(options, path, std::move(samples));
    return;
  }
  FrameWriter writer(fd);
  Clock::duration elapsed{};
  for (const std::uint64_t n : {options.warmup, options.count}) {
    const auto start = Clock::now();
    for (std::uint64_t i = 0; i < n; ++i) writer.Add(payload);
    writer.Flush();
    char done = 0;
    ReadExact(fd, &done, 1);
    elapsed = Clock::now() - start;
  }
  ReportStream(options, path, elapsed);
}

// ---------------------------------------------------------------- ZeroMQ

class ZmqContext {
 public:
  ZmqContext() : context_(zmq_ctx_new()) {
    if (context_ == nullptr) Die(std::string("zmq_ctx_new: ") + zmq_strerror(zmq_errno()));
  }
  ZmqContext(const ZmqContext&) = delete;
  ZmqContext& operator=(const ZmqContext&) = delete;
  ~ZmqContext() { zmq_ctx_term(context_); }
  void* get() const { return context_; }

 private:
  void* context_;
};

class ZmqSocket {
 public:
  ZmqSocket(const ZmqContext& context, int type) : socket_(zmq_socket(context.get(), type)) {
    if (socket_ == nullptr) Die(std::string("zmq_socket: ") + zmq_strerror(zmq_errno()));
  }
  ZmqSocket(const ZmqSocket&) = delete;
  ZmqSocket& operator=(const ZmqSocket&) = delete;
  ~ZmqSocket() { zmq_close(socket_); }
  void* get() const { return socket_; }

  void Bind(const std::string& endpoint) {
    if (zmq_bind(socket_, endpoint.c_str()) != 0) Fail("zmq_bind " + endpoint);
  }
  void Connect(const std::string& endpoint) {
    if (zmq_connect(socket_, endpoint.c_str()) != 0) Fail("zmq_connect " + endpoint);
  }
  void Send(const void* data, std::size_t length) {
    while (zmq_send(socket_, data, length, 0) < 0) {
      if (zmq_errno() != EINTR) Fail("zmq_send");
    }
  }
  // Receives one message into `message` and returns its size.
  std::size_t Receive(zmq_msg_t* message) {
    int n = 0;
    while ((n = zmq_msg_recv(message, socket_, 0)) < 0) {
      if (zmq_errno() != EINTR) Fail("zmq_msg_recv");
    }
    return static_cast<std::size_t>(n);
  }

 private:
  [[noreturn]] static void Fail(const std::string& what) {
    Die(what + ": " + zmq_strerror(zmq_errno()));
  }
  void* socket_;
};

// A zmq_msg_t that is closed when it goes out of scope.
class ZmqMessage {
 public:
  ZmqMessage() { zmq_msg_init(&message_); }
  ZmqMessage(const ZmqMessage&) = delete;
  ZmqMessage& operator=(const ZmqMessage&) = delete;
  ~ZmqMessage() { zmq_msg_close(&message_); }
  zmq_msg_t* get() { return &message_; }

 private:
  zmq_msg_t message_;
};

struct ZmqEndpoints {
  std::string data;
  std::string ack;
};

ZmqEndpoints Endpoints(const Options& options, bool server) {
  if (!options.path.empty()) return {"ipc://" + options.path, "ipc://" + options.path + ".ack"};
  const std::string host = server ? "0.0.0.0" : options.host;
  return {"tcp://" + host + ":" + std::to_string(options.port),
          "tcp://" + host + ":" + std::to_string(options.port + 1)};
}

void ZmqServer(const Options& options) {
  const ZmqContext context;
  const ZmqEndpoints endpoints = Endpoints(options, true);
  ZmqMessage message;
  if (options.op == "pingpong") {
    ZmqSocket reply(context, ZMQ_REP);
    reply.Bind(endpoints.data);
    for (std::uint64_t i = 0; i < options.warmup + options.count; ++i) {
      reply.Receive(message.get());
      if (zmq_msg_send(message.get(), reply.get(), 0) < 0) {
        Die(std::string("zmq_msg_send: ") + zmq_strerror(zmq_errno()));
      }
    }
    return;
  }
  ZmqSocket pull(context, ZMQ_PULL);
  ZmqSocket ack(context, ZMQ_PUSH);
  pull.Bind(endpoints.data);
  ack.Bind(endpoints.ack);
  for (const std::uint64_t n : {options.warmup, options.count}) {
    for (std::uint64_t i = 0; i < n; ++i) {
      if (pull.Receive(message.get()) != options.size) Die("a message of the wrong size arrived");
    }
    ack.Send("k", 1);
  }
}

void ZmqClient(const Options& options) {
  const ZmqContext context;
  const ZmqEndpoints endpoints = Endpoints(options, false);
  std::vector<char> payload(options.size, 'x');
  const std::string path = options.path.empty() ? "zmq-tcp" : "zmq-ipc";
  ZmqMessage message;
  if (options.op == "pingpong") {
    ZmqSocket request(context, ZMQ_REQ);
    request.Connect(endpoints.data);
    std::vector<double> samples;
    samples.reserve(options.count);
    for (std::uint64_t i = 0; i < options.warmup + options.count; ++i) {
      const auto start = Clock::now();
      request.Send(payload.data(), payload.size());
      if (request.Receive(message.get()) != options.size) Die("a reply of the wrong size arrived");
      if (i >= options.warmup) samples.push_back(Micros(Clock::now() - start));
    }
    ReportPingPong(options, path, std::move(samples));
    return;
  }
  ZmqSocket push(context, ZMQ_PUSH);
  ZmqSocket ack(context, ZMQ_PULL);
  push.Connect(endpoints.data);
  ack.Connect(endpoints.ack);
  Clock::duration elapsed{};
  for (const std::uint64_t n : {options.warmup, options.count}) {
    const auto start = Clock::now();
    for (std::uint64_t i = 0; i < n; ++i) push.Send(payload.data(), payload.size());
    ack.Receive(message.get());
    elapsed = Clock::now() - start;
  }
  ReportStream(options, path, elapsed);
}

int Main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  Options options = ParseOptions(argc, argv, kUsage);
  const std::string& mode = options.mode;
  if (mode.starts_with("unix-") && options.path.empty()) options.path = "/tmp/tern-bench-ipc.sock";
  if (mode == "unix-server") {
    const Fd fd = ServeUnix(options);
    SocketServer(options, fd.get());
  } else if (mode == "unix-client") {
    const Fd fd = ConnectUnix(options);
    SocketClient(options, fd.get(), "unix");
  } else if (mode == "tcp-server") {
    const Fd fd = ServeTcp(options);
    SocketServer(options, fd.get());
  } else if (mode == "tcp-client") {
    const Fd fd = ConnectTcp(options);
    SocketClient(options, fd.get(), "tcp");
  } else if (mode == "zmq-server") {
    ZmqServer(options);
  } else if (mode == "zmq-client") {
    ZmqClient(options);
  } else {
    Die("unknown mode " + mode + "; usage: " + std::string(kUsage));
  }
  return 0;
}

}  // namespace
}  // namespace tern::bench

int main(int argc, char** argv) { return tern::bench::Main(argc, argv); }
