// Link operations direct: the sender's and receiver's sides, the handles that follow an
// operation between the agents and a connection, and the keeper (link_direct.hpp has the
// contract, docs/ipc.md "Link operations direct" the protocol).
#include "link_direct.hpp"

#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "direct_connection.hpp"
#include "direct_wire.hpp"
#include "link_wire.hpp"

namespace tern::libtern {

std::atomic<bool> direct_links_made{false};

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using ipc::JobOp;
using ipc::WireReader;
using ipc::WireWriter;

constexpr std::size_t kWindowOffers = 256;      // unanswered offers on a connection
constexpr std::size_t kWindowBytes = 8u << 20;  // and their bytes (one larger offer alone)
constexpr std::size_t kInboxOffers = 1024;      // offers a receiver holds unmatched
constexpr std::size_t kInboxBytes = 64u << 20;
constexpr std::size_t kMaxCancelled = 16384;  // a settle's list; past it the receiver breaks
constexpr auto kSetUpWait = 3s;     // a kicked receiver waits this long for its connection's Hello
constexpr auto kFirstRetry = 10ms;  // a refused begin or open is tried again after this,
constexpr auto kLastRetry = 1s;     // doubling up to this
constexpr auto kKeepEvery = 10ms;
constexpr auto kDrainFor = 1s;     // how long new offers wait here for a refused begin
constexpr auto kBeginEvery = 1ms;  // and how often the begin is asked again meanwhile
constexpr std::size_t kSettledKept = 8;
// Matches a receiver owes its sender at most before it writes them on their own (they wait for
// the receiver's next offer on the end, LinkMatchedBack, or for its thread to wait).
constexpr std::size_t kOwedMost = 64;

std::atomic<std::uint64_t> matches_direct{0};

// TERN_IPC_LINK_TRACE=1: each change of a link end's state on stderr (why a link stays on the
// agents).
void Trace(const char* format, ...) __attribute__((format(printf, 1, 2)));
void Trace(const char* format, ...) {
  static const bool on = [] {
    const char* value = std::getenv("TERN_IPC_LINK_TRACE");
    return value != nullptr && std::string_view(value) == "1";
  }();
  if (!on) return;
  va_list args;
  va_start(args, format);
  std::string line = "tern link: ";
  char buffer[512];
  std::vsnprintf(buffer, sizeof buffer, format, args);
  va_end(args);
  line += buffer;
  line += '\n';
  (void)::write(2, line.data(), line.size());
}

IpcError NoSuchOp(OpHandle handle) {
  return IpcError{JobStatus::kInvalidName, "no link operation " + std::to_string(handle)};
}

// The connections an operation waits on: its own, and for a send the other direction's (its
// answers may ride there, LinkMatchedBack); -1 where there is none. Bit i of a mask is fds[i].
using WaitFds = std::array<int, 2>;

// Waits up to `ms` for one of `fds` to be readable (a moment, without any), the lock released
// meanwhile; returns the mask of those readable.
unsigned WaitReadable(std::unique_lock<std::mutex>& lock, const WaitFds& fds, std::int64_t ms) {
  std::array<pollfd, 2> watch{};
  std::array<unsigned, 2> bit{};
  nfds_t count = 0;
  for (unsigned i = 0; i < fds.size(); ++i) {
    if (fds[i] < 0) continue;
    watch[count] = pollfd{fds[i], POLLIN, 0};
    bit[count++] = 1u << i;
  }
  lock.unlock();
  unsigned ready = 0;
  if (count > 0) {
    if (::poll(watch.data(), count, static_cast<int>(ms)) > 0) {
      for (nfds_t i = 0; i < count; ++i) {
        if (watch[i].revents != 0) ready |= bit[i];
      }
    }
  } else {
    std::this_thread::sleep_for(1ms);
  }
  lock.lock();
  return ready;
}

// ---- the agent's operations -------------------------------------------------------------

IpcResult<std::uint64_t> AgentBegin(Channel::Impl& impl, std::uint32_t end) {
  auto reply = impl.Request(JobOp::kLinkDirectBegin, NameBody(end));
  if (!reply) return reply.error();
  WireReader reader(reply->body());
  auto epoch = reader.U64();
  if (!epoch) return Malformed(JobOp::kLinkDirectBegin);
  return *epoch;
}

IpcResult<void> AgentSettle(Channel::Impl& impl, std::uint32_t end, std::uint64_t epoch,
                            std::uint32_t matched_through,
                            const std::vector<std::uint32_t>& cancelled) {
  WireWriter writer;
  writer.U32(end);
  writer.U64(epoch);
  writer.U32(matched_through);
  writer.U32(static_cast<std::uint32_t>(cancelled.size()));
  for (const std::uint32_t seq : cancelled) writer.U32(seq);
  auto reply = impl.Request(JobOp::kLinkSettle, writer.Take());
  if (!reply) return reply.error();
  return {};
}

IpcResult<OpHandle> AgentLinkSendTagged(Channel::Impl& impl, std::uint32_t end, std::uint64_t epoch,
                                        std::uint32_t seq, const Message& message) {
  WireWriter writer(/*share_data=*/true);
  writer.U32(end);
  writer.U64(epoch);
  writer.U32(seq);
  writer.WriteMessage(message);
  return NameReply(impl.Request(JobOp::kLinkSendTagged, Pieces(writer)), JobOp::kLinkSendTagged);
}

// The epoch of a home's "direct now" answer to a receive, if `result` is one.
std::optional<std::uint64_t> DirectNowEpoch(const OpResult& result) {
  if (!result.is_receive || result.message.id != ipc::kLinkDirectNowId ||
      result.message.items.size() != 1 || result.message.items[0].bytes().size() != 8) {
    return std::nullopt;
  }
  std::uint64_t epoch = 0;
  const std::string_view bytes = result.message.items[0].bytes();
  for (int i = 7; i >= 0; --i) epoch = (epoch << 8) | static_cast<unsigned char>(bytes[i]);
  return epoch;
}

void EndConnection(std::optional<DirectConnection>& connection) {
  // shutdown, not only close: the agent keeps a copy of every end (to revoke it), so a close
  // alone would not tell the other job.
  if (connection) ::shutdown(connection->fd(), SHUT_RDWR);
  connection.reset();
}

// ---- the state of one channel's links ---------------------------------------------------

struct Op {
  enum class Where { kAgent, kConnection, kDone };
  bool is_receive = false;
  std::uint32_t end = 0;  // 0: a receive on any end
  Where where = Where::kAgent;
  OpHandle agent = 0;     // kAgent
  std::uint32_t seq = 0;  // kConnection, a send
  bool cancel_sent = false;
  bool cancelled = false;                      // kDone by the receiver's Cancelled
  std::optional<IpcResult<OpResult>> outcome;  // kDone
};

struct Offer {
  OpHandle handle = 0;
  Message message;
  bool written = false;
};

// One end this job sends on.
struct Sender {
  // kDraining: the connection is there and the home refused the begin (earlier offers of this
  // direction wait there); new offers are numbered and kept here until a begin succeeds, or go
  // through the agents after kDrainFor.
  enum class State { kPlain, kDraining, kDirect };
  State state = State::kPlain;
  Clock::time_point drain_until{};
  Clock::time_point next_begin{};
  std::optional<DirectConnection> connection;
  std::uint64_t epoch = 0;
  std::uint32_t next_seq = 1;
  std::map<std::uint32_t, Offer> unanswered;  // by seq, written or waiting for the window
  std::size_t written_offers = 0;
  std::size_t written_bytes = 0;
  std::set<OpHandle> agent_sends;  // this end's sends waiting in the agents
  bool unread = true;              // bytes may have come since a read last drained the socket
  Clock::time_point retry_at{};
  Clock::duration backoff = kFirstRetry;
};

// One end this job receives on.
struct Receiver {
  enum class State { kHome, kDirect };
  State state = State::kHome;
  std::optional<DirectConnection> connection;
  std::uint64_t epoch = 0;  // kDirect
  std::uint32_t matched_through = 0;
  std::vector<std::uint32_t> cancelled;
  // Offers matched here whose sender has not been told (seqs, oldest first): they ride this
  // job's next offer on the end (LinkMatchedBack), or go as LinkMatched before a wait.
  std::vector<std::uint32_t> owed;
  std::deque<std::pair<std::uint32_t, Message>> inbox;
  std::size_t inbox_bytes = 0;
  std::deque<OpHandle> waiting;       // receives queued here, oldest first
  bool unread = true;                 // as Sender::unread
  bool accepting = false;             // direct_accept posted since the last settle,
  std::uint64_t accepting_under = 0;  // to the agent of this hello count (a move forgets it)
  bool refused = false;               // the agent takes no direct links on this end
  std::deque<std::uint64_t> settled;
};

class ChannelLinks {
 public:
  explicit ChannelLinks(const std::shared_ptr<Channel::Impl>& impl) : impl_(impl) {}

