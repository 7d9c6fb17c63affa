// libtern: the job side of tern IPC (docs/ipc.md). A job talks to its agent over one Unix
// stream socket whose fd number is in the environment variable TERN_IPC_FD; every operation
// below is one request on that channel and one reply from the agent.
//
// Contract:
//  - Every operation returns IpcResult<T>: a value, or an IpcError carrying the agent's
//    JobStatus (e.g. kQueueFull, kTimedOut, kAlreadyMatched) and a one-line message.
//  - Outside tern (TERN_IPC_FD unset, not a number, or not an open socket) and after the agent
//    closes the channel, every call fails with JobStatus::kUnavailable and a message saying so
//    ("not running under tern: TERN_IPC_FD is not set"); nothing crashes or aborts.
//  - Timeouts are sent to the agent, which enforces them; kForever waits without limit.
//  - Names (std::uint32_t) are the job's local names of rights; the agent checks each one.
//
// Example:
//   tern::Channel channel;  // the process's channel, from TERN_IPC_FD
//   auto port = channel.port_allocate();
//   if (!port) { std::cerr << port.error().ToString() << "\n"; return 1; }
//   channel.name_register("echo", *port);
//   auto message = channel.receive(*port, std::chrono::seconds(5));
//
// Thread-safety: a Channel is a cheap handle (copies share one connection) and is safe to use
// from any number of threads at once: each request is written as one frame under a mutex and
// the replies, which may come out of order, are handed to the thread that asked. RpcServer
// methods are thread-safe. Region and MessageBuilder are single-owner values.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <tern/ipc/job_message.hpp>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace tern::ipc {
class WireWriter;  // the channel codec (private to libtern and the agent)
}  // namespace tern::ipc

namespace tern {

using ipc::Disposition;
using ipc::FullPolicy;
using ipc::Item;
using ipc::ItemKind;
using ipc::JobStatus;
using ipc::Message;
using ipc::NotificationKind;
using ipc::OpResult;
using ipc::RightType;

// A failed operation: the agent's status, or kUnavailable for a missing/closed channel.
struct IpcError {
  JobStatus status = JobStatus::kUnavailable;
  std::string message;

  // "queue_full: <message>".
  std::string ToString() const;
};

// A value or an IpcError: tern::Expected with the agent's status, which every failure of an
// operation carries, readable as status().
template <typename T>
class [[nodiscard]] IpcResult : public Expected<T, IpcError> {
 public:
  using Expected<T, IpcError>::Expected;
  IpcResult() requires std::is_void_v<T>
  = default;

  // kOk on success, else the error's status.
  JobStatus status() const { return this->has_value() ? JobStatus::kOk : this->error().status; }
};

// Timeouts are whole milliseconds; anything of 2^32-1 ms or more means "no limit".
using Timeout = std::chrono::milliseconds;
inline constexpr Timeout kForever = Timeout::max();

struct RightInfo {
  RightType type = RightType::kNone;
  std::uint32_t refs = 0;
  std::uint64_t port_home = 0;  // the node id of the object's home
  std::uint64_t serial = 0;
};

struct PortStatus {
  std::uint32_t queued = 0;
  std::uint32_t limit = 0;
  std::uint32_t send_refs = 0;
};

struct LinkEnds {
  std::uint32_t first = 0;
  std::uint32_t second = 0;
};

// A handle of a pending link operation (link_send / link_receive); wait, poll or cancel it.
using OpHandle = std::uint32_t;

// A shared-memory region mapped MAP_SHARED into this process; unmapped on destruction. Two jobs
// on one node mapping the same region see the same pages. Move-only.
class Region {
 public:
  Region() = default;
  Region(void* data, std::size_t size) : data_(data), size_(size) {}
  Region(Region&& other) noexcept { *this = std::move(other); }
  Region& operator=(Region&& other) noexcept;
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  ~Region();

