// The job-to-agent IPC channel's codec (docs/ipc.md "The job's channel"): the ops a job may ask
// and how requests, replies and messages are laid out on the channel. The values they carry
// (statuses, rights, messages) are in job_message.hpp, which libtern's public header uses; this
// codec is private to the agent and libtern's sources, and not installed.
//
// Frames: IpcRequest (20) = [u32 request id][u16 op][body], IpcReply (21) = [u32 request id]
// [u16 status][body or, when status != kOk, a u32-length message string]. Integers are
// big-endian; "bytes" are [u32 length][data]. Op numbers and status numbers are wire format:
// never renumber, only append.
//
// Thread-safety: plain values and pure functions; WireWriter/WireReader are single-owner.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tern/big_endian.hpp>
#include <tern/expected.hpp>
#include <tern/ipc/job_message.hpp>
#include <vector>

namespace tern::ipc {

// The job's end of its IPC channel is always this fd number in the job (TERN_IPC_FD; docs/ipc.md
// "The job's channel"): the launcher puts it there, the node adapter reaches it by pidfd_getfd.
inline constexpr int kJobIpcFd = 3;

enum class JobOp : std::uint16_t {
  kPortAllocate = 1,         // {u32 queue_limit (0: default)} -> {u32 name}
  kMakeSend = 2,             // {u32 receive name} -> {u32 send name}
  kDeallocate = 3,           // {u32 name} -> {}: one ref of a send right, or the whole right
  kRightInfo = 4,            // {u32 name} -> {u8 RightType, u32 refs, u64 port home, u64 serial}
  kSend = 5,                 // SendRequest -> {}
  kReceive = 6,              // {u32 receive name, u32 timeout_ms} -> Message
  kRequestNotification = 7,  // {u32 name, u8 NotificationKind, u32 notify name} -> {}
  kNameRegister = 8,         // {string, u32 name} -> {}
  kNameLookup = 9,           // {string} -> {u32 send name}
  kNameUnregister = 10,      // {string} -> {}
  kLinkCreate = 11,          // {} -> {u32 end, u32 end}
  kLinkSend = 12,            // {u32 end, Message body} -> {u32 op handle}
  kLinkReceive = 13,         // {u32 end, 0: any end the job holds} -> {u32 op handle}
  kOpWait = 14,              // {u32 handle, u32 timeout_ms} -> OpResult
  kOpPoll = 15,              // {u32 handle} -> {u8 done, OpResult if done}
  kOpCancel = 16,            // {u32 handle} -> {} | kAlreadyMatched
  kRegionCreate = 17,        // {u64 size} -> {u32 name}
  kRegionMap = 18,           // {u32 name} -> {u64 size} + the memfd as SCM_RIGHTS
  kPortStatus = 19,          // {u32 receive name} -> {u32 queued, u32 limit, u32 send refs}
  // Mach's combined send and receive: {u32 receive name, u32 timeout_ms, SendRequest} ->
  // Message. The receive starts once the send is accepted; one round trip for an RPC call.
  kSendReceive = 20,
  // {u32 receive name, u32 timeout_ms, u32 max} -> {u32 count, Message x count}: what is queued
  // (at least one message, waiting for it), up to max, in one reply.
  kReceiveMany = 21,
  // A train of messages to one port, in one request (the fast path of send_many):
  // {u8 FullPolicy, u32 timeout_ms, u32 notify name, u32 count, Message x count} ->
  // {u32 accepted, u16 JobStatus of the first refused (kOk if none), string why}. Every message
  // has the same destination (a send right, copy-send, or a receive right) and carries data
  // only: no reply right, no rights in items. They go in order; the first refused stops the rest.
  kSendBatch = 22,
  // Direct calls (docs/ipc.md "Direct calls"). Both answer ok with one fd (SCM_RIGHTS on the
  // reply frame's first byte): a connected TCP socket to / from the job across the port, or
  // an end of a Unix socket pair when both jobs are on one node.
  kDirectOpen = 23,    // {u32 send name} -> {} + the client's end
  kDirectAccept = 24,  // {u32 receive name, u32 timeout_ms} -> {} + a server end
  // Link operations direct (docs/ipc.md "Link operations direct"). The sender asks the link's
  // home to let the receiver's libtern match this end's offers: {u32 end} -> {u64 epoch};
  // kUnavailable (and why) unless the direction is idle at the home.
  kLinkDirectBegin = 25,
  // The receiver hands the direction back to the home: {u32 end (the receiver's), u64 epoch,
  // u32 matched_through, u32 count, u32 cancelled seq x count} -> {}.
  kLinkSettle = 26,
  // kLinkSend of an offer first made on a direct connection:
  // {u32 end, u64 epoch, u32 seq, Message body} -> {u32 op handle}.
  kLinkSendTagged = 27,
};

// The fixed part of a message in WireWriter::WriteMessage's layout, before its items:
// [u32 destination][u8 disposition][u32 reply][u8 reply disposition][u32 id][u32 item count].
// Shared by everything that reads or writes messages without building a Message (trains,
// PortReader, the agent's streaming paths).
struct MessageHeader {
  std::uint32_t destination = 0;
  Disposition destination_disposition = Disposition::kCopySend;
  std::uint32_t reply = 0;
  Disposition reply_disposition = Disposition::kNone;
  std::uint32_t id = 0;
  std::uint32_t item_count = 0;
};

// Bytes that a WireWriter did not copy: they belong before byte `at` of its out() (which lacks
// them), and `owner` keeps them alive until they are written (none: the caller does).
struct SharedSpan {
  std::size_t at = 0;
  std::shared_ptr<const std::string> owner;
  std::string_view bytes;
};

// Walks what a data-sharing WireWriter produced, in order: own(bytes) for each stretch of its
// out() (possibly empty) and shared(span) for each SharedSpan between them. `Spans` is a
// (const) vector of SharedSpan.
template <typename Spans, typename Own, typename Shared>
void ForEachPiece(std::string_view out, Spans& spans, Own&& own, Shared&& shared) {
  std::size_t from = 0;
  for (auto& span : spans) {
    own(out.substr(from, span.at - from));
    shared(span);
    from = span.at;
  }
  own(out.substr(from));
}

// Big-endian writer and bounds-checked reader for bodies.
class WireWriter {
 public:
  // Data items of at least this size are not copied by a writer that shares data.
  static constexpr std::size_t kShareMin = 32 * 1024;