  std::mutex mu;

  IpcResult<OpHandle> Send(Channel::Impl& impl, std::uint32_t end, const Message& message);
  IpcResult<OpHandle> Receive(Channel::Impl& impl, std::uint32_t end);
  IpcResult<OpResult> Wait(Channel::Impl& impl, OpHandle handle, Timeout timeout);
  IpcResult<std::optional<OpResult>> Poll(Channel::Impl& impl, OpHandle handle);
  IpcResult<void> Cancel(Channel::Impl& impl, OpHandle handle);
  void EndLeaves(Channel::Impl& impl, std::uint32_t end);
  // The keeper's turn (mu held): reads what came on each connection, carries out breaks.
  void Keep(Channel::Impl& impl);
  // The channel closes or the process exits (mu held): what the receivers owe is written where
  // it can be, without the agent; the rest is dropped (the settle would have said it).
  void FlushOwedQuietly();
  std::shared_ptr<Channel::Impl> impl() const { return impl_.lock(); }

 private:
  using Lock = std::unique_lock<std::mutex>;

  OpHandle NewHandle() {
    OpHandle handle;
    do {
      handle = kLinkHandleBit | (next_handle_++ & ~kLinkHandleBit);
    } while (ops_.contains(handle) || handle == kLinkHandleBit);
    return handle;
  }
  // A done operation's outcome, handed out once: the handle is forgotten.
  IpcResult<OpResult> TakeOutcome(std::map<OpHandle, Op>::iterator it) {
    auto outcome = std::move(*it->second.outcome);
    ops_.erase(it);
    return outcome;
  }
  void Done(OpHandle handle, Op& op, IpcResult<OpResult> outcome) {
    op.where = Op::Where::kDone;
    op.outcome = std::move(outcome);
    if (!op.is_receive) {
      if (auto sender = senders_.find(op.end); sender != senders_.end()) {
        sender->second.agent_sends.erase(handle);
      }
    }
  }

  // The sender's side.
  void TryDirect(Channel::Impl& impl, std::uint32_t end, Sender& sender);
  void Begin(Channel::Impl& impl, std::uint32_t end, Sender& sender);
  void WriteWaiting(Channel::Impl& impl, std::uint32_t end, Sender& sender);
  void PumpSender(Channel::Impl& impl, std::uint32_t end, Sender& sender);
  // The answer to the written offer `seq`: its send is done. False when no written offer has it.
  bool Answered(std::uint32_t end, Sender& sender, bool matched, std::uint32_t seq);
  void BreakSender(Channel::Impl& impl, std::uint32_t end, Sender& sender);

  // The receiver's side.
  void RegisterAccept(Channel::Impl& impl, std::uint32_t end, Receiver& receiver);
  void PumpReceiver(Channel::Impl& impl, std::uint32_t end, Receiver& receiver);
  void MatchInbox(Channel::Impl& impl, std::uint32_t end, Receiver& receiver);
  // Whether this job's answers to offers on `end` can wait for its own next offer there (it
  // sends on the end directly, to the job that sends to it).
  bool AnswersRide(std::uint32_t end) const;
  // Writes what the receiver owes as LinkMatched, on its own connection.
  void FlushOwed(Channel::Impl& impl, std::uint32_t end, Receiver& receiver);
  // Before this process's thread waits (or the keeper's turn): every receiver's debts.
  void FlushAllOwed(Channel::Impl& impl);
  void BreakReceiver(Channel::Impl& impl, std::uint32_t end, Receiver& receiver);
  // A kick for `epoch` on `end`: true if the receive now waits here, false if it is to be posted
  // at the home again (the epoch was settled instead).
  bool Kicked(Channel::Impl& impl, std::uint32_t end, std::uint64_t epoch);
  void SettleOnce(Channel::Impl& impl, std::uint32_t end, Receiver& receiver, std::uint64_t epoch);

