// RpcServer: the server half of libtern's RPC (docs/ipc.md "RPC (libtern)", "Direct calls").
//
// Requests come two ways: through the agents (the port, served by `threads` Serve threads)
// and over direct connections (accepted by one Accept thread with direct_accept, watched by
// one epoll and served by `threads` ServeDirect threads). Both share one duplicate check and
// one set of kept replies (kept_), and one limit of `threads` handler calls at once.
#include <sys/epoll.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <mutex>
#include <optional>
#include <semaphore>
#include <thread>
#include <unordered_map>

#include "channel_impl.hpp"
#include "direct_connection.hpp"
#include "direct_wire.hpp"
#include "rpc_format.hpp"
#include "tsan_annotations.hpp"

namespace tern {

namespace {
using libtern::DirectConnection;
using libtern::RpcHeader;

int PollMs(Timeout timeout) {
  return static_cast<int>(std::min<Timeout::rep>(std::max<Timeout::rep>(timeout.count(), 0),
                                                 std::numeric_limits<int>::max()));
}

// A one-shot watch: a connection is served by one worker at a time and re-armed after. With a
// single worker nothing can serve a connection twice at once, so its watch stays armed
// (level-triggered) and a request costs no epoll_ctl.
constexpr std::uint32_t kSharedEvents = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
// After a receive the agent's death failed: a breath before the next (a home that cannot be
// reached answers at once, and would make the loop spin).
constexpr auto kUnavailablePause = std::chrono::milliseconds(100);
constexpr std::uint32_t kSingleWorkerEvents = EPOLLIN | EPOLLRDHUP;
}  // namespace

class RpcServer::State {
 public:
  State(Channel channel, std::uint32_t port, RpcHandler handler, RpcServerOptions options)
      : channel_(std::move(channel)),
        port_(port),
        handler_(std::move(handler)),
        options_(options),
        running_(options.threads < 1 ? 1 : options.threads),
        epoll_(::epoll_create1(EPOLL_CLOEXEC)) {}

  void Serve(const std::stop_token& stop);
  // direct_accept in a loop, the first already posted (`first`); ends quietly when the agent
  // refuses (an old agent, a moved port).
  void Accept(const std::stop_token& stop, std::uint32_t first);
  // Posts the first direct_accept before any thread serves the port: the agent reads it before
  // the first request's receive, so the port takes direct calls by the time any client has had
  // an answer and asks for a connection (else a client's direct_open could come first, be
  // refused and keep it on the agent path for a second). nullopt: no direct calls.
  std::optional<std::uint32_t> PostFirstAccept() {
    if (!takes_direct()) return std::nullopt;
    auto request = libtern::PostDirectAccept(*channel_.impl_, port_, options_.stop_poll);
    if (!request) return std::nullopt;
    return *request;
  }
  void ServeDirect(const std::stop_token& stop);
  // Closes every direct connection (after the threads are joined): their clients fall back.
  void CloseDirect();
  bool takes_direct() { return channel_.connected() && epoll_.valid(); }
  // Whether several ServeDirect workers share the epoll (one per handler thread).
  bool one_shot() const { return options_.threads > 1; }
  std::uint32_t connection_events() const {
    return one_shot() ? kSharedEvents : kSingleWorkerEvents;
  }

  std::size_t kept_replies() const;
  std::uint64_t handled() const { return handled_.load(); }
  std::uint64_t handled_direct() const { return handled_direct_.load(); }
  std::string last_error() const {
    std::lock_guard lock(mu_);
    return last_error_;
  }

