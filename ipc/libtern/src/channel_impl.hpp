// The connection behind tern::Channel: writes request frames and hands each reply to the
// thread that asked (docs/ipc.md "The job's channel").
//
// Readers take turns (leader/follower): a thread waiting for its reply becomes the reader if
// nobody is reading, reads what arrives, files every reply under its request id, wakes the
// waiters and gives up the role once its own reply is in, so that the reply of a thread never
// waits for that thread to read it. fds arriving with SCM_RIGHTS are queued in arrival order
// and given to the ok replies of region_map, direct_open and direct_accept requests in that
// order: the agent attaches each
// one to the first byte of its reply frame, so an fd always arrives before its frame is whole.
//
// Re-attaching (docs/ipc.md "A channel the job reconnects"): the agent's first frame on a
// channel (IpcHello) says how to find it again. When the reader meets end of file, it connects
// to the agent's job socket (waiting up to kReattachWait for a restarted agent), proves the job
// (its secret; the agent checks the pid) and puts the new channel in the old one's fd number, so
// that the job's fd 3 stays its channel. Every request without an answer then fails with
// kUnavailable and kLostText (it may or may not have run: the agent that read it is gone); the
// thread's next request first looks up again, under the same names, the send rights this
// channel got from name_lookup (the only rights the new agent can give without taking the job's
// word: anyone may look a name up). All other rights are gone. A writer whose write fails on a
// dying channel leaves its request to that same reckoning, as unsent: Request sends it again
// on the new channel (after the lookups), since nothing of it reached the agent. An agent
// that restored the job's state from a migration's hand-off says so: then the requests in
// flight are answered on the new channel and nothing is looked up again.
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tern/ipc.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/job_attach.hpp>
#include <tern/ipc/job_wire.hpp>
#include <tern/unique_fd.hpp>
#include <thread>
#include <unordered_map>
#include <vector>

namespace tern {

class Channel::Impl {
 public:
  struct Reply {
    std::string payload;  // the reply frame's, kept whole: a large body is not copied out
    std::size_t body_at = 0;
    UniqueFd fd;  // region_map, direct_open, direct_accept

    std::string_view body() const { return std::string_view(payload).substr(body_at); }
  };

  // A connection over `fd` (owned).
  explicit Impl(UniqueFd fd);
  // A channel that fails every call with `reason`.
  explicit Impl(std::string reason);
  ~Impl();

  // Sends one request and waits for its reply. A non-ok status becomes the IpcError.
  IpcResult<Reply> Request(ipc::JobOp op, std::string_view body);
  // The same for a body in pieces, written one after another without joining them.
  IpcResult<Reply> Request(ipc::JobOp op, std::span<const std::string_view> body);
  // Sends one request and returns its id at once; Collect(id) waits for the reply later.
  // `watched`: its reply (or the channel's re-attach or close) signals event_fd().
  IpcResult<std::uint32_t> Post(ipc::JobOp op, std::string_view body, bool watched = false);
  IpcResult<std::uint32_t> Post(ipc::JobOp op, std::span<const std::string_view> body,
                                bool watched = false);
  IpcResult<Reply> Collect(std::uint32_t request);

  // For a thread that waits on more than this channel (PortReader: its direct connections too,
  // docs/ipc.md "Direct streams"). It polls event_fd() (readable when a watched reply is filed,
  // or a reading thread stops reading while replies are due) and idle_fd() (the channel, when
  // no thread reads it: -1 otherwise), calls ReadIfIdle() when the channel is readable and
  // TryCollect() for its replies. A request nobody will collect is Abandon()ed: its reply is
  // dropped when it comes (an fd it carries is closed).
  int event_fd();
  int idle_fd();
  void ReadIfIdle();
  // The reply if it is in (the request is then done), nullopt if not yet.
  std::optional<IpcResult<Reply>> TryCollect(std::uint32_t request);
  void Abandon(std::uint32_t request);
  // Sends several requests in one write and waits for all their replies (in request order).
  std::vector<IpcResult<Reply>> RequestMany(ipc::JobOp op, const std::vector<std::string>& bodies);