  // An agent's answer for an op in the agents: done, or moved (a kick).
  void AgentAnswered(Channel::Impl& impl, OpHandle handle, Op& op, IpcResult<OpResult> result);
  // Reads the connections an op waits on (`look`, a mask of WaitFds: read even if the last read
  // drained it: a wait saw it readable, or the caller polls); returns the fds to wait on.
  WaitFds Pump(Channel::Impl& impl, Op& op, unsigned look);

  std::weak_ptr<Channel::Impl> impl_;
  std::map<OpHandle, Op> ops_;
  std::map<std::uint32_t, Sender> senders_;
  std::map<std::uint32_t, Receiver> receivers_;
  std::uint32_t next_handle_ = 1;
  bool any_receives_ = false;
  bool agent_knows_ = true;  // false: an agent without the direct link ops
};

// ---- sender -------------------------------------------------------------------------------

void ChannelLinks::TryDirect(Channel::Impl& impl, std::uint32_t end, Sender& sender) {
  if (!sender.connection) {
    auto fd = DirectOpen(impl, end);
    if (!fd) Trace("end %u: direct_open refused: %s", end, fd.error().ToString().c_str());
    if (!fd) {
      sender.retry_at = Clock::now() + sender.backoff;
      sender.backoff = std::min<Clock::duration>(sender.backoff * 2, kLastRetry);
      return;
    }
    sender.connection.emplace(std::move(*fd));
    sender.unread = true;
  }
  sender.state = Sender::State::kDraining;
  sender.drain_until = Clock::now() + kDrainFor;
  sender.next_begin = Clock::now();
  sender.next_seq = 1;
  Begin(impl, end, sender);
}

// One begin of a draining sender: direct from now on, or ask again later, or give up (the kept
// offers then go through the agents).
void ChannelLinks::Begin(Channel::Impl& impl, std::uint32_t end, Sender& sender) {
  if (sender.state != Sender::State::kDraining || Clock::now() < sender.next_begin) return;
  auto epoch = AgentBegin(impl, end);
  if (!epoch) Trace("end %u: begin refused: %s", end, epoch.error().ToString().c_str());
  if (epoch) Trace("end %u: direct, epoch %llx", end, static_cast<unsigned long long>(*epoch));
  if (!epoch) {
    if (epoch.error().status == JobStatus::kBadRequest) agent_knows_ = false;
    if (!agent_knows_ || Clock::now() >= sender.drain_until) {
      sender.backoff = std::min<Clock::duration>(sender.backoff * 2, kLastRetry);
      return BreakSender(impl, end, sender);
    }
    sender.next_begin = Clock::now() + kBeginEvery;
    return;
  }
  WireWriter hello;
  WriteLinkHello(hello, *epoch);
  sender.state = Sender::State::kDirect;
  sender.epoch = *epoch;
  sender.backoff = kFirstRetry;
  if (!sender.connection->Write(hello)) return BreakSender(impl, end, sender);
  WriteWaiting(impl, end, sender);
}

// Offers waiting for the window go out while it has room (in seq order).
void ChannelLinks::WriteWaiting(Channel::Impl& impl, std::uint32_t end, Sender& sender) {
  for (auto& [seq, offer] : sender.unanswered) {
    if (sender.state != Sender::State::kDirect || !sender.connection) return;
    if (offer.written) continue;
    const std::size_t bytes = offer.message.ByteSize();
    if (sender.written_offers > 0 &&
        (sender.written_offers >= kWindowOffers || sender.written_bytes + bytes > kWindowBytes)) {
      return;
    }
    WireWriter frame(/*share_data=*/true);
    // What this job's receiver owes the other side's sender goes ahead of the offer, in the
    // same write (the other side's receiver hands it to its sender).
    if (auto receiver = receivers_.find(end);
        receiver != receivers_.end() && receiver->second.state == Receiver::State::kDirect) {
      for (const std::uint32_t taken : receiver->second.owed) {
        WriteLinkMatchedBack(frame, receiver->second.epoch, taken);
      }
      receiver->second.owed.clear();
    }
    WriteLinkOffer(frame, seq, offer.message);
    offer.written = true;
    ++sender.written_offers;
    sender.written_bytes += bytes;
    if (!sender.connection->Write(frame)) return BreakSender(impl, end, sender);
  }
}

void ChannelLinks::PumpSender(Channel::Impl& impl, std::uint32_t end, Sender& sender) {
  if (sender.state == Sender::State::kDraining) return Begin(impl, end, sender);
  if (!sender.connection) return;
  // Read only when a wait saw the socket readable, or nobody looked since a read drained it: a
  // link exchange is a few syscalls, and a read that finds nothing is one of them.
  if (sender.unread) {
    if (auto read = sender.connection->ReadAvailable(); !read)
      return BreakSender(impl, end, sender);
    sender.unread = false;
  }
  while (auto frame = sender.connection->Next()) {
    auto parsed = ParseLinkFrame(std::move(*frame));
    if (!parsed || (parsed->type != kLinkMatched && parsed->type != kLinkCancelled)) {
      return BreakSender(impl, end, sender);
    }
    if (!Answered(end, sender, parsed->type == kLinkMatched, parsed->seq)) {
      return BreakSender(impl, end, sender);  // an answer to nothing asked: the peer is wrong
    }
  }
  WriteWaiting(impl, end, sender);
}

bool ChannelLinks::Answered(std::uint32_t end, Sender& sender, bool matched, std::uint32_t seq) {
  auto offer = sender.unanswered.find(seq);
  if (offer == sender.unanswered.end() || !offer->second.written) return false;
  const OpHandle handle = offer->second.handle;
  --sender.written_offers;
  sender.written_bytes -= offer->second.message.ByteSize();
  sender.unanswered.erase(offer);
  auto op = ops_.find(handle);
  if (op == ops_.end()) return true;
  if (matched) {
    Done(handle, op->second, OpResult{false, end, {}});
  } else {
    op->second.cancelled = true;
    Done(handle, op->second, IpcError{JobStatus::kCancelled, "the operation was cancelled"});
  }
  return true;
}

// Every unanswered offer goes again through the agents, tagged, in order; the connection ends.
void ChannelLinks::BreakSender(Channel::Impl& impl, std::uint32_t end, Sender& sender) {
  Trace("end %u: sender breaks (%s), %zu unanswered", end,
        sender.connection ? sender.connection->broken_reason().c_str() : "no connection",
        sender.unanswered.size());
  EndConnection(sender.connection);
  const bool was_direct = sender.state == Sender::State::kDirect;
  sender.state = Sender::State::kPlain;
  sender.written_offers = 0;
  sender.written_bytes = 0;
  sender.retry_at = Clock::now() + sender.backoff;
  auto unanswered = std::move(sender.unanswered);
  sender.unanswered.clear();
  for (auto& [seq, offer] : unanswered) {
    auto op = ops_.find(offer.handle);
    if (op == ops_.end()) continue;
    // Never written: the receiver cannot have it; as an ordinary send. Written: tagged, so that
    // the home judges it by the receiver's settle.
    auto handle = was_direct && offer.written
                      ? AgentLinkSendTagged(impl, end, sender.epoch, seq, offer.message)
                      : AgentLinkSend(impl, end, offer.message);
    if (!handle) {
      Done(offer.handle, op->second, handle.error());
      continue;
    }
    op->second.where = Op::Where::kAgent;
    op->second.agent = *handle;
    sender.agent_sends.insert(offer.handle);
  }
}

// ---- receiver -----------------------------------------------------------------------------

void ChannelLinks::RegisterAccept(Channel::Impl& impl, std::uint32_t end, Receiver& receiver) {
  receiver.accepting = true;
  receiver.accepting_under = impl.hellos();
  auto fd = DirectAccept(impl, end, Timeout(0));
  Trace("end %u: accepting: %s", end,
        fd ? "a connection was queued" : fd.error().ToString().c_str());
  if (fd) {
    EndConnection(receiver.connection);
    receiver.connection.emplace(std::move(*fd));
    receiver.unread = true;
    return;
  }
  const JobStatus status = fd.error().status;
  // An agent without direct links on ends says the name is no receive right; "unavailable"
  // (moving, no listener just now) is asked again at the next receive.
  if (status == JobStatus::kInvalidName || status == JobStatus::kBadRequest) {
    receiver.refused = true;
  } else if (status != JobStatus::kTimedOut) {
    receiver.accepting = false;
  }
}

void ChannelLinks::PumpReceiver(Channel::Impl& impl, std::uint32_t end, Receiver& receiver) {
  if (!receiver.connection) return;
  // A full inbox leaves the socket unread: the sender's window stops it.
  if (receiver.inbox.size() < kInboxOffers && receiver.inbox_bytes < kInboxBytes) {
    if (receiver.unread) {
      if (auto read = receiver.connection->ReadAvailable(); !read) {
        return BreakReceiver(impl, end, receiver);
      }
      receiver.unread = false;
    }
  }
  while (auto frame = receiver.connection->Next()) {
    auto parsed = ParseLinkFrame(std::move(*frame));
    if (!parsed) return BreakReceiver(impl, end, receiver);
    if (parsed->type == kLinkHello) {
      const bool stale = std::find(receiver.settled.begin(), receiver.settled.end(),
                                   parsed->epoch) != receiver.settled.end();
      if (receiver.state == Receiver::State::kDirect || stale) {
        return BreakReceiver(impl, end, receiver);
      }
      // The sender writes its Hello only once the home began the epoch.
      receiver.state = Receiver::State::kDirect;
      receiver.epoch = parsed->epoch;
      receiver.matched_through = 0;
      receiver.cancelled.clear();
      continue;
    }
    if (receiver.state != Receiver::State::kDirect) return BreakReceiver(impl, end, receiver);
    if (parsed->type == kLinkOffer) {
      if (parsed->seq <= receiver.matched_through ||
          (!receiver.inbox.empty() && parsed->seq <= receiver.inbox.back().first)) {
        return BreakReceiver(impl, end, receiver);  // offers come in order
      }
      parsed->message.destination = end;
      receiver.inbox_bytes += parsed->message.ByteSize();
      receiver.inbox.emplace_back(parsed->seq, std::move(parsed->message));
    } else if (parsed->type == kLinkMatchedBack) {
      // An answer to this job's own offers on the end, riding the other side's offer. Of
      // another epoch (this sender broke since): the settle answers it instead.
      auto sender = senders_.find(end);
      if (sender == senders_.end() || sender->second.state != Sender::State::kDirect ||
          sender->second.epoch != parsed->epoch) {
        continue;
      }
      if (!Answered(end, sender->second, true, parsed->seq)) {
        BreakSender(impl, end, sender->second);
        continue;
      }
      WriteWaiting(impl, end, sender->second);
    } else if (parsed->type == kLinkCancel) {
      auto offer = std::find_if(receiver.inbox.begin(), receiver.inbox.end(),
                                [&](const auto& held) { return held.first == parsed->seq; });
      if (offer == receiver.inbox.end()) continue;  // matched: its Matched went before
      receiver.inbox_bytes -= offer->second.ByteSize();
      receiver.inbox.erase(offer);
      receiver.cancelled.push_back(parsed->seq);
      WireWriter answer;
      WriteLinkSeq(answer, kLinkCancelled, parsed->seq);
      if (receiver.cancelled.size() > kMaxCancelled || !receiver.connection->Write(answer)) {
        return BreakReceiver(impl, end, receiver);
      }
    } else {
      return BreakReceiver(impl, end, receiver);
    }
  }
  MatchInbox(impl, end, receiver);
}

// The oldest offers go to the oldest waiting receives. Their Matched are owed: at once unless
// this job's next offer on the end can carry them (AnswersRide).
void ChannelLinks::MatchInbox(Channel::Impl& impl, std::uint32_t end, Receiver& receiver) {
  while (!receiver.waiting.empty() && !receiver.inbox.empty() && receiver.connection) {
    const OpHandle handle = receiver.waiting.front();
    receiver.waiting.pop_front();
    auto op = ops_.find(handle);
    if (op == ops_.end()) continue;
    auto [seq, message] = std::move(receiver.inbox.front());
    receiver.inbox.pop_front();
    receiver.inbox_bytes -= message.ByteSize();
    receiver.matched_through = seq;
    matches_direct.fetch_add(1, std::memory_order_relaxed);
    Done(handle, op->second, OpResult{true, end, std::move(message)});
    receiver.owed.push_back(seq);
  }
  if (!receiver.owed.empty() && (!AnswersRide(end) || receiver.owed.size() >= kOwedMost)) {
    FlushOwed(impl, end, receiver);
  }
}

bool ChannelLinks::AnswersRide(std::uint32_t end) const {
  auto sender = senders_.find(end);
  return sender != senders_.end() && sender->second.state == Sender::State::kDirect &&
         sender->second.connection.has_value();
}

// Writes what `receiver` owes as LinkMatched on its own connection, in one write, and owes
// nothing after; false when the write failed. Without a direct connection nothing is written:
// the settle says they were taken, and so does a lost Matched.
bool WriteOwed(Receiver& receiver) {
  auto owed = std::exchange(receiver.owed, {});
  if (owed.empty() || !receiver.connection || receiver.state != Receiver::State::kDirect) {
    return true;
  }
  WireWriter answers;
  for (const std::uint32_t seq : owed) WriteLinkSeq(answers, kLinkMatched, seq);
  return static_cast<bool>(receiver.connection->Write(answers));
}

void ChannelLinks::FlushOwed(Channel::Impl& impl, std::uint32_t end, Receiver& receiver) {
  if (!WriteOwed(receiver)) BreakReceiver(impl, end, receiver);
}

void ChannelLinks::FlushAllOwed(Channel::Impl& impl) {
  for (auto& [end, receiver] : receivers_) {
    if (!receiver.owed.empty()) FlushOwed(impl, end, receiver);
  }
}

void ChannelLinks::SettleOnce(Channel::Impl& impl, std::uint32_t end, Receiver& receiver,
                              std::uint64_t epoch) {
  if (std::find(receiver.settled.begin(), receiver.settled.end(), epoch) !=
      receiver.settled.end()) {
    return;
  }
  const bool mine = receiver.state == Receiver::State::kDirect && receiver.epoch == epoch;
  static const std::vector<std::uint32_t> none;
  // Failing (the channel is gone), the link's home waits; nothing else can be done from here.
  (void)AgentSettle(impl, end, epoch, mine ? receiver.matched_through : 0,
                    mine ? receiver.cancelled : none);
  receiver.settled.push_back(epoch);
  if (receiver.settled.size() > kSettledKept) receiver.settled.pop_front();
}

// The connection ends: the epoch is settled, unmatched offers dropped (the sender offers them
// again), and the receives waiting here are posted at the home.
void ChannelLinks::BreakReceiver(Channel::Impl& impl, std::uint32_t end, Receiver& receiver) {
  Trace("end %u: receiver breaks (%s), matched through %u", end,
        receiver.connection ? receiver.connection->broken_reason().c_str() : "no connection",
        receiver.matched_through);
  EndConnection(receiver.connection);
  if (receiver.state == Receiver::State::kDirect) SettleOnce(impl, end, receiver, receiver.epoch);
  receiver.state = Receiver::State::kHome;
  receiver.inbox.clear();
  receiver.inbox_bytes = 0;
  receiver.cancelled.clear();
  receiver.owed.clear();  // the settle said matched through them
  receiver.matched_through = 0;
  receiver.accepting = false;  // a moved job is known to no broker: ask again
  auto waiting = std::move(receiver.waiting);
  receiver.waiting.clear();
  for (const OpHandle handle : waiting) {
    auto op = ops_.find(handle);
    if (op == ops_.end()) continue;
    auto agent = AgentLinkReceive(impl, end);
    if (!agent) {
      Done(handle, op->second, agent.error());
      continue;
    }
    op->second.where = Op::Where::kAgent;
    op->second.agent = *agent;
  }
}

bool ChannelLinks::Kicked(Channel::Impl& impl, std::uint32_t end, std::uint64_t epoch) {
  Trace("end %u: kicked for epoch %llx", end, static_cast<unsigned long long>(epoch));
  Receiver& receiver = receivers_[end];
  const bool settled =
      std::find(receiver.settled.begin(), receiver.settled.end(), epoch) != receiver.settled.end();
  if (settled) return false;  // a kick from before the settle
  if (receiver.state == Receiver::State::kDirect && receiver.epoch != epoch) {
    BreakReceiver(impl, end, receiver);
  }
  if (receiver.state != Receiver::State::kDirect) {
    // The connection was queued for us when the sender began: take it and read its Hello (a
    // receiver on any end too, to close it: the sender learns from that).
    const auto deadline = Clock::now() + kSetUpWait;
    if (!receiver.connection) {
      if (auto fd = DirectAccept(impl, end, kSetUpWait))
        receiver.connection.emplace(std::move(*fd));
      receiver.unread = true;
    }
    while (receiver.connection && receiver.state != Receiver::State::kDirect &&
           Clock::now() < deadline) {
      pollfd watch{receiver.connection->fd(), POLLIN, 0};
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      (void)::poll(&watch, 1, static_cast<int>(std::max<std::int64_t>(left.count(), 1)));
      receiver.unread = true;
      PumpReceiver(impl, end, receiver);
    }
  }
  if (!any_receives_ && receiver.state == Receiver::State::kDirect && receiver.epoch == epoch) {
    return true;
  }
  // No connection for this epoch, or a receiver on any end: settled at once (with what it
  // matched, if anything).
  if (receiver.state == Receiver::State::kDirect) BreakReceiver(impl, end, receiver);
  EndConnection(receiver.connection);
  SettleOnce(impl, end, receiver, epoch);
  receiver.accepting = false;
  return false;
}

// ---- operations ---------------------------------------------------------------------------

void ChannelLinks::AgentAnswered(Channel::Impl& impl, OpHandle handle, Op& op,
                                 IpcResult<OpResult> result) {
  const auto epoch = result ? DirectNowEpoch(*result) : std::nullopt;
  if (!epoch) return Done(handle, op, std::move(result));
  const std::uint32_t end = result->end;
  if (op.end != 0 && Kicked(impl, end, *epoch)) {
    op.where = Op::Where::kConnection;
    Receiver& receiver = receivers_[end];
    receiver.waiting.push_back(handle);
    MatchInbox(impl, end, receiver);
    return;
  }
  if (op.end == 0) (void)Kicked(impl, end, *epoch);  // settles: receive-on-any stays home
  auto again = AgentLinkReceive(impl, op.end);
  if (!again) return Done(handle, op, again.error());
  op.agent = *again;
}

WaitFds ChannelLinks::Pump(Channel::Impl& impl, Op& op, unsigned look) {
  WaitFds fds{-1, -1};
  if (op.is_receive) {
    Receiver& receiver = receivers_[op.end];
    receiver.unread |= (look & 1u) != 0;
    PumpReceiver(impl, op.end, receiver);
    if (receiver.connection) fds[0] = receiver.connection->fd();
    return fds;
  }
  Sender& sender = senders_[op.end];
  sender.unread |= (look & 1u) != 0;
  PumpSender(impl, op.end, sender);
  if (sender.connection) fds[0] = sender.connection->fd();
  if (auto receiver = receivers_.find(op.end);
      receiver != receivers_.end() && receiver->second.state == Receiver::State::kDirect) {
    receiver->second.unread |= (look & 2u) != 0;
    PumpReceiver(impl, op.end, receiver->second);
    if (receiver->second.connection) fds[1] = receiver->second.connection->fd();
  }
  return fds;
}

IpcResult<OpHandle> ChannelLinks::Send(Channel::Impl& impl, std::uint32_t end,
                                       const Message& message) {
  Lock lock(mu);
  Sender& sender = senders_[end];
  const bool eligible = IsDataOnly(message.items) && message.ByteSize() <= ipc::kMaxMessageBytes;
  // The home grants the begin only when no earlier offer of this direction waits there, so an
  // offer on the connection never overtakes one through the agents.
  if (eligible && agent_knows_ && sender.state == Sender::State::kPlain &&
      Clock::now() >= sender.retry_at) {
    TryDirect(impl, end, sender);
  }
  Begin(impl, end, sender);
  const OpHandle handle = NewHandle();
  if (eligible && sender.state != Sender::State::kPlain) {
    const std::uint32_t seq = sender.next_seq++;
    ops_[handle] = Op{.is_receive = false, .end = end, .where = Op::Where::kConnection, .seq = seq};
    sender.unanswered[seq] = Offer{handle, message, false};
    WriteWaiting(impl, end, sender);
    return handle;
  }
  auto agent = AgentLinkSend(impl, end, message);
  if (!agent) return agent.error();
  ops_[handle] = Op{.is_receive = false, .end = end, .where = Op::Where::kAgent, .agent = *agent};
  sender.agent_sends.insert(handle);
  return handle;
}

IpcResult<OpHandle> ChannelLinks::Receive(Channel::Impl& impl, std::uint32_t end) {
  Lock lock(mu);
  if (end == 0 && !any_receives_) {
    // Receive-on-any stays on the agents: every direct end settles now, and keeps settling.
    any_receives_ = true;
    for (auto& [name, receiver] : receivers_) {
      if (receiver.connection || receiver.state == Receiver::State::kDirect) {
        BreakReceiver(impl, name, receiver);
      }
    }
  }
  const OpHandle handle = NewHandle();
  if (end != 0 && !any_receives_ && agent_knows_) {
    Receiver& receiver = receivers_[end];
    if ((!receiver.accepting || receiver.accepting_under != impl.hellos()) && !receiver.refused) {
      RegisterAccept(impl, end, receiver);
    }
    PumpReceiver(impl, end, receiver);
    if (receiver.state == Receiver::State::kDirect) {
      ops_[handle] = Op{.is_receive = true, .end = end, .where = Op::Where::kConnection};
      receiver.waiting.push_back(handle);
      MatchInbox(impl, end, receiver);
      return handle;
    }
  }
  auto agent = AgentLinkReceive(impl, end);
  if (!agent) return agent.error();
  ops_[handle] = Op{.is_receive = true, .end = end, .where = Op::Where::kAgent, .agent = *agent};
  return handle;
}

IpcResult<OpResult> ChannelLinks::Wait(Channel::Impl& impl, OpHandle handle, Timeout timeout) {
  const auto deadline = timeout == kForever ? Clock::time_point::max() : Clock::now() + timeout;
  Lock lock(mu);
  unsigned waited = 0;  // the op's connections a wait saw readable, since the last read
  for (;;) {
    auto it = ops_.find(handle);
    if (it == ops_.end()) return NoSuchOp(handle);
    Op& op = it->second;
    if (op.where == Op::Where::kDone) return TakeOutcome(it);
    const auto left = std::chrono::duration_cast<Timeout>(deadline - Clock::now());
    if (op.where == Op::Where::kAgent) {
      const OpHandle agent = op.agent;
      FlushAllOwed(impl);
      lock.unlock();
      auto result =
          AgentWait(impl, agent,
                    deadline == Clock::time_point::max() ? kForever : std::max(left, Timeout(0)));
      lock.lock();
      it = ops_.find(handle);
      if (it == ops_.end() || it->second.where != Op::Where::kAgent || it->second.agent != agent) {
        continue;  // another thread moved it meanwhile
      }
      if (!result && result.error().status == JobStatus::kTimedOut) return result.error();
      AgentAnswered(impl, handle, it->second, std::move(result));
      continue;
    }
    const WaitFds fds = Pump(impl, op, std::exchange(waited, 0u));
    it = ops_.find(handle);
    if (it == ops_.end() || it->second.where != Op::Where::kConnection) continue;
    FlushAllOwed(impl);  // this thread is about to wait: nothing it owes may wait with it
    if (Clock::now() >= deadline) {
      return IpcError{JobStatus::kTimedOut, "the operation is not done"};
    }
    // A draining sender asks for its begin again each kBeginEvery.
    const bool draining =
        !it->second.is_receive && senders_[it->second.end].state == Sender::State::kDraining;
    // Bounded, so that an op another thread moves to the agents is seen.
    waited = WaitReadable(
        lock, fds,
        std::min<std::int64_t>(std::max<std::int64_t>(left.count(), 0), draining ? 1 : 100));
  }
}

IpcResult<std::optional<OpResult>> ChannelLinks::Poll(Channel::Impl& impl, OpHandle handle) {
  Lock lock(mu);
  for (int turn = 0; turn < 4; ++turn) {
    auto it = ops_.find(handle);
    if (it == ops_.end()) return NoSuchOp(handle);
    Op& op = it->second;
    if (op.where == Op::Where::kDone) {
      auto outcome = TakeOutcome(it);
      if (!outcome) return outcome.error();
      return std::optional<OpResult>(std::move(*outcome));
    }
    if (op.where == Op::Where::kConnection) {
      (void)Pump(impl, op, 3u);
      it = ops_.find(handle);
      if (it != ops_.end() && it->second.where == Op::Where::kConnection) {
        FlushAllOwed(impl);  // the caller is waiting for something
        return std::optional<OpResult>();
      }
      continue;
    }
    auto result = AgentPoll(impl, op.agent);
    if (result && !*result) return std::optional<OpResult>();
    AgentAnswered(
        impl, handle, op,
        result ? IpcResult<OpResult>(std::move(**result)) : IpcResult<OpResult>(result.error()));
  }
  return std::optional<OpResult>();
}

IpcResult<void> ChannelLinks::Cancel(Channel::Impl& impl, OpHandle handle) {
  const IpcError matched{JobStatus::kAlreadyMatched, "the operation has been matched already"};
  Lock lock(mu);
  for (;;) {
    auto it = ops_.find(handle);
    if (it == ops_.end()) return NoSuchOp(handle);
    Op& op = it->second;
    if (op.where == Op::Where::kDone) {
      if (op.cancelled) {
        ops_.erase(it);
        return {};
      }
      return matched;
    }
    if (op.where == Op::Where::kAgent) {
      auto cancelled = AgentCancel(impl, op.agent);
      if (cancelled) {
        if (!op.is_receive) senders_[op.end].agent_sends.erase(handle);
        ops_.erase(it);
        return {};
      }
      if (cancelled.error().status != JobStatus::kAlreadyMatched) return cancelled.error();
      // Matched in the agents, or a kick: take the answer and look again.
      auto result = AgentPoll(impl, op.agent);
      if (!result) return result.error();
      if (!*result) return matched;
      AgentAnswered(impl, handle, op, std::move(**result));
      continue;
    }
    if (op.is_receive) {
      auto& waiting = receivers_[op.end].waiting;
      waiting.erase(std::remove(waiting.begin(), waiting.end(), handle), waiting.end());
      ops_.erase(it);
      return {};
    }
    Sender& sender = senders_[op.end];
    auto offer = sender.unanswered.find(op.seq);
    if (offer != sender.unanswered.end() && !offer->second.written) {
      sender.unanswered.erase(offer);  // never left this process
      ops_.erase(it);
      return {};
    }
    if (!op.cancel_sent && sender.connection) {
      op.cancel_sent = true;
      WireWriter frame;
      WriteLinkSeq(frame, kLinkCancel, op.seq);
      if (!sender.connection->Write(frame)) BreakSender(impl, op.end, sender);
      continue;
    }
    const WaitFds fds = Pump(impl, op, 3u);
    it = ops_.find(handle);
    if (it == ops_.end() || it->second.where != Op::Where::kConnection) continue;
    FlushAllOwed(impl);
    (void)WaitReadable(lock, fds, 100);
  }
}

void ChannelLinks::EndLeaves(Channel::Impl& impl, std::uint32_t end) {
  Lock lock(mu);
  if (auto sender = senders_.find(end); sender != senders_.end()) {
    BreakSender(impl, end, sender->second);
    senders_.erase(sender);
  }
  if (auto receiver = receivers_.find(end); receiver != receivers_.end()) {
    BreakReceiver(impl, end, receiver->second);
    receivers_.erase(receiver);
  }
}

void ChannelLinks::Keep(Channel::Impl& impl) {
  for (auto& [end, sender] : senders_) {
    if (sender.state == Sender::State::kDraining) {
      Begin(impl, end, sender);
      continue;
    }
    if (!sender.connection || sender.state != Sender::State::kDirect) continue;
    pollfd watch{sender.connection->fd(), POLLIN | POLLRDHUP, 0};
    if (::poll(&watch, 1, 0) > 0) {
      sender.unread = true;
      PumpSender(impl, end, sender);
    }
  }
  for (auto& [end, receiver] : receivers_) {
    if (!receiver.connection || receiver.state != Receiver::State::kDirect) continue;
    pollfd watch{receiver.connection->fd(), POLLIN | POLLRDHUP, 0};
    if (::poll(&watch, 1, 0) > 0) {
      receiver.unread = true;
      PumpReceiver(impl, end, receiver);
    }
  }
  // A process that took an offer and went on with other work answers it from here.
  FlushAllOwed(impl);
}

void ChannelLinks::FlushOwedQuietly() {
  for (auto& [end, receiver] : receivers_) (void)WriteOwed(receiver);
}

// ---- the process's channels, and the keeper ------------------------------------------------

class Registry {
 public:
  static Registry& Get();

