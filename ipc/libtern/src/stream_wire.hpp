// The wire of a direct stream (docs/ipc.md "Direct streams"), integers big-endian.
//
// On the agent path a numbered message (a PortWriter that has gone direct once) carries a
// fixed first item, which PortReader strips:
//   item 0, bytes, 24 bytes: [u64 magic "ternSTRM"][u64 writer][u64 sequence]
// A sync (message id kStreamSyncId) carries only that item: "everything of this writer up to
// and including `sequence` went before me" (sent through the agents when a connection is
// welcomed, so the reader learns where the writer's numbering stands).
//
// On the connection:
//   DirectStream (42), writer -> reader: [u64 writer][u64 first sequence][u32 count]
//     then `count` messages [u32 id][u32 item count][items], an item being
//     [u8 ItemKind: bytes 1 or out-of-line 3][u32 length][data]; sequences are consecutive.
//   DirectStreamAck (43), reader -> writer: [u64 writer][u64 received through]
//     [u64 handed out through][u32 credits]. Writer 0 is the welcome the reader sends when it
//     accepts the connection (credits: the port's queue limit).
//
// StreamFrame builds a DirectStream frame (the writer keeps it until the reader has received
// it, and resends its messages through the agents if the connection breaks).
//
// Thread-safety: pure functions; a StreamFrame is a single-owner value.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <tern/big_endian.hpp>
#include <tern/ipc.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/job_wire.hpp>
#include <vector>

namespace tern::libtern {

// The connection's frame types, next to DirectCall (40) and DirectAnswer (41) of
// <tern/ipc/frame_type.hpp>. They only ever pass between two jobs' libterns, never through an
// agent, so they are libtern's own; a type added to that list later must not take them.
inline constexpr auto kDirectStream = static_cast<ipc::FrameType>(42);
inline constexpr auto kDirectStreamAck = static_cast<ipc::FrameType>(43);

inline constexpr std::uint64_t kStreamMagic = 0x7465726e5354524dULL;  // "ternSTRM"
inline constexpr std::size_t kStreamHeaderSize = 24;
inline constexpr std::uint32_t kStreamSyncId = 0x7e020001;
// DirectStream's fixed part: [u64 writer][u64 first sequence][u32 count].
inline constexpr std::size_t kStreamFrameFixed = 20;
// A message of one data item's head: [u32 id][u32 item count 1][u8 kind][u32 length].
inline constexpr std::size_t kOneItemHead = 13;

struct StreamHeader {
  std::uint64_t writer = 0;
  std::uint64_t sequence = 0;
};

std::string EncodeStreamHeader(const StreamHeader& header);
// The header in a message's first item's bytes (kind bytes); nullopt if it is not one.
std::optional<StreamHeader> DecodeStreamHeader(ItemKind kind, std::string_view bytes);

struct StreamAck {
  std::uint64_t writer = 0;  // 0: the welcome
  std::uint64_t received = 0;
  std::uint64_t handed = 0;
  std::uint32_t credits = 0;
};
void AppendStreamAck(std::string& out, const StreamAck& ack);
std::optional<StreamAck> ParseStreamAck(std::string_view payload);

// One DirectStream frame: its bytes, except large data items that have an owner (an Item's
// shared buffer), which it keeps by reference and lists in `shared` (written in place with one
// gathered sendmsg; never copied, however long the frame is kept).
struct StreamFrameBytes {
  std::string out;
  std::vector<ipc::SharedSpan> shared;
  std::size_t size() const;    // the whole frame's
  std::string Joined() const;  // the whole frame in one string
};

// One DirectStream frame being filled.
//
// The writer's per-message path (AddOne) writes in place into the frame's buffer: a reused
// buffer keeps its length (the last frame's, as long as this one, usually), so a message is one
// bounds check, a 13-byte header and one copy, without std::string's appends (two a message,
// each with its own capacity check and terminator: a third of the writer's instructions at
// 64 B, bench/README.md eleventh session). `used_` is the frame's length; the buffer past it is
// room, dropped by Finish.
class StreamFrame {
 public:
  // Starts a frame of `writer`'s messages from `first` on, reusing `buffer`'s memory (and its
  // length, as room).
  void Start(std::string buffer, std::uint64_t writer, std::uint64_t first);
  void Add(std::uint32_t id, std::string_view bytes);  // one bytes item, copied
  // One data item of `kind` (bytes or out-of-line), copied: the writer's per-message path, its
  // header and bytes written in place (inline, as it runs once a message).
  void AddOne(std::uint32_t id, ItemKind kind, std::string_view bytes) {
    const std::size_t n = kOneItemHead + bytes.size();
    std::string& out = out_.out();
    if (out.size() - used_ < n) Grow(n);
    char* at = out.data() + used_;
    StoreBigEndian(at, id);
    StoreBigEndian(at + 4, std::uint32_t{1});
    at[8] = static_cast<char>(kind);
    StoreBigEndian(at + 9, static_cast<std::uint32_t>(bytes.size()));
    std::memcpy(at + kOneItemHead, bytes.data(), bytes.size());
    used_ += n;
    ++count_;
  }
  void Add(std::uint32_t id, const std::vector<Item>& items);
  // The frame, length and count filled in; the StreamFrame is empty after.
  StreamFrameBytes Finish();