 private:
  // The last request of one client: running (done == false) or answered and kept.
  struct Kept {
    std::uint64_t sequence = 0;
    bool done = false;
    std::uint8_t flags = 0;
    std::vector<Item> items;
    std::chrono::steady_clock::time_point answered{};
    bool direct = false;  // running on a direct connection
    // A repeat through the agents of a request running on a direct connection (the client
    // fell back): its reply right gets the reply when the handler finishes.
    std::uint32_t waiting_reply = 0;
  };
  enum class Admission { kRun, kKept, kDrop, kWaiting };
  // The duplicate check for a request of either path. kKept fills `flags` and `items` with the
  // kept reply; kWaiting has taken `reply_right` to answer later.
  Admission Admit(const RpcHeader& header, bool direct, std::uint32_t reply_right,
                  std::uint8_t& flags, std::vector<Item>& items);
  // Runs the handler (within the limit shared by both paths) and keeps its reply. Returns the
  // reply right of a repeat that waits for it (0: none).
  std::uint32_t Run(RpcRequest request, std::uint8_t& flags, std::vector<Item>& items);
  void Acknowledge(std::uint64_t client, std::uint64_t sequence);
  // Drops kept replies older than keep_replies_for; at most once a second (or once per
  // keep_replies_for, if shorter). Needs mu_.
  void ExpireLocked();

  // The reply to send, if any; Serve sends it together with its next receive.
  std::optional<Message> Handle(Message message, const RpcHeader& header);
  std::optional<Message> HandlePlain(Message message);
  static std::optional<Message> Reply(std::uint32_t reply_right, const RpcHeader& header,
                                      std::vector<Item> items);
  void Drop(std::uint32_t reply_right);
  void NoteError(std::string text);

  // Serves what arrived on `connection`; false when it is to be closed.
  bool ServeConnection(DirectConnection& connection);
  void CloseConnection(DirectConnection* connection);

  const Channel channel_;
  const std::uint32_t port_;
  const RpcHandler handler_;
  const RpcServerOptions options_;
  std::atomic<std::uint64_t> handled_{0};
  std::atomic<std::uint64_t> handled_direct_{0};
  std::counting_semaphore<> running_;  // handler calls that may start, over both paths

  mutable std::mutex mu_;
  std::unordered_map<std::uint64_t, Kept> kept_;  // by client id
  std::chrono::steady_clock::time_point last_sweep_{};
  std::string last_error_;