  std::shared_ptr<ChannelLinks> Find(std::uint64_t channel) {
    std::lock_guard lock(mu_);
    auto found = links_.find(channel);
    return found == links_.end() ? nullptr : found->second;
  }

  // The channel closes: what its receivers owe is written now.
  void ChannelCloses(std::uint64_t channel) {
    auto links = Find(channel);
    if (!links) return;
    std::lock_guard lock(links->mu);
    links->FlushOwedQuietly();
  }

  std::shared_ptr<ChannelLinks> FindOrMake(const std::shared_ptr<Channel::Impl>& impl) {
    std::lock_guard lock(mu_);
    auto& links = links_[impl->id()];
    if (!links) {
      links = std::make_shared<ChannelLinks>(impl);
      direct_links_made.store(true, std::memory_order_relaxed);
      if (!keeper_started_) {
        keeper_started_ = true;
        std::thread([this] { Keeper(); }).detach();
        (void)std::atexit([] { Registry::Get().AtExit(); });
      }
    }
    return links;
  }

 private:
  [[noreturn]] void Keeper() {
    for (;;) {
      std::this_thread::sleep_for(kKeepEvery);
      std::vector<std::pair<std::shared_ptr<ChannelLinks>, std::shared_ptr<Channel::Impl>>> all;
      {
        std::lock_guard lock(mu_);
        for (auto it = links_.begin(); it != links_.end();) {
          auto impl = it->second->impl();
          if (!impl) {
            it = links_.erase(it);
            continue;
          }
          all.emplace_back(it->second, std::move(impl));
          ++it;
        }
      }
      for (auto& [links, impl] : all) {
        // A channel in use is looked at by its callers: the keeper does not wait for them.
        std::unique_lock lock(links->mu, std::try_to_lock);
        if (lock.owns_lock()) links->Keep(*impl);
      }
      // The channels are let go here, with no lock held: the last owner of one runs its
      // destructor, which answers what its receivers owe (ChannelCloses takes both locks).
      all.clear();
    }
  }