  bool empty() const { return count_ == 0; }
  std::uint32_t count() const { return count_; }
  std::uint64_t first() const { return first_; }
  std::size_t size() const { return used_ + shared_bytes_; }  // with what it shares

 private:
  static void StoreBigEndian(char* at, std::uint32_t v) {
    v = tern::BigEndian(v);
    std::memcpy(at, &v, sizeof v);
  }
  // Room for `n` more bytes past used_ (out of line: rare).
  void Grow(std::size_t n);
  // Drops the room, for the WireWriter calls that append; Resume takes their length back.
  void Settle() { out_.out().resize(used_); }
  void Resume() {
    used_ = out_.out().size();
    shared_bytes_ = out_.size() - used_;
  }

  ipc::WireWriter out_{/*share_data=*/true};
  std::size_t used_ = 0;
  std::size_t shared_bytes_ = 0;  // of the large items it keeps by reference
  std::uint64_t first_ = 0;
  std::uint32_t count_ = 0;
};

// A DirectStream frame's messages, read in place.
struct StreamMessageView {
  std::uint32_t id = 0;
  std::string_view body;  // [u32 item count][items]
};
struct StreamFrameView {
  std::uint64_t writer = 0;
  std::uint64_t first = 0;
  std::vector<StreamMessageView> messages;
};
// nullopt if malformed (short, trailing bytes, an item that is not data).
std::optional<StreamFrameView> ParseStreamFrame(std::string_view payload);
// The items of one message's body ([u32 item count][items]) as views, appended to `items`.
bool ReadStreamItems(std::string_view body, std::vector<ItemView>& items);

// A DirectStream frame checked as ParseStreamFrame checks it, without a view per message: its
// messages stay in `messages`, to be taken one at a time with TakeStreamMessage (the reader's
// common case: a frame handed out whole, in order).
struct StreamRun {
  std::uint64_t writer = 0;
  std::uint64_t first = 0;
  std::uint32_t count = 0;
  std::string_view messages;  // `count` of [u32 id][u32 item count][items]
};
std::optional<StreamRun> ParseStreamRun(std::string_view payload);
// The first message of `messages` (a checked run's): its id, and its items appended to `items`
// as views; `messages` then starts at the next one. False if malformed.
bool TakeStreamMessage(std::string_view& messages, std::uint32_t& id, std::vector<ItemView>& items);
// TakeStreamMessage for the reader's per-message path: a message of one item, the common case,
// read inline without a WireReader's checks per field (its bounds still checked); any other
// through TakeStreamMessage.
inline bool TakeStreamMessageFast(std::string_view& messages, std::uint32_t& id,
                                  std::vector<ItemView>& items) {
  if (messages.size() >= kOneItemHead &&
      tern::LoadBigEndian<std::uint32_t>(messages.data() + 4) == 1) {
    const auto length = tern::LoadBigEndian<std::uint32_t>(messages.data() + 9);
    if (length <= messages.size() - kOneItemHead) {
      id = tern::LoadBigEndian<std::uint32_t>(messages.data());
      ItemView& item = items.emplace_back();
      item.kind = static_cast<ItemKind>(messages[8]);
      item.bytes = messages.substr(kOneItemHead, length);
      messages.remove_prefix(kOneItemHead + length);
      return true;
    }
  }
  return TakeStreamMessage(messages, id, items);
}

}  // namespace tern::libtern