  UniqueFd epoll_;
  std::mutex direct_mu_;
  std::unordered_map<DirectConnection*, std::unique_ptr<DirectConnection>> connections_;
};

void RpcServer::State::Serve(const std::stop_token& stop) {
  std::optional<Message> reply;
  while (!stop.stop_requested()) {
    // A reply leaves with the next receive (Mach's send-and-receive, as MIG servers do): one
    // round trip to the agent per request served instead of two.
    IpcResult<Message> message = IpcError{};
    if (reply) {
      // The reply port belongs to one client thread waiting for exactly this: never block on it.
      message = channel_.send_receive(*reply, port_, options_.stop_poll, FullPolicy::kFail);
      if (!message && message.status() != JobStatus::kTimedOut &&
          message.status() != JobStatus::kUnavailable) {
        // The reply was refused (the client is gone): say so, then receive on.
        NoteError("reply to a client: " + message.error().ToString());
        message = channel_.receive(port_, options_.stop_poll);
      }
      reply.reset();
    } else {
      message = channel_.receive(port_, options_.stop_poll);
    }
    if (!message) {
      if (message.status() == JobStatus::kTimedOut) continue;
      NoteError(message.error().ToString());
      // The agent went away and the channel re-attached: an agent that kept the job's rights
      // (docs/ipc.md "Port homes that survive their agent") still holds the port and what is
      // queued on it, so serve on; if it did not, the next receive says invalid_name.
      if (message.status() == JobStatus::kUnavailable && channel_.connected()) {
        std::this_thread::sleep_for(kUnavailablePause);
        continue;
      }
      // The port or the channel is gone: nothing more will arrive.
      if (message.status() == JobStatus::kUnavailable ||
          message.status() == JobStatus::kInvalidName || message.status() == JobStatus::kDeadName) {
        return;
      }
      continue;
    }
    auto header = libtern::DecodeRpcHeader(*message);
    if (!header) {
      // A plain message with a reply right (a send_receive's): served as a request without a
      // duplicate check (it has no client id); the reply goes back plain, with its id.
      if (!libtern::IsRpcMessage(*message) && message->reply != 0) {
        reply = HandlePlain(std::move(*message));
      } else {
        Drop(message->reply);
      }
      continue;
    }
    if (message->id == libtern::kRpcAckId) {
      Acknowledge(header->client, header->sequence);
      continue;
    }
    if (message->id != libtern::kRpcRequestId) {
      Drop(message->reply);
      continue;
    }
    reply = Handle(std::move(*message), *header);
  }
  if (reply) (void)channel_.send(*reply, FullPolicy::kFail);
}

void RpcServer::State::Acknowledge(std::uint64_t client, std::uint64_t sequence) {
  std::lock_guard lock(mu_);
  auto it = kept_.find(client);
  if (it != kept_.end() && it->second.done && it->second.sequence == sequence) kept_.erase(it);
}

RpcServer::State::Admission RpcServer::State::Admit(const RpcHeader& header, bool direct,
                                                    std::uint32_t reply_right, std::uint8_t& flags,
                                                    std::vector<Item>& items) {
  std::uint32_t replaced = 0;  // a waiting reply right nobody will answer, dropped unlocked
  struct DropAfter {
    State& state;
    std::uint32_t& right;
    ~DropAfter() { state.Drop(right); }
  } drop_after{*this, replaced};
  std::lock_guard lock(mu_);
  auto it = kept_.find(header.client);
  if (it != kept_.end() && it->second.sequence >= header.sequence) {
    Kept& entry = it->second;
    if (entry.sequence == header.sequence && entry.done) {
      // A repeat of an answered request: the kept reply, not a second execution.
      flags = entry.flags;
      items = entry.items;  // items share their data
      return Admission::kKept;
    }
    if (entry.sequence == header.sequence && entry.direct && !direct && reply_right != 0) {
      // The client gave up its connection and asks through the agents: answer that ask.
      replaced = std::exchange(entry.waiting_reply, reply_right);
      return Admission::kWaiting;
    }
    // A repeat of a request still running (its reply goes the same way as the original's),
    // or an older request than one already seen: neither gets an answer.
    return Admission::kDrop;
  }
  // A newer request acknowledges the client's previous reply.
  Kept& entry = kept_[header.client];
  replaced = entry.waiting_reply;
  entry = Kept{};
  entry.sequence = header.sequence;
  entry.direct = direct;
  return Admission::kRun;
}

std::uint32_t RpcServer::State::Run(RpcRequest request, std::uint8_t& flags,
                                    std::vector<Item>& items) {
  flags = options_.ack == RpcAck::kExplicit ? libtern::kRpcAckWanted : 0;
  {
    // The limit is what a one-thread server promises: one handler at a time, whichever way
    // its requests came.
    running_.acquire();
    struct Release {
      std::counting_semaphore<>& running;
      ~Release() { running.release(); }
    } release{running_};
    handled_.fetch_add(1);
    try {
      items = handler_(request);
    } catch (const std::exception& error) {
      flags |= libtern::kRpcHandlerFailed;
      items = {Item::Bytes(error.what())};
    }
  }
  std::lock_guard lock(mu_);
  std::uint32_t waiting = 0;
  auto it = kept_.find(request.client);
  // The client may have moved on (a newer request) while this one ran: keep only the newest.
  if (it != kept_.end() && it->second.sequence == request.sequence) {
    it->second.done = true;
    it->second.direct = false;
    it->second.flags = flags;
    it->second.items = items;
    it->second.answered = std::chrono::steady_clock::now();
    waiting = std::exchange(it->second.waiting_reply, 0);
  }
  ExpireLocked();
  return waiting;
}

std::optional<Message> RpcServer::State::Handle(Message message, const RpcHeader& header) {
  const std::uint32_t reply_right = message.reply;
  std::uint8_t flags = 0;
  std::vector<Item> items;
  switch (Admit(header, /*direct=*/false, reply_right, flags, items)) {
    case Admission::kKept:
      return Reply(reply_right, RpcHeader{flags, header.client, header.sequence}, std::move(items));
    case Admission::kWaiting:
      return std::nullopt;
    case Admission::kDrop:
      Drop(reply_right);
      return std::nullopt;
    case Admission::kRun:
      break;
  }
  RpcRequest request;
  request.client = header.client;
  request.sequence = header.sequence;
  request.message = std::move(message);
  request.message.items.erase(request.message.items.begin());
  if (header.flags & libtern::kRpcCarriesId) request.message.id = header.message_id;
  if (const std::uint32_t waiting = Run(std::move(request), flags, items); waiting != 0) {
    Drop(waiting);  // a repeat waits only for a request running on a direct connection
  }
  return Reply(reply_right, RpcHeader{flags, header.client, header.sequence}, std::move(items));
}

std::optional<Message> RpcServer::State::HandlePlain(Message message) {
  const std::uint32_t reply_right = message.reply;
  Message reply;
  reply.destination = reply_right;
  reply.destination_disposition = message.reply_disposition;  // move-send-once or move-send
  reply.id = message.id;
  message.reply = 0;
  message.reply_disposition = Disposition::kNone;
  RpcRequest request;
  request.message = std::move(message);
  {
    running_.acquire();
    struct Release {
      std::counting_semaphore<>& running;
      ~Release() { running.release(); }
    } release{running_};
    handled_.fetch_add(1);
    try {
      reply.items = handler_(request);
    } catch (const std::exception& error) {
      // A plain sender has no RPC flags to read: the failure's text is the reply.
      reply.items = {Item::Bytes(error.what())};
    }
  }
  return reply;
}

std::optional<Message> RpcServer::State::Reply(std::uint32_t reply_right, const RpcHeader& header,
                                               std::vector<Item> items) {
  if (reply_right == 0) return std::nullopt;
  Message reply;
  reply.destination = reply_right;
  reply.destination_disposition = Disposition::kMoveSendOnce;
  reply.id = libtern::kRpcReplyId;
  reply.items.reserve(items.size() + 1);
  reply.items.push_back(libtern::EncodeRpcHeader(header));
  for (Item& item : items) reply.items.push_back(std::move(item));
  return reply;
}

// Direct connections -----------------------------------------------------------------------

void RpcServer::State::Accept(const std::stop_token& stop, std::uint32_t first) {
  std::optional<std::uint32_t> posted = first;
  while (!stop.stop_requested() || posted) {
    auto fd = posted ? libtern::CollectDirectAccept(*channel_.impl_, *std::exchange(posted, {}))
                     : libtern::DirectAccept(*channel_.impl_, port_, options_.stop_poll);
    if (stop.stop_requested()) return;
    if (!fd) {
      if (fd.status() == JobStatus::kTimedOut) continue;
      return;  // an agent without direct calls, the port gone: the agent path serves alone
    }
    auto connection = std::make_unique<DirectConnection>(std::move(*fd));
    epoll_event event{};
    event.events = connection_events();
    event.data.ptr = connection.get();
    std::lock_guard lock(direct_mu_);
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, connection->fd(), &event) != 0) continue;
    connections_.emplace(connection.get(), std::move(connection));
  }
}