  // A process that exits with its channels open answers what it took (a channel in use by
  // another thread just now is left as it is).
  void AtExit() {
    std::vector<std::shared_ptr<ChannelLinks>> all;
    {
      std::lock_guard lock(mu_);
      for (const auto& [id, links] : links_) all.push_back(links);
    }
    for (auto& links : all) {
      std::unique_lock lock(links->mu, std::try_to_lock);
      if (lock.owns_lock()) links->FlushOwedQuietly();
    }
  }

  std::mutex mu_;
  std::map<std::uint64_t, std::shared_ptr<ChannelLinks>> links_;
  bool keeper_started_ = false;
};

// Never destroyed: the keeper uses it until the process is gone.
union RegistryStorage {
  RegistryStorage() : value() {}
  ~RegistryStorage() {}  // NOLINT(modernize-use-equals-default): must not destroy `value`
  Registry value;
};
RegistryStorage registry_storage;

Registry& Registry::Get() {
  static const bool registered = [] {
    // A forked child has no keeper and may inherit a held lock: it starts afresh (its parent's
    // connections are its parent's).
    (void)pthread_atfork(nullptr, nullptr, [] { std::construct_at(&registry_storage.value); });
    return true;
  }();
  (void)registered;
  return registry_storage.value;
}

}  // namespace

