// Channel::call: the client half of libtern's RPC (docs/ipc.md "RPC (libtern)", "Direct
// calls").
//
// Each thread is one RPC client per channel: it has its own client id, sequence numbers and
// reply port (allocated on its first call through the agents and deallocated when the thread
// exits), so calls from different threads never wait on each other's replies.
//
// Per thread, per channel and per send name a call may go direct: over a connection to the
// serving job that the agents set up (direct_open) and the thread owns, one write of the
// request and one read of the answer. The first call on a name goes through the agents (the
// thread's sends on it before then were not tracked, and a direct call must not overtake
// them); after that, a call goes direct when its items are data only and the thread has not
// sent on that name through the agents since its last call there. Whatever goes wrong on the
// connection sends the same request (same client id and sequence) through the agents, where
// the server's duplicate check makes the repeat safe.
//
// A send_receive shaped like a call (data only, its reply a send-once right to the port it
// receives on) shares this path once the receiver has accepted a connection (docs/ipc.md
// "send_receive direct"): the same client id, sequences, connection and fallback, with the
// message's id carried along and its reply handed back as a plain received message.
//
// When the channel re-attaches during a call (its agent was killed and restarted: the reply
// port, homed at that agent, is gone with it), the call allocates a new reply port and sends
// the same request again (same client id and sequence): the server's duplicate check answers a
// request it handled from its kept reply, so the call is handled once, and answered.
#include <unistd.h>

#include <chrono>
#include <optional>
#include <unordered_map>

#include "channel_impl.hpp"
#include "direct_connection.hpp"
#include "direct_wire.hpp"
#include "random_id.hpp"
#include "rpc_format.hpp"