  bool connected();
  std::uint64_t id() const { return id_; }
  // How many times the channel was re-attached: a caller that saw it change during a request
  // knows its request's answer was lost with the old agent.
  std::uint64_t reattached() const { return reattached_.load(std::memory_order_acquire); }
  // How many hellos the channel has read: each agent the job ran under (a move's destination
  // sends its own), so a change says the job may be under another agent now, which knows
  // nothing of what the job asked of the last one (link_direct.cpp: its direct accepts).
  std::uint64_t hellos() const { return hellos_.load(std::memory_order_acquire); }
  // name_lookup found `text` as `name`: looked up again after a re-attach.
  void NoteLookup(std::uint32_t name, std::string text);

  // The error text of a request lost with its agent.
  static constexpr std::string_view kLostText =
      "the agent went away before answering (the request may or may not have run); the IPC "
      "channel re-attached to the restarted agent: the job's rights from before are gone, "
      "except send rights it got from name_lookup";
  // The same when the restarted agent kept the job's rights (AttachAnswer::kept).
  static constexpr std::string_view kLostKeptText =
      "the agent went away before answering (the request may or may not have run); the IPC "
      "channel re-attached to the restarted agent, which kept the job's rights";
  // The error text of a request whose frame the old channel never took whole: Request sends it
  // again on the new channel (at most kMaxResends times); Post/Collect callers get it.
  static constexpr std::string_view kUnsentText =
      "not sent: the agent went away first and the IPC channel re-attached; send it again";
  static constexpr int kMaxResends = 8;
  static constexpr auto kReattachWait = std::chrono::seconds(120);
  // How long the lookups redone after a re-attach try again while the name is not found (the
  // restarted agent's links to the other agents come up after it accepts its jobs).
  static constexpr auto kRelookupWait = std::chrono::seconds(15);

 private:
  struct Slot {
    ipc::JobOp op{};
    std::uint64_t generation = 0;  // of the channel the request was written to
    bool unsent = false;           // its write met a closed agent end: nothing of it ran
    bool done = false;
    bool watched = false;    // signal event_ when done
    bool abandoned = false;  // nobody collects it: dropped when done
    JobStatus status = JobStatus::kOk;
    Reply reply;
  };

  // Writes `pieces` (the frames of `requests`) in order, as one stream of bytes (under
  // write_mu_), if the channel is still `generation`, or if it was replaced and the requests
  // still wait for an answer (StillToSendAfterReattach). kLost: not written (or the write met a
  // dying channel that can re-attach), and the requests are left to the reader's reckoning.
  enum class Written { kOk, kLost, kFailed };
  // `unsent_when_cut`: `requests` are marked unsent when the write meets a closed agent end (one
  // frame: nothing of it ran; not so for several, of which the first may have gone whole).
  Written Write(std::span<const std::string_view> pieces, std::uint64_t generation,
                std::span<const std::uint32_t> requests, bool unsent_when_cut, std::string& error);
  // For a write whose channel was replaced (write_mu_ held): whether `requests` are to go on the
  // new channel; marks those the re-attach failed as unsent.
  bool StillToSendAfterReattach(std::span<const std::uint32_t> requests);
  // The channel read end of file or failed: re-attach (mu_ held through `lock`, this thread
  // the reader), or close with `reason`.
  void LostLocked(std::unique_lock<std::mutex>& lock, std::string reason);
  // A new channel from the agent at `hello`'s socket and the agent's answer (whether it
  // restored the job's state or kept its rights), or why not.
  static IpcResult<std::pair<UniqueFd, ipc::AttachAnswer>> Reattach(const ipc::ChannelHello& hello);
  // Before a request: the lookups a re-attach left to redo, done by one thread.
  void RedoLookups();
  // A fresh request id with an empty slot for its reply (mu_ held).
  std::uint32_t FileSlot(ipc::JobOp op);
  // Waits (mu_ held through `lock`) until the reply to `request` is in, reading in turn with
  // the other waiting threads; removes its slot.
  IpcResult<Reply> AwaitReply(std::unique_lock<std::mutex>& lock, std::uint32_t request);
  // Reads once from the socket (mutex not held) and files what arrived (mutex held); `block`:
  // waits for input first, else returns at once when there is none.
  void ReadAndDispatch(std::unique_lock<std::mutex>& lock, bool block = true);
  // Wakes the thread polling event_fd(), if any (mu_ held).
  void SignalLocked();
  void Dispatch(ipc::Frame frame);       // mu_ held
  void CloseLocked(std::string reason);  // mu_ held

  const std::uint64_t id_;
  UniqueFd fd_;
  std::mutex write_mu_;
  std::atomic<std::uint64_t> generation_{0};  // changed under write_mu_ and mu_
  std::atomic<std::uint64_t> reattached_{0};
  std::atomic<std::uint64_t> hellos_{0};
  std::atomic<bool> lookups_due_{false};  // redo or being redone