bool DirectLinksOn() {
  static const bool on = [] {
    const char* value = std::getenv("TERN_IPC_DIRECT_LINKS");
    return value == nullptr || std::string_view(value) != "0";
  }();
  return on;
}

IpcResult<OpHandle> LinkSend(const std::shared_ptr<Channel::Impl>& impl, std::uint32_t end,
                             const Message& message) {
  if (!DirectLinksOn()) return AgentLinkSend(*impl, end, message);
  return Registry::Get().FindOrMake(impl)->Send(*impl, end, message);
}

IpcResult<OpHandle> LinkReceive(const std::shared_ptr<Channel::Impl>& impl, std::uint32_t end) {
  if (!DirectLinksOn()) return AgentLinkReceive(*impl, end);
  return Registry::Get().FindOrMake(impl)->Receive(*impl, end);
}

IpcResult<OpResult> LinkWait(const std::shared_ptr<Channel::Impl>& impl, OpHandle handle,
                             Timeout timeout) {
  auto links = IsLinkHandle(handle) ? Registry::Get().Find(impl->id()) : nullptr;
  if (!links) return AgentWait(*impl, handle, timeout);
  return links->Wait(*impl, handle, timeout);
}

IpcResult<std::optional<OpResult>> LinkPoll(const std::shared_ptr<Channel::Impl>& impl,
                                            OpHandle handle) {
  auto links = IsLinkHandle(handle) ? Registry::Get().Find(impl->id()) : nullptr;
  if (!links) return AgentPoll(*impl, handle);
  return links->Poll(*impl, handle);
}

