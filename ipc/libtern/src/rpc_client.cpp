// Channel::call: the client half of libtern's RPC (docs/ipc.md "RPC (libtern)").
//
// Each thread is one RPC client per channel: it has its own client id, sequence numbers and
// reply port (allocated on its first call and deallocated when the thread exits), so calls
// from different threads never wait on each other's replies.
#include <unistd.h>

#include <chrono>
#include <random>
#include <unordered_map>

#include "channel_impl.hpp"
#include "rpc_format.hpp"

namespace tern {

namespace {

using libtern::RpcHeader;

std::uint64_t NewClientId() {
  static std::atomic<std::uint64_t> counter{0};
  std::random_device random;
  // Random bits keep ids of different jobs apart; pid and a counter keep this job's threads
  // apart even if random_device were weak.
  std::uint64_t id = (static_cast<std::uint64_t>(random()) << 32) ^ random();
  id ^= static_cast<std::uint64_t>(::getpid()) << 16;
  id += counter.fetch_add(1);
  return id == 0 ? 1 : id;
}

struct ClientState {
  std::weak_ptr<Channel::Impl> impl;
  std::uint32_t reply_port = 0;
  std::uint64_t client = NewClientId();
  std::uint64_t next_sequence = 1;
};

// Per thread, per channel (by id: an address could be reused by a later channel).
struct ThreadClients {
  std::unordered_map<std::uint64_t, ClientState> by_channel;
  ~ThreadClients() {
    for (auto& [id, state] : by_channel) {
      auto impl = state.impl.lock();
      if (!impl || state.reply_port == 0) continue;
      ipc::WireWriter writer;
      writer.U32(state.reply_port);
      (void)impl->Request(ipc::JobOp::kDeallocate, writer.out());
    }
  }
};

thread_local ThreadClients thread_clients;

bool IsForever(Timeout timeout) { return libtern::TimeoutMs(timeout) == ipc::kWaitForever; }

}  // namespace

IpcResult<Message> Channel::call(std::uint32_t port, std::vector<Item> items,
                                 CallOptions options) const {
  auto& clients = thread_clients.by_channel;
  if (!clients.contains(impl_->id())) {
    std::erase_if(clients, [](const auto& entry) { return entry.second.impl.expired(); });
  }
  ClientState& state = clients[impl_->id()];
  state.impl = impl_;
  if (state.reply_port == 0) {
    auto reply_port = port_allocate();
    if (!reply_port) return reply_port.error();
    state.reply_port = *reply_port;
  }
  const RpcHeader header{0, state.client, state.next_sequence++};

  Message request;
  request.destination = port;
  request.destination_disposition = Disposition::kCopySend;
  request.reply = state.reply_port;
  request.reply_disposition = Disposition::kMakeSendOnce;
  request.id = libtern::kRpcRequestId;
  request.items.reserve(items.size() + 1);
  request.items.push_back(libtern::EncodeRpcHeader(header));
  for (Item& item : items) request.items.push_back(std::move(item));

  const int attempts = options.attempts < 1 ? 1 : options.attempts;
  for (int attempt = 0; attempt < attempts; ++attempt) {
    const auto deadline = std::chrono::steady_clock::now() + options.timeout;
    bool first = true;
    for (;;) {
      Timeout left = kForever;
      if (!IsForever(options.timeout)) {
        left = std::chrono::duration_cast<Timeout>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
      }
      // The request and the wait for its reply in one round trip to the agent; later waits
      // (after a stale reply) receive only.
      auto reply =
          first ? send_receive(request, state.reply_port, left, FullPolicy::kWait, options.timeout)
                : receive(state.reply_port, left);
      if (first && !reply && reply.status() != JobStatus::kTimedOut) return reply.error();
      first = false;
      if (!reply) {
        if (reply.status() == JobStatus::kTimedOut) break;
        return reply.error();
      }
      auto got = libtern::DecodeRpcHeader(*reply);
      // A late reply to an earlier call that timed out: not ours, drop it.
      if (!got || reply->id != libtern::kRpcReplyId || got->client != header.client ||
          got->sequence != header.sequence) {
        continue;
      }
      if (got->flags & libtern::kRpcAckWanted) {
        Message ack;
        ack.destination = port;
        ack.destination_disposition = Disposition::kCopySend;
        ack.id = libtern::kRpcAckId;
        ack.items.push_back(libtern::EncodeRpcHeader({0, header.client, header.sequence}));
        // A lost ack costs only memory until the next request, which acknowledges it too.
        (void)send(ack, FullPolicy::kFail);
      }
      reply->items.erase(reply->items.begin());
      if (got->flags & libtern::kRpcHandlerFailed) {
        return IpcError{JobStatus::kBadRequest,
                        "RPC handler failed: " + std::string(FirstBytes(*reply))};
      }
      return std::move(*reply);
    }
  }
  return IpcError{JobStatus::kTimedOut, "no RPC reply after " + std::to_string(attempts) +
                                            (attempts == 1 ? " attempt" : " attempts")};
}

IpcResult<std::string> Channel::call(std::uint32_t port, std::string_view request,
                                     CallOptions options) const {
  std::vector<Item> items;
  items.push_back(Item::Bytes(std::string(request)));
  auto reply = call(port, std::move(items), options);
  if (!reply) return reply.error();
  return std::string(FirstBytes(*reply));
}

}  // namespace tern