  void* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::string_view view() const { return {static_cast<const char*>(data_), size_}; }

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

// Builds a Message fluently:
//   channel.send(MessageBuilder(port).id(7).bytes("hello").reply(reply_port).build());
class MessageBuilder {
 public:
  explicit MessageBuilder(std::uint32_t destination,
                          Disposition disposition = Disposition::kCopySend);
  MessageBuilder& id(std::uint32_t id);
  // The reply right; by default a send-once right made from a receive right.
  MessageBuilder& reply(std::uint32_t name, Disposition disposition = Disposition::kMakeSendOnce);
  MessageBuilder& bytes(std::string data);
  MessageBuilder& out_of_line(std::string data);
  MessageBuilder& port(std::uint32_t name, Disposition disposition);
  MessageBuilder& link_end(std::uint32_t end);  // moves the end
  MessageBuilder& region(std::uint32_t name, bool move = false);
  MessageBuilder& item(Item item);
  Message build() { return std::move(message_); }

 private:
  Message message_;
};

// A message to `destination` (a send right, copied) with one bytes item.
Message BytesMessage(std::uint32_t destination, std::string data, std::uint32_t id = 0);
// The data of the message's first bytes or out-of-line item; empty if it has none.
std::string_view FirstBytes(const Message& message);
// The u32 name carried by a dead-name / no-senders / send-possible notification.
std::optional<std::uint32_t> NotificationName(const Message& message);

// Per-call options of Channel::call.
struct CallOptions {
  Timeout timeout = kForever;  // per attempt: how long to wait for the reply
  // Attempts: after a timed-out attempt the same request (same client, same sequence) is sent
  // again; the server answers a repeat from its kept reply and never runs it twice.
  int attempts = 1;
};

class Channel {
 public:
  // The process's channel (TERN_IPC_FD, opened on first use). All default Channels share it.
  Channel();
  // A channel over `fd`, which it takes ownership of (tests; jobs given an fd otherwise).
  static Channel FromFd(int fd);
  // Replaces the process's channel for later default-constructed Channels and the C API.
  static void SetDefault(const Channel& channel);

  // Whether the channel exists and has not been closed (a failing call tells why).
  bool connected() const;

  // Ports and rights.
  IpcResult<std::uint32_t> port_allocate(std::uint32_t queue_limit = 0) const;  // 0: default 64
  IpcResult<std::uint32_t> make_send(std::uint32_t receive_name) const;
  IpcResult<void> deallocate(std::uint32_t name) const;
  IpcResult<RightInfo> right_info(std::uint32_t name) const;
  IpcResult<PortStatus> port_status(std::uint32_t receive_name) const;
  IpcResult<void> request_notification(std::uint32_t name, NotificationKind kind,
                                       std::uint32_t notify_port) const;

  // Messages. `timeout` applies to FullPolicy::kWait; `notify_port` to kNotify. A data-only
  // message (no rights, no reply right; kFail or kWait) to a port a PortReader reads goes over a
  // connection between the two jobs once the reader welcomed it (docs/ipc.md "Plain sends
  // direct"): in the same order, with the same queue limit, nothing lost when it breaks.
  IpcResult<void> send(const Message& message, FullPolicy policy = FullPolicy::kFail,
                       Timeout timeout = Timeout(0), std::uint32_t notify_port = 0) const;
  // The next message on a receive right. `destination` of the result is `port`; `reply` is this
  // job's name of the reply right (0: none).
  IpcResult<Message> receive(std::uint32_t port, Timeout timeout = kForever) const;
  // Sends the messages in order with one write to the agent and waits for all the answers:
  // a stream of small messages without a round trip each. Ok when every one was accepted;
  // otherwise the first error, and `accepted` (if given) counts those that were. Messages that
  // all carry data to one port go as trains (one request and one answer per train, the fast
  // path); with kFail or kNotify the first refused message then ends the call.
  IpcResult<void> send_many(const std::vector<Message>& messages,
                            FullPolicy policy = FullPolicy::kFail, Timeout timeout = Timeout(0),
                            std::size_t* accepted = nullptr) const;
  // Everything queued on `port` up to `max` messages in one round trip, waiting up to
  // `timeout` for the first.
  IpcResult<std::vector<Message>> receive_many(std::uint32_t port, std::uint32_t max,
                                               Timeout timeout = kForever) const;
  // Sends `message`, then receives on `port` (Mach's combined send and receive): one round
  // trip to the agent. A send that fails returns its error and receives nothing. A data-only
  // message whose reply is make-send-once of `port`, to a port an RpcServer serves, goes over
  // the direct connection instead (docs/ipc.md "send_receive direct"); its answer is returned
  // as the received message (the request's id, no reply right).
  IpcResult<Message> send_receive(const Message& message, std::uint32_t port,
                                  Timeout receive_timeout = kForever,
                                  FullPolicy policy = FullPolicy::kFail,
                                  Timeout send_timeout = Timeout(0)) const;