IpcResult<void> LinkCancel(const std::shared_ptr<Channel::Impl>& impl, OpHandle handle) {
  auto links = IsLinkHandle(handle) ? Registry::Get().Find(impl->id()) : nullptr;
  if (!links) return AgentCancel(*impl, handle);
  return links->Cancel(*impl, handle);
}

void LinkEndLeavesSlow(Channel::Impl& impl, std::uint32_t name) {
  if (auto links = Registry::Get().Find(impl.id())) links->EndLeaves(impl, name);
}

void LinkChannelCloses(Channel::Impl& impl) {
  if (direct_links_made.load(std::memory_order_relaxed)) Registry::Get().ChannelCloses(impl.id());
}

std::uint64_t DirectLinkMatches() { return matches_direct.load(std::memory_order_relaxed); }

IpcResult<OpHandle> AgentLinkSend(Channel::Impl& impl, std::uint32_t end, const Message& message) {
  WireWriter writer(/*share_data=*/true);
  writer.U32(end);
  writer.WriteMessage(message);
  return NameReply(impl.Request(JobOp::kLinkSend, Pieces(writer)), JobOp::kLinkSend);
}

IpcResult<OpHandle> AgentLinkReceive(Channel::Impl& impl, std::uint32_t end) {
  return NameReply(impl.Request(JobOp::kLinkReceive, NameBody(end)), JobOp::kLinkReceive);
}