namespace tern {

constinit thread_local bool libtern::thread_has_direct_state = false;

namespace {

using Clock = std::chrono::steady_clock;
using libtern::DirectConnection;
using libtern::RpcHeader;

// A call repeats its request after this many re-attaches at most (each one a restarted agent).
constexpr int kMaxReattachRepeats = 8;

// A call through the agents without a reply asks again after this long, then after twice as
// long each time, up to the second bound: a few small messages for a call that runs long, and
// well within the server's default keep_replies_for (60 s), so that a repeat finds the kept
// reply of a request answered into a lost reply right.
constexpr auto kFirstRepeatAfter = std::chrono::seconds(2);
constexpr auto kMaxRepeatAfter = std::chrono::seconds(16);

// After a refused direct_open a name's calls go through the agents for this long.
constexpr auto kRefusedFor = std::chrono::seconds(1);

// One send name's direct path for this thread.
struct DirectPort {
  std::optional<DirectConnection> connection;
  Clock::time_point refused_until{};
  // Set by a send through the agents on this name; cleared by the end of each call there.
  bool sent_through_agents = false;
};

struct ClientState {
  std::weak_ptr<Channel::Impl> impl;
  std::uint32_t reply_port = 0;
  std::uint64_t client = libtern::NewRandomId();
  std::uint64_t reattached = 0;  // the channel's count when reply_port was allocated
  std::uint64_t next_sequence = 1;
  std::unordered_map<std::uint32_t, DirectPort> direct;  // by send name
};

// Per thread, per channel (by id: an address could be reused by a later channel). The direct
// connections close with it, when the thread ends.
struct ThreadClients {
  std::unordered_map<std::uint64_t, ClientState> by_channel;
  ~ThreadClients() {
    libtern::thread_has_direct_state = false;
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

Clock::time_point DeadlineAfter(Timeout timeout) {
  if (IsForever(timeout)) return Clock::time_point::max();
  return Clock::now() + timeout;
}

// What a direct attempt came to.
enum class DirectEnd {
  kAnswered,       // `answer` holds the reply
  kTimedOut,       // no answer by the deadline; the connection stays
  kThroughAgents,  // the reply holds rights: repeat through the agents
  kBroken,         // the connection is closed: repeat through the agents
};

// What is exchanged: an RPC call, or a send_receive's message (its id travels with it, the
// reply comes back as a plain message with that id, a handler's failure is its text).
struct Shape {
  bool message = false;
  std::uint32_t message_id = 0;
  std::uint32_t receive_port = 0;  // the send_receive's port: the reply's destination
  FullPolicy policy = FullPolicy::kWait;
  Timeout send_timeout = kForever;
};

DirectEnd CallDirect(DirectPort& direct, const RpcHeader& header, const std::vector<Item>& items,
                     const Shape& shape, Clock::time_point deadline,
                     libtern::DirectAnswer& answer) {
  DirectConnection& connection = *direct.connection;
  ipc::WireWriter frame(/*share_data=*/true);
  libtern::WriteDirectCall(
      frame, shape.message ? libtern::DirectCallKind::kMessage : libtern::DirectCallKind::kRequest,
      header.client, header.sequence, items, header.message_id);
  bool ok = static_cast<bool>(connection.Write(frame));
  while (ok) {
    auto read = connection.Read(deadline);
    if (!read) break;
    if (!*read) return DirectEnd::kTimedOut;
    if ((*read)->type != ipc::FrameType::kDirectAnswer) break;
    auto parsed = libtern::ParseDirectAnswer(
        std::make_shared<const std::string>(std::move((*read)->payload)));
    if (!parsed) break;
    // A late answer to an earlier call that timed out: skipped.
    if (parsed->client != header.client || parsed->sequence != header.sequence) continue;
    if (parsed->outcome == libtern::DirectOutcome::kCallThroughAgents) {
      return DirectEnd::kThroughAgents;
    }
    answer = std::move(*parsed);
    return DirectEnd::kAnswered;
  }
  direct.connection.reset();
  return DirectEnd::kBroken;
}

// The reply's items, or the handler's failure.
IpcResult<Message> Finish(Message reply, std::uint8_t flags) {
  if (flags & libtern::kRpcHandlerFailed) {
    return IpcError{JobStatus::kBadRequest,
                    "RPC handler failed: " + std::string(FirstBytes(reply))};
  }
  return reply;
}

// Clears a name's "sent through the agents" mark when a call there ends, whichever way: the
// call's own traffic through the agents (its request, an ack) does not count.
struct ClearSentMark {
  DirectPort& direct;
  ~ClearSentMark() { direct.sent_through_agents = false; }
};

}  // namespace

void libtern::NoteAgentSendSlow(std::uint64_t channel, std::uint32_t name) {
  auto state = thread_clients.by_channel.find(channel);
  if (state == thread_clients.by_channel.end()) return;
  auto direct = state->second.direct.find(name);
  if (direct != state->second.direct.end()) direct->second.sent_through_agents = true;
}

namespace {

ClientState& ClientFor(const std::shared_ptr<Channel::Impl>& impl) {
  auto& clients = thread_clients.by_channel;
  if (!clients.contains(impl->id())) {
    std::erase_if(clients, [](const auto& entry) { return entry.second.impl.expired(); });
  }
  ClientState& state = clients[impl->id()];
  state.impl = impl;
  // The channel re-attached since this thread last used it: its reply port is gone with the old
  // agent, and the restarted agent does not know its direct connections (it could not shut them
  // down before a move, so the job could not move): they are closed, and made again through the
  // new agent.
  if (state.reattached != impl->reattached()) {
    state.reattached = impl->reattached();
    state.reply_port = 0;
    state.direct.clear();
  }
  return state;
}

// Opens `direct`'s connection if it has none and may ask: false when there is none to use.
bool EnsureConnection(Channel::Impl& impl, DirectPort& direct, std::uint32_t port) {
  if (direct.connection) return true;
  if (Clock::now() < direct.refused_until) return false;
  if (auto fd = libtern::DirectOpen(impl, port)) {
    direct.connection.emplace(std::move(*fd));
    return true;
  }
  // Refused (or an agent that does not know the op): through the agents for a while.
  direct.refused_until = Clock::now() + kRefusedFor;
  return false;
}

// One request and its reply, direct when `go_direct` and the connection holds, else (or after
// the connection broke) the same (client, sequence) through the agents in the RPC format.
IpcResult<Message> Exchange(const Channel& channel, Channel::Impl& impl, ClientState& state,
                            DirectPort& direct, bool go_direct, std::uint32_t port,
                            std::vector<Item> items, CallOptions options, const Shape& shape) {
  const std::uint8_t request_flags = shape.message ? libtern::kRpcCarriesId : 0;
  const RpcHeader header{request_flags, state.client, state.next_sequence++, shape.message_id};
  const auto finish = [&](Message reply, std::uint8_t flags) -> IpcResult<Message> {
    if (!shape.message) return Finish(std::move(reply), flags);
    reply.destination = shape.receive_port;
    reply.id = shape.message_id;
    return reply;
  };

  std::optional<Message> request;  // the agent path's message, built when first needed
  const int attempts = options.attempts < 1 ? 1 : options.attempts;
  for (int attempt = 0; attempt < attempts; ++attempt) {
    const auto deadline = DeadlineAfter(options.timeout);
    if (go_direct && direct.connection) {
      libtern::DirectAnswer answer;
      switch (CallDirect(direct, header, items, shape, deadline, answer)) {
        case DirectEnd::kAnswered: {
          if (answer.flags & libtern::kRpcAckWanted) {
            ipc::WireWriter ack;
            libtern::WriteDirectCall(ack, libtern::DirectCallKind::kAck, header.client,
                                     header.sequence, {});
            // A lost ack costs only memory until the next request, which acknowledges it too.
            if (!direct.connection->Write(ack)) direct.connection.reset();
          }
          Message reply;
          reply.destination = state.reply_port;
          reply.id = libtern::kRpcReplyId;
          reply.items = std::move(answer.items);
          return finish(std::move(reply), answer.flags);
        }
        case DirectEnd::kTimedOut:
          continue;
        case DirectEnd::kThroughAgents:
        case DirectEnd::kBroken:
          go_direct = false;  // this call's repeat goes through the agents, at once
          break;
      }
    }

    if (state.reply_port == 0) {
      state.reattached = impl.reattached();
      auto reply_port = channel.port_allocate();
      if (!reply_port) return reply_port.error();
      state.reply_port = *reply_port;
      if (request) request->reply = state.reply_port;
    }
    if (!request) {
      request.emplace();
      request->destination = port;
      request->destination_disposition = Disposition::kCopySend;
      request->reply = state.reply_port;
      request->reply_disposition = Disposition::kMakeSendOnce;
      request->id = libtern::kRpcRequestId;
      request->items.reserve(items.size() + 1);
      request->items.push_back(libtern::EncodeRpcHeader(header));
      for (Item& item : items) request->items.push_back(std::move(item));
    }
    bool first = true;
    int reattaches = 0;
    // A call (not a send_receive, whose receiver may not check for duplicates) asks again now
    // and then while no reply comes: the reply right it gave may be gone with the server's
    // agent (killed while the server held it, or before the server's reply reached it: a
    // send-once right is not in the agent's journal), and nothing would ever answer. The server
    // answers a repeat of an answered request from its kept reply, and a repeat of a running
    // one not at all, so a repeat never runs the handler twice; a stale reply is skipped.
    const bool may_repeat = !shape.message;
    auto repeat_after = kFirstRepeatAfter;
    auto next_repeat = Clock::now() + repeat_after;
    bool repeated = false;
    for (;;) {
      const auto now = Clock::now();
      Timeout left = kForever;
      if (deadline != Clock::time_point::max()) {
        left = std::chrono::duration_cast<Timeout>(deadline - now);
        if (left.count() <= 0) break;
      }
      const bool repeating = may_repeat && next_repeat < deadline;
      if (repeating) {
        left = std::min(
            left, std::max(Timeout(1), std::chrono::duration_cast<Timeout>(next_repeat - now)));
      }
      // The request and the wait for its reply in one round trip to the agent; later waits
      // (after a stale reply) receive only.
      const std::uint64_t reattached = impl.reattached();
      const bool sending = first;
      auto reply = sending
                       ? channel.send_receive(*request, state.reply_port, left,
                                              repeated ? FullPolicy::kFail : shape.policy,
                                              shape.message ? shape.send_timeout : options.timeout)
                       : channel.receive(state.reply_port, left);
      if (!reply && reply.status() != JobStatus::kTimedOut && impl.reattached() != reattached &&
          ++reattaches <= kMaxReattachRepeats) {
        // Lost with the agent: again, same client and sequence, to a new reply port.
        state.reattached = impl.reattached();
        auto reply_port = channel.port_allocate();
        if (!reply_port) return reply_port.error();
        state.reply_port = *reply_port;
        request->reply = state.reply_port;
        first = true;
        continue;
      }
      if (sending && !reply && reply.status() == JobStatus::kQueueFull && repeated) {
        // A repeat that finds the server's queue full: the request is in it or being served.
        first = false;
        continue;
      }
      if (sending && !reply && reply.status() != JobStatus::kTimedOut) return reply.error();
      first = false;
      if (!reply) {
        if (reply.status() != JobStatus::kTimedOut) return reply.error();
        // Woken by the repeat's time (or a little early, or at the deadline: the loop's top).
        if (repeating && Clock::now() + std::chrono::milliseconds(2) >= next_repeat) {
          first = true;
          repeated = true;
          repeat_after = std::min(repeat_after * 2, kMaxRepeatAfter);
          next_repeat = Clock::now() + repeat_after;
        }
        continue;
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
        (void)channel.send(ack, FullPolicy::kFail);
      }
      reply->items.erase(reply->items.begin());
      return finish(std::move(*reply), got->flags);
    }
  }
  return IpcError{JobStatus::kTimedOut, "no RPC reply after " + std::to_string(attempts) +
                                            (attempts == 1 ? " attempt" : " attempts")};
}

}  // namespace

IpcResult<Message> Channel::call(std::uint32_t port, std::vector<Item> items,
                                 CallOptions options) const {
  ClientState& state = ClientFor(impl_);
  auto [entry, first_call] = state.direct.try_emplace(port);
  DirectPort& direct = entry->second;
  libtern::thread_has_direct_state = true;
  const ClearSentMark clear_mark{direct};
  bool go_direct = !first_call && !direct.sent_through_agents && libtern::IsDataOnly(items);
  if (go_direct) go_direct = EnsureConnection(*impl_, direct, port);
  return Exchange(*this, *impl_, state, direct, go_direct, port, std::move(items), options,
                  Shape{});
}

std::optional<IpcResult<Message>> libtern::SendReceiveDirect(
    const Channel& channel, const std::shared_ptr<Channel::Impl>& impl, const Message& message,
    std::uint32_t port, Timeout receive_timeout, FullPolicy policy, Timeout send_timeout) {
  // Only a message that asks for its answer on `port` and carries nothing but data: its reply
  // right is then the connection itself (no right travels).
  if (message.destination_disposition != Disposition::kCopySend || message.reply != port ||
      message.reply_disposition != Disposition::kMakeSendOnce || port == 0 ||
      libtern::IsRpcMessage(message) || !libtern::IsDataOnly(message.items)) {
    return std::nullopt;
  }
  ClientState& state = ClientFor(impl);
  auto [entry, first_use] = state.direct.try_emplace(message.destination);
  libtern::thread_has_direct_state = true;
  // The first message on a name goes plain through the agents (sends before it were not
  // tracked), as does every one while the receiver takes no direct traffic.
  if (first_use) return std::nullopt;
  DirectPort& direct = entry->second;
  if (!EnsureConnection(*impl, direct, message.destination)) return std::nullopt;
  // The receiver accepted a connection, so it is an RpcServer: from here the exchange has a
  // (client, sequence) and any repeat through the agents is checked for duplicates.
  const ClearSentMark clear_mark{direct};
  const bool go_direct = !direct.sent_through_agents;
  CallOptions options;
  options.timeout = receive_timeout;
  Shape shape;
  shape.message = true;
  shape.message_id = message.id;
  shape.receive_port = port;
  shape.policy = policy;
  shape.send_timeout = send_timeout;
  return Exchange(channel, *impl, state, direct, go_direct, message.destination, message.items,
                  options, shape);
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