  // Names.
  IpcResult<void> name_register(std::string_view name, std::uint32_t right) const;
  IpcResult<std::uint32_t> name_lookup(std::string_view name) const;  // a new send right
  IpcResult<void> name_unregister(std::string_view name) const;

  // Links: operations return at once with a handle.
  IpcResult<LinkEnds> link_create() const;
  // `message.destination` is ignored; the message goes to the peer of `end`.
  IpcResult<OpHandle> link_send(std::uint32_t end, const Message& message) const;
  IpcResult<OpHandle> link_receive(std::uint32_t end = 0) const;  // 0: any end the job holds
  IpcResult<OpResult> wait(OpHandle handle, Timeout timeout = kForever) const;
  IpcResult<std::optional<OpResult>> poll(OpHandle handle) const;  // nullopt: not done yet
  IpcResult<void> cancel(OpHandle handle) const;                   // kAlreadyMatched once matched

  // Regions.
  IpcResult<std::uint32_t> region_create(std::uint64_t size) const;
  IpcResult<Region> region_map(std::uint32_t name) const;

  // RPC (docs/ipc.md "RPC message format"): sends `items` to `port` with a send-once reply
  // right to this thread's cached reply port and waits for the matching reply, whose items
  // (without the RPC header) it returns. Acknowledges the reply if the server asks for it.
  IpcResult<Message> call(std::uint32_t port, std::vector<Item> items,
                          CallOptions options = {}) const;
  // The same with one bytes item each way.
  IpcResult<std::string> call(std::uint32_t port, std::string_view request,
                              CallOptions options = {}) const;

  // Unique per connection (keys per-thread RPC state).
  std::uint64_t id() const;

  class Impl;

 private:
  friend class PortWriter;
  friend class PortReader;
  friend class RpcServer;  // its direct-call acceptor uses the channel's Impl
  explicit Channel(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  IpcResult<void> SendTrains(const std::vector<Message>& messages, FullPolicy policy,
                             Timeout timeout, std::size_t* accepted) const;
  std::shared_ptr<Impl> impl_;
};

// A stream of data messages to one port, for a sender that does not want a round trip per
// batch: write() gathers messages into trains, and up to `window` trains are on their way at
// once (as a socket's send buffer lets a writer run ahead of the reader). Messages arrive in
// the order written and a full queue holds the stream back (FullPolicy::kWait, without end):
// nothing is dropped. write() may keep a message until its train fills; flush() sends what is
// gathered and waits until every train is answered. A refusal (the port died; the name is not
// a send right) ends the stream: write() and flush() then return that error, and accepted()
// counts the messages that went into the queue.
//
// Direct (docs/ipc.md "Direct streams"; Options::direct): when the port's receiver reads it
// with a PortReader, the writer asks the agents for a connection to it and, once the reader
// welcomes it, sends its messages there, numbered, at most the port's queue limit ahead of what the
// reader handed out. A connection that breaks (either job moving, the reader gone) sends what the
// reader had not received again through the agents; the reader drops what it already had, so
// order, no loss and no duplicate hold across the switch. A receiver that never read with a
// PortReader gets exactly the messages written, through the agents. flush() also waits until
// the reader has received every message sent on a connection.
//
// Thread-safety: one thread at a time per writer; other threads may use the channel meanwhile.
class PortWriter {
 public:
  struct Options {
    // Trains on their way at once: 8 keeps a port of the default bench queue (1000) full
    // across nodes (4 left the reader batches of ~650; 8 streamed 8-32% faster, bench/README).
    std::size_t window = 8;
    std::size_t train_bytes = 64 << 10;  // a train leaves when it holds this many bytes
    std::size_t train_messages = 2048;   // ... or this many messages
    // Go direct to a PortReader that asked for it too (docs/ipc.md "Direct streams"); false
    // keeps the stream on the agents.
    bool direct = true;
  };