void RpcServer::State::ServeDirect(const std::stop_token& stop) {
  while (!stop.stop_requested()) {
    epoll_event event{};
    const int ready = ::epoll_wait(epoll_.get(), &event, 1, PollMs(options_.stop_poll));
    if (ready <= 0) continue;
    auto* connection = static_cast<DirectConnection*>(event.data.ptr);
    libtern::TakeOver(connection);
    if (!ServeConnection(*connection)) {
      CloseConnection(connection);
      continue;
    }
    if (!one_shot()) continue;
    epoll_event again{};
    again.events = connection_events();
    again.data.ptr = connection;
    libtern::HandOff(connection);  // the thread woken for it next serves it
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, connection->fd(), &again) != 0) {
      CloseConnection(connection);
    }
  }
}

bool RpcServer::State::ServeConnection(DirectConnection& connection) {
  // Frames that arrived before an end of file are served all the same (a last ack).
  const bool open = static_cast<bool>(connection.ReadAvailable());
  while (auto frame = connection.Next()) {
    if (frame->type != ipc::FrameType::kDirectCall) return false;
    auto call =
        libtern::ParseDirectCall(std::make_shared<const std::string>(std::move(frame->payload)));
    if (!call) return false;
    if (call->kind == libtern::DirectCallKind::kAck) {
      Acknowledge(call->client, call->sequence);
      continue;
    }
    const RpcHeader header{0, call->client, call->sequence};
    std::uint8_t flags = 0;
    std::vector<Item> items;
    switch (Admit(header, /*direct=*/true, 0, flags, items)) {
      case Admission::kDrop:
      case Admission::kWaiting:
        continue;
      case Admission::kKept:
        break;
      case Admission::kRun: {
        RpcRequest request;
        request.client = call->client;
        request.sequence = call->sequence;
        request.message.destination = port_;
        request.message.id = call->kind == libtern::DirectCallKind::kMessage
                                 ? call->message_id
                                 : libtern::kRpcRequestId;
        request.message.items = std::move(call->items);
        handled_direct_.fetch_add(1);
        if (const std::uint32_t waiting = Run(std::move(request), flags, items); waiting != 0) {
          // The client fell back to the agents meanwhile: that is where it waits.
          if (auto reply = Reply(waiting, {flags, header.client, header.sequence}, items)) {
            if (auto sent = channel_.send(*reply, FullPolicy::kFail); !sent) {
              NoteError("reply to a client: " + sent.error().ToString());
            }
          }
          continue;
        }
        break;
      }
    }
    // Rights cannot travel here: the reply stays kept, and the client asks again through the
    // agents, where the kept reply answers it.
    const bool data_only = libtern::IsDataOnly(items);
    ipc::WireWriter answer(/*share_data=*/true);
    libtern::WriteDirectAnswer(
        answer,
        data_only ? libtern::DirectOutcome::kReply : libtern::DirectOutcome::kCallThroughAgents,
        flags, header.client, header.sequence,
        data_only ? std::span<const Item>(items) : std::span<const Item>());
    if (!connection.Write(answer)) return false;
  }
  return open;
}