  WireWriter() = default;
  // `share_data`: WriteItems leaves large data items out of out() and lists them in shared(),
  // for a caller that writes them in place (the agent's replies to jobs).
  explicit WireWriter(bool share_data) : share_data_(share_data) {}

  void U8(std::uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void U16(std::uint16_t v) { Put(v); }
  void U32(std::uint32_t v) { Put(v); }
  void U64(std::uint64_t v) { Put(v); }
  void Bytes(std::string_view v);
  // Bytes(v) for a data item whose bytes `owner` keeps alive: a data-sharing writer lists a
  // large one in shared() instead of copying it.
  void Data(std::string_view v, const std::shared_ptr<const std::string>& owner);
  // `v` as it is (no length), shared the same way.
  void Raw(std::string_view v, const std::shared_ptr<const std::string>& owner);
  // Bytes(v) for bytes the caller keeps alive until it has written the output: a data-sharing
  // writer lists large ones in shared() with no owner.
  void Borrowed(std::string_view v);
  void WriteMessageHeader(const MessageHeader& header);  // inline, below
  void WriteItems(const std::vector<Item>& items);       // a message's items, after its header
  void WriteMessage(const Message& message);
  void WriteOpResult(const OpResult& result);
  std::string& out() { return out_; }
  std::string Take() { return std::move(out_); }
  // What a data-sharing writer left out of out(), in order of `at`.
  std::vector<SharedSpan>& shared() { return shared_; }
  // The size of the whole output: out() and what it shared.
  std::size_t size() const { return out_.size() + shared_bytes_; }

 private:
  // Inline: the hot paths write several numbers per message.
  template <typename T>
  void Put(T v) {
    AppendBigEndian(out_, v);
  }
  // Lists `v` in shared() if this writer shares data and `v` is large, else copies it.
  void Keep(std::string_view v, std::shared_ptr<const std::string> owner);

  bool share_data_ = false;
  std::string out_;
  std::vector<SharedSpan> shared_;
  std::size_t shared_bytes_ = 0;
};

// Every read fails (returns nullopt / false) past the end; `ok()` tells whether any did.
class WireReader {
 public:
  explicit WireReader(std::string_view in) : in_(in) {}
  // A reader of `in`, which lies inside *owner: data items it reads are views that share
  // `owner` instead of copies.
  WireReader(std::string_view in, std::shared_ptr<const std::string> owner)
      : in_(in), owner_(std::move(owner)) {}
  std::optional<std::uint8_t> U8() { return Take<std::uint8_t>(); }
  std::optional<std::uint16_t> U16() { return Take<std::uint16_t>(); }
  std::optional<std::uint32_t> U32() { return Take<std::uint32_t>(); }
  std::optional<std::uint64_t> U64() { return Take<std::uint64_t>(); }
  std::optional<std::string> Bytes();
  // The same bytes as a view into the reader's input (valid while the input is).
  std::optional<std::string_view> BytesView();
  // Nullopt if cut short or if it claims more items than could follow.
  std::optional<MessageHeader> ReadMessageHeader();
  std::optional<Message> ReadMessage();
  std::optional<OpResult> ReadOpResult();
  bool AtEnd() const { return in_.empty(); }
  std::size_t remaining() const { return in_.size(); }
  std::string_view rest() const { return in_; }  // what is left to read

