// RpcServer: the server half of libtern's RPC (docs/ipc.md "RPC (libtern)").
#include <algorithm>
#include <chrono>
#include <exception>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "rpc_format.hpp"

namespace tern {

namespace {
using libtern::RpcHeader;
}  // namespace

class RpcServer::State {
 public:
  State(Channel channel, std::uint32_t port, RpcHandler handler, RpcServerOptions options)
      : channel_(std::move(channel)),
        port_(port),
        handler_(std::move(handler)),
        options_(options) {}

  void Serve(const std::stop_token& stop);
  std::size_t kept_replies() const;
  std::uint64_t handled() const { return handled_.load(); }
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
  };
  // Drops kept replies older than keep_replies_for; at most once a second (or once per
  // keep_replies_for, if shorter). Needs mu_.
  void ExpireLocked();

  // The reply to send, if any; Serve sends it together with its next receive.
  std::optional<Message> Handle(Message message, const RpcHeader& header);
  static std::optional<Message> Reply(std::uint32_t reply_right, const RpcHeader& header,
                                      std::vector<Item> items);
  void Drop(std::uint32_t reply_right);
  void NoteError(std::string text);

  const Channel channel_;
  const std::uint32_t port_;
  const RpcHandler handler_;
  const RpcServerOptions options_;
  std::atomic<std::uint64_t> handled_{0};

  mutable std::mutex mu_;
  std::unordered_map<std::uint64_t, Kept> kept_;  // by client id
  std::chrono::steady_clock::time_point last_sweep_{};
  std::string last_error_;
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
      // The port or the channel is gone: nothing more will arrive.
      if (message.status() == JobStatus::kUnavailable ||
          message.status() == JobStatus::kInvalidName || message.status() == JobStatus::kDeadName) {
        return;
      }
      continue;
    }
    auto header = libtern::DecodeRpcHeader(*message);
    if (!header) {
      Drop(message->reply);
      continue;
    }
    if (message->id == libtern::kRpcAckId) {
      std::lock_guard lock(mu_);
      auto it = kept_.find(header->client);
      if (it != kept_.end() && it->second.done && it->second.sequence == header->sequence) {
        kept_.erase(it);
      }
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

std::optional<Message> RpcServer::State::Handle(Message message, const RpcHeader& header) {
  const std::uint32_t reply_right = message.reply;
  {
    std::unique_lock lock(mu_);
    auto it = kept_.find(header.client);
    if (it != kept_.end() && it->second.sequence >= header.sequence) {
      if (it->second.sequence == header.sequence && it->second.done) {
        // A repeat of an answered request: the kept reply, not a second execution.
        RpcHeader reply_header{it->second.flags, header.client, header.sequence};
        std::vector<Item> items = it->second.items;  // items share their data
        lock.unlock();
        return Reply(reply_right, reply_header, std::move(items));
      }
      // A repeat of a request still running (its reply goes to the same reply port), or an
      // older request than one already seen: neither gets an answer.
      lock.unlock();
      Drop(reply_right);
      return std::nullopt;
    }
    // A newer request acknowledges the client's previous reply.
    Kept& entry = kept_[header.client];
    entry = Kept{header.sequence, false, 0, {}};
  }

  RpcRequest request;
  request.client = header.client;
  request.sequence = header.sequence;
  request.message = std::move(message);
  request.message.items.erase(request.message.items.begin());
  std::uint8_t flags = options_.ack == RpcAck::kExplicit ? libtern::kRpcAckWanted : 0;
  std::vector<Item> items;
  handled_.fetch_add(1);
  try {
    items = handler_(request);
  } catch (const std::exception& error) {
    flags |= libtern::kRpcHandlerFailed;
    items = {Item::Bytes(error.what())};
  }

  {
    std::lock_guard lock(mu_);
    auto it = kept_.find(header.client);
    // The client may have moved on (a newer request) while this one ran: keep only the newest.
    if (it != kept_.end() && it->second.sequence == header.sequence) {
      it->second.done = true;
      it->second.flags = flags;
      it->second.items = items;
      it->second.answered = std::chrono::steady_clock::now();
    }
    ExpireLocked();
  }
  return Reply(reply_right, RpcHeader{flags, header.client, header.sequence}, std::move(items));
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
  threads_.reserve(static_cast<std::size_t>(threads));
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([state = state_](const std::stop_token& stop) { state->Serve(stop); });
  }
}

RpcServer::~RpcServer() { stop(); }

void RpcServer::stop() {
  std::lock_guard lock(stop_mu_);
  for (auto& thread : threads_) thread.request_stop();
  threads_.clear();  // joins
}

std::size_t RpcServer::kept_replies() const { return state_->kept_replies(); }
std::uint64_t RpcServer::handled() const { return state_->handled(); }
std::string RpcServer::last_error() const { return state_->last_error(); }

}  // namespace tern