void RpcServer::State::CloseConnection(DirectConnection* connection) {
  std::lock_guard lock(direct_mu_);
  (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, connection->fd(), nullptr);
  connections_.erase(connection);
}

void RpcServer::State::CloseDirect() {
  std::lock_guard lock(direct_mu_);
  connections_.clear();
}

// -------------------------------------------------------------------------------------------

void RpcServer::State::ExpireLocked() {
  const auto now = std::chrono::steady_clock::now();
  if (now - last_sweep_ < std::min<Timeout>(std::chrono::seconds(1), options_.keep_replies_for)) {
    return;
  }
  last_sweep_ = now;
  std::erase_if(kept_, [&](const auto& entry) {
    return entry.second.done && now - entry.second.answered >= options_.keep_replies_for;
  });
}

void RpcServer::State::Drop(std::uint32_t reply_right) {
  if (reply_right != 0) (void)channel_.deallocate(reply_right);
}

void RpcServer::State::NoteError(std::string text) {
  std::lock_guard lock(mu_);
  last_error_ = std::move(text);
}

std::size_t RpcServer::State::kept_replies() const {
  std::lock_guard lock(mu_);
  std::size_t count = 0;
  for (const auto& [client, entry] : kept_) count += entry.done ? 1 : 0;
  return count;
}

RpcServer::RpcServer(Channel channel, std::uint32_t port, RpcHandler handler,
                     RpcServerOptions options)
    : state_(std::make_shared<State>(std::move(channel), port, std::move(handler), options)) {
  const int threads = options.threads < 1 ? 1 : options.threads;
  const std::optional<std::uint32_t> first_accept = state_->PostFirstAccept();
  threads_.reserve(static_cast<std::size_t>(first_accept ? 2 * threads + 1 : threads));
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([state = state_](const std::stop_token& stop) { state->Serve(stop); });
  }
  if (!first_accept) return;
  threads_.emplace_back([state = state_, first = *first_accept](const std::stop_token& stop) {
    state->Accept(stop, first);
  });
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back(
        [state = state_](const std::stop_token& stop) { state->ServeDirect(stop); });
  }
}

RpcServer::~RpcServer() { stop(); }

void RpcServer::stop() {
  std::lock_guard lock(stop_mu_);
  for (auto& thread : threads_) thread.request_stop();
  threads_.clear();  // joins
  state_->CloseDirect();
}

std::size_t RpcServer::kept_replies() const { return state_->kept_replies(); }
std::uint64_t RpcServer::handled() const { return state_->handled(); }
std::uint64_t RpcServer::handled_direct() const { return state_->handled_direct(); }
std::string RpcServer::last_error() const { return state_->last_error(); }

}  // namespace tern