 private:
  // A big-endian T off the front; past the end, nullopt and nothing left to read.
  template <typename T>
  std::optional<T> Take() {
    if (in_.size() < sizeof(T)) {
      in_ = {};
      return std::nullopt;
    }
    const T value = LoadBigEndian<T>(in_.data());
    in_.remove_prefix(sizeof(T));
    return value;
  }
  std::string_view in_;
  std::shared_ptr<const std::string> owner_;
};

// Inline: every message of a stream passes through these, in the agent and in libtern.
inline void WireWriter::WriteMessageHeader(const MessageHeader& header) {
  U32(header.destination);
  U8(static_cast<std::uint8_t>(header.destination_disposition));
  U32(header.reply);
  U8(static_cast<std::uint8_t>(header.reply_disposition));
  U32(header.id);
  U32(header.item_count);
}

inline std::optional<std::string_view> WireReader::BytesView() {
  auto size = U32();
  if (!size || *size > in_.size()) {
    in_ = {};
    return std::nullopt;
  }
  std::string_view v = in_.substr(0, *size);
  in_.remove_prefix(*size);
  return v;
}

inline std::optional<MessageHeader> WireReader::ReadMessageHeader() {
  auto destination = U32();
  auto destination_disposition = U8();
  auto reply = U32();
  auto reply_disposition = U8();
  auto id = U32();
  auto count = U32();
  // Each item takes at least 5 bytes.
  if (!count || *count > (1u << 20) || *count > in_.size() / 5) return std::nullopt;
  return MessageHeader{*destination, static_cast<Disposition>(*destination_disposition),
                       *reply,       static_cast<Disposition>(*reply_disposition),
                       *id,          *count};
}

// Request and reply frames' payloads.
struct JobRequest {
  std::uint32_t id = 0;
  JobOp op{};
  std::string_view body;                       // inside *payload
  std::shared_ptr<const std::string> payload;  // the whole frame's; data items share it
};
struct JobReply {
  std::uint32_t id = 0;
  JobStatus status = JobStatus::kOk;
  std::string body;  // on error: the message text
};

std::string EncodeJobRequest(std::uint32_t id, JobOp op, std::string_view body);
Expected<JobRequest> DecodeJobRequest(std::shared_ptr<const std::string> payload);
// A request's payload before its body: [u32 request id][u16 op].
constexpr std::size_t kJobRequestHeaderSize = 6;
// A reply's payload before its body: [u32 request id][u16 status].
constexpr std::size_t kJobReplyHeaderSize = 6;
struct JobReplyHeader {
  std::uint32_t id = 0;
  JobStatus status = JobStatus::kOk;
};
// The header of a reply payload (its body follows at kJobReplyHeaderSize); nullopt if cut short.
std::optional<JobReplyHeader> ReadJobReplyHeader(std::string_view payload);
// What a failed reply's body says (its message string, else the status's name).
std::string JobReplyErrorText(JobStatus status, std::string_view body);
std::string EncodeJobReply(std::uint32_t id, JobStatus status, std::string_view body);
Expected<JobReply> DecodeJobReply(std::string_view payload);

std::string EncodeSendRequest(const SendRequest& request);
// `owner`, if given, holds `body`: the message's data items then share it.
std::optional<SendRequest> DecodeSendRequest(std::string_view body,
                                             std::shared_ptr<const std::string> owner = {});

}  // namespace tern::ipc