  std::mutex mu_;
  std::condition_variable cv_;
  std::string closed_reason_;  // non-empty: every call fails with it
  bool reader_active_ = false;
  std::uint32_t next_request_ = 1;
  std::unordered_map<std::uint32_t, Slot> slots_;
  std::deque<UniqueFd> fds_;   // received, not yet given to a reply
  ipc::FrameDecoder decoder_;  // used by the reader only
  std::optional<ipc::ChannelHello> hello_;
  std::map<std::uint32_t, std::string> lookups_;  // send name -> the name it was looked up by
  bool redo_lookups_ = false;
  bool redoing_ = false;
  std::thread::id redoer_;
  UniqueFd event_;  // made by the first event_fd()
};

namespace libtern {
IpcError Unavailable(std::string message);
// The common shapes of requests and replies (channel_ops.cpp): an error for a reply that does
// not decode; a reply that is exactly one u32 (a name, an operation's handle); a body that is one.
IpcError Malformed(ipc::JobOp op);
IpcResult<std::uint32_t> NameReply(IpcResult<Channel::Impl::Reply> reply, ipc::JobOp op);
std::string NameBody(std::uint32_t name);
std::uint32_t TimeoutMs(Timeout timeout);

// A train (JobOp::kSendBatch) of `count` messages laid out as WireWriter::WriteMessage writes
// them: [u8 policy][u32 timeout][u32 notify name][u32 count][messages]. Used by send_many and
// PortWriter.
std::string TrainRequest(FullPolicy policy, std::uint32_t timeout_ms, std::uint32_t count,
                         std::string_view messages);
// The same without the messages, which follow it.
std::string TrainHeader(FullPolicy policy, std::uint32_t timeout_ms, std::uint32_t count);
// What a data-sharing `writer` wrote, with what it shared put in place: pieces to write in
// order (views into the writer and into the shared data).
std::vector<std::string_view> Pieces(ipc::WireWriter& writer);
// A train's answer, [u32 accepted][u16 status][string why]: how many went in, and the refusal
// that stopped the rest (none when all did). An error for a malformed or failed reply.
struct TrainAnswer {
  std::uint32_t accepted = 0;
  std::optional<IpcError> refusal;
};
IpcResult<TrainAnswer> ReadTrainAnswer(IpcResult<Channel::Impl::Reply> reply);

// direct_open (op 23) of a send name / direct_accept (op 24) on a receive name: the fd of the
// ok reply (docs/ipc.md "Direct calls").
IpcResult<UniqueFd> DirectOpen(Channel::Impl& impl, std::uint32_t send_name);
IpcResult<UniqueFd> DirectAccept(Channel::Impl& impl, std::uint32_t receive_name, Timeout timeout);
// The same in two steps: the request leaves at once (the agent marks the port as taking direct
// calls when it reads it), its answer is collected later.
IpcResult<std::uint32_t> PostDirectAccept(Channel::Impl& impl, std::uint32_t receive_name,
                                          Timeout timeout);
IpcResult<UniqueFd> CollectDirectAccept(Channel::Impl& impl, std::uint32_t request);

// The direct-call ordering rule (a call never overtakes the thread's earlier sends on its
// name): every send through the agents tells rpc_client.cpp, which marks that name of this
// thread's direct state. Threads that never called through a direct-capable name pay one
// thread-local load.
extern constinit thread_local bool thread_has_direct_state;
void NoteAgentSendSlow(std::uint64_t channel, std::uint32_t name);
inline void NoteAgentSend(const Channel::Impl& impl, std::uint32_t name) {
  if (thread_has_direct_state) NoteAgentSendSlow(impl.id(), name);
}

// send_receive over this thread's direct connection to the message's destination (docs/ipc.md
// "send_receive direct"): nullopt when the message cannot or need not go that way (it carries
// rights, its reply is not a send-once right to `port`, this thread's first message on the
// name, the receiver takes no direct traffic): the caller then sends it plain.
std::optional<IpcResult<Message>> SendReceiveDirect(const Channel& channel,
                                                    const std::shared_ptr<Channel::Impl>& impl,
                                                    const Message& message, std::uint32_t port,
                                                    Timeout receive_timeout, FullPolicy policy,
                                                    Timeout send_timeout);
}  // namespace libtern

}  // namespace tern