  // `port`: a send (or receive) right of this job.
  PortWriter(Channel channel, std::uint32_t port);
  PortWriter(Channel channel, std::uint32_t port, Options options);
  // Flushes; an error is then lost (call flush() to see it).
  ~PortWriter();
  PortWriter(const PortWriter&) = delete;
  PortWriter& operator=(const PortWriter&) = delete;

  // A message with one bytes item.
  IpcResult<void> write(std::string_view bytes, std::uint32_t id = 0);
  // A message of data items (bytes, out-of-line); its destination is ignored.
  IpcResult<void> write(const Message& message);
  IpcResult<void> flush();

  std::uint64_t written() const { return written_; }
  // Messages the port's queue took, and messages the reader received on a connection.
  std::uint64_t accepted() const;
  // Messages sent on a direct connection and received there (a part of accepted()).
  std::uint64_t accepted_direct() const;

  class Direct;

 private:
  IpcResult<void> Added();
  IpcResult<void> Ship();
  void CollectOldest();
  // A message into the train, with the stream header when the writer is numbered.
  void AddToTrain(std::uint64_t sequence, std::uint32_t id, std::string_view bytes,
                  const Message* message);
  // The direct path (port_writer.cpp).
  IpcResult<void> WriteDirect(std::uint32_t id, std::string_view bytes, const Message* message);
  // write(message) past its fast path (a small data message on a direct stream).
  IpcResult<void> WriteGeneral(const Message& message);
  IpcResult<void> SendFrame();
  void TryDirect();
  IpcResult<void> FallBack();

  Channel channel_;
  std::uint32_t port_;
  Options options_;
  std::unique_ptr<ipc::WireWriter> train_;  // the messages of the train being gathered
  std::size_t train_count_ = 0;
  std::size_t train_syncs_ = 0;  // syncs in the train (not the caller's messages)
  struct InFlight {
    std::uint32_t request = 0;
    std::size_t syncs = 0;
  };
  std::deque<InFlight> in_flight_;  // oldest first
  std::optional<IpcError> error_;
  std::uint64_t written_ = 0;
  std::uint64_t accepted_ = 0;
  std::unique_ptr<Direct> direct_;
};

// A message seen in place, as PortReader hands it out: data items are views into the
// reader's buffer (valid until its next call); rights are names in this job's table, as in
// Item. `items` keeps its capacity from one message to the next.
struct ItemView {
  ItemKind kind = ItemKind::kBytes;
  std::string_view bytes;  // kBytes, kOutOfLine
  std::uint32_t name = 0;
  Disposition disposition = Disposition::kNone;
};
struct MessageView {
  std::uint32_t destination = 0;  // the receive right's name
  std::uint32_t reply = 0;        // this job's name of the reply right (0: none)
  Disposition reply_disposition = Disposition::kNone;
  std::uint32_t id = 0;
  std::vector<ItemView> items;

  std::string_view bytes() const;  // the first data item's bytes; empty if none
  Message ToMessage() const;       // a Message that owns its data
};

// The receiving end of a stream: takes what is queued on a port in batches (one round trip to
// the agent for up to `batch` messages, as receive_many) and hands the messages out one at a
// time, in place, without an allocation per message. Messages taken and not yet handed out are
// lost with the reader: keep it for the life of the stream.
//
// Direct (docs/ipc.md "Direct streams"; Options::direct): on its first next() the reader tells
// the agents it takes direct connections for the port (direct_accept) and from then on keeps
// one receive posted at the agent while it waits on its connections too. PortWriters to the port
// then send over connections; the reader hands each writer's messages out strictly in the order
// written, each once, whichever way they came, and acknowledges them (its acks are the writers'
// credits: at most the port's queue limit unacknowledged per writer on a connection). Other
// senders' messages come through the agents as they always did. A writer on the same node
// streams through shared memory the reader offers on the connection (docs/ipc.md "Shared
// memory on one node"; Options::shared_memory).
//
// Thread-safety: one thread at a time per reader.
class PortReader {
 public:
  struct Options {
    std::uint32_t batch = 1024;  // messages per receive_many
    // Take direct connections from PortWriters (docs/ipc.md "Direct streams"): a receive kept
    // posted at the agent while the reader waits on its connections too. false: one blocking
    // receive_many at a time, and every writer stays on the agents.
    bool direct = true;
    // A writer on this node streams through shared memory (two rings in a memfd passed on the
    // connection, docs/ipc.md "Shared memory on one node"); false keeps it on the socket.
    bool shared_memory = true;
  };
  // `port`: a receive right of this job.
  PortReader(Channel channel, std::uint32_t port, std::uint32_t batch = 1024);
  PortReader(Channel channel, std::uint32_t port, Options options);
  ~PortReader();
  PortReader(const PortReader&) = delete;
  PortReader& operator=(const PortReader&) = delete;