IpcResult<OpResult> AgentWait(Channel::Impl& impl, OpHandle handle, Timeout timeout) {
  WireWriter writer;
  writer.U32(handle);
  writer.U32(TimeoutMs(timeout));
  auto reply = impl.Request(JobOp::kOpWait, writer.Take());
  if (!reply) return reply.error();
  WireReader reader(reply->body());
  auto result = reader.ReadOpResult();
  if (!result) return Malformed(JobOp::kOpWait);
  return std::move(*result);
}

IpcResult<std::optional<OpResult>> AgentPoll(Channel::Impl& impl, OpHandle handle) {
  auto reply = impl.Request(JobOp::kOpPoll, NameBody(handle));
  if (!reply) return reply.error();
  WireReader reader(reply->body());
  auto done = reader.U8();
  if (!done) return Malformed(JobOp::kOpPoll);
  if (*done == 0) return std::optional<OpResult>();
  auto result = reader.ReadOpResult();
  if (!result) return Malformed(JobOp::kOpPoll);
  return std::optional<OpResult>(std::move(*result));
}

IpcResult<void> AgentCancel(Channel::Impl& impl, OpHandle handle) {
  auto reply = impl.Request(JobOp::kOpCancel, NameBody(handle));
  if (!reply) return reply.error();
  return {};
}

}  // namespace tern::libtern

namespace tern {
std::uint64_t direct_link_matches() { return libtern::DirectLinkMatches(); }
}  // namespace tern