  // The next message into `out`, waiting up to `timeout` for one to arrive.
  IpcResult<void> next(MessageView& out, Timeout timeout = kForever);
  // Messages taken (from the agent or a connection) and not yet handed out.
  std::size_t buffered() const;
  // Messages that came over direct connections and were handed out, and duplicates dropped.
  std::uint64_t handed_direct() const;
  // Of those, the ones that came through shared memory.
  std::uint64_t handed_shared() const;
  std::uint64_t dropped_duplicates() const;

  class State;

 private:
  std::unique_ptr<State> state_;
};

// RPC server ------------------------------------------------------------------------------

struct RpcRequest {
  std::uint64_t client = 0;
  std::uint64_t sequence = 0;
  Message message;  // the request, its items without the RPC header
  std::string_view bytes() const { return FirstBytes(message); }
};

// Returns the reply's items. Rights moved in a reply are sent once: a repeat of the request is
// answered from the kept items, so keep replies to bytes when requests may be retried.
using RpcHandler = std::function<std::vector<Item>(const RpcRequest& request)>;

enum class RpcAck {
  kExplicit,  // the client acknowledges each reply at once; the kept reply is freed then
  kImplicit,  // the client's next request acknowledges its previous reply (Amoeba)
};

struct RpcServerOptions {
  int threads = 1;  // 1: one request at a time; N: up to N handler calls at once
  RpcAck ack = RpcAck::kExplicit;
  // How often idle threads look at the stop flag (a receive's timeout).
  Timeout stop_poll = Timeout(100);
  // A kept reply nobody acknowledged is dropped after this long (a client that went away);
  // a retry of its request after that runs the handler again.
  Timeout keep_replies_for = Timeout(60'000);
};

// Serves `port` (a receive right) with `threads` threads, each receiving and calling
// `handler`. Keeps each client's last reply until acknowledged and answers a repeated
// (client, sequence) from it without calling the handler again; a repeat that arrives while
// the original is still running is dropped (the original's reply goes to the same port).
// stop() (and the destructor) joins the threads; it returns within about stop_poll plus the
// longest running handler call (so never call it from a handler). Idle threads each ask the
// agent for a receive every stop_poll. A non-RPC message with a reply right (a send_receive's)
// is a request too: the handler sees its id, client 0, and the reply goes plain, with that id,
// to its reply right (no duplicate check on the agent path; its direct form has one). Other
// non-RPC messages on the port are dropped.
// Direct calls (docs/ipc.md "Direct calls"): on a connected channel one more thread accepts
// connections from clients (direct_accept, every stop_poll) and `threads` more serve them;
// at most `threads` handler calls run at once over both paths, and both share the kept
// replies. An agent without direct calls leaves the port path alone, as before.
class RpcServer {
 public:
  RpcServer(Channel channel, std::uint32_t port, RpcHandler handler, RpcServerOptions options = {});
  ~RpcServer();
  RpcServer(const RpcServer&) = delete;
  RpcServer& operator=(const RpcServer&) = delete;

  void stop();
  // Replies kept for clients that have not acknowledged them.
  std::size_t kept_replies() const;
  // Handler calls made so far, and how many of them were for requests that came over a
  // direct connection.
  std::uint64_t handled() const;
  std::uint64_t handled_direct() const;
  // The last error a serving thread hit (empty if none); serving goes on after errors.
  std::string last_error() const;

  class State;

 private:
  std::shared_ptr<State> state_;
  std::mutex stop_mu_;
  std::vector<std::jthread> threads_;
};

// How many link messages this process's receives took from a direct connection (docs/ipc.md
// "Link operations direct") rather than through the agents: for tests and benchmarks.
std::uint64_t direct_link_matches();

}  // namespace tern
