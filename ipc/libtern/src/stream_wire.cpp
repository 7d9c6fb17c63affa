#include "stream_wire.hpp"

#include <algorithm>
#include <tern/big_endian.hpp>
#include <tern/ipc/frame.hpp>

namespace tern::libtern {

namespace {
constexpr std::size_t kItemHeaderSize = 5;  // [u8 kind][u32 length]

void PutU32(std::string& out, std::uint32_t v) { tern::AppendBigEndian(out, v); }
void PutU64(std::string& out, std::uint64_t v) { tern::AppendBigEndian(out, v); }
void StoreU32(char* at, std::uint32_t v) {
  for (int i = 3; i >= 0; --i) {
    at[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
}
bool IsData(ItemKind kind) { return kind == ItemKind::kBytes || kind == ItemKind::kOutOfLine; }
}  // namespace

std::string EncodeStreamHeader(const StreamHeader& header) {
  std::string out;
  out.reserve(kStreamHeaderSize);
  PutU64(out, kStreamMagic);
  PutU64(out, header.writer);
  PutU64(out, header.sequence);
  return out;
}

std::optional<StreamHeader> DecodeStreamHeader(ItemKind kind, std::string_view bytes) {
  if (kind != ItemKind::kBytes || bytes.size() != kStreamHeaderSize) return std::nullopt;
  ipc::WireReader in(bytes);
  if (in.U64() != kStreamMagic) return std::nullopt;
  StreamHeader header;
  header.writer = *in.U64();
  header.sequence = *in.U64();
  if (header.writer == 0 || header.sequence == 0) return std::nullopt;
  return header;
}

void AppendStreamAck(std::string& out, const StreamAck& ack) {
  ipc::AppendFrameHeader(out, kDirectStreamAck, 8 + 8 + 8 + 4);
  PutU64(out, ack.writer);
  PutU64(out, ack.received);
  PutU64(out, ack.handed);
  PutU32(out, ack.credits);
}

std::optional<StreamAck> ParseStreamAck(std::string_view payload) {
  ipc::WireReader in(payload);
  auto writer = in.U64();
  auto received = in.U64();
  auto handed = in.U64();
  auto credits = in.U32();
  if (!credits || !in.AtEnd()) return std::nullopt;
  return StreamAck{*writer, *received, *handed, *credits};
}

std::size_t StreamFrameBytes::size() const {
  std::size_t size = out.size();
  for (const ipc::SharedSpan& span : shared) size += span.bytes.size();
  return size;
}

std::string StreamFrameBytes::Joined() const {
  std::string whole;
  whole.reserve(size());
  ipc::ForEachPiece(
      out, shared, [&](std::string_view piece) { whole.append(piece); },
      [&](const ipc::SharedSpan& span) { whole.append(span.bytes); });
  return whole;
}

void StreamFrame::Start(std::string buffer, std::uint64_t writer, std::uint64_t first) {
  // The fixed part, then in place at the buffer's start (its length stays: room).
  std::string head;
  head.reserve(ipc::kFrameHeaderSize + kStreamFrameFixed);
  ipc::AppendFrameHeader(head, kDirectStream, 0);  // length set by Finish
  tern::AppendBigEndian(head, writer);
  tern::AppendBigEndian(head, first);
  tern::AppendBigEndian(head, std::uint32_t{0});  // count set by Finish
  out_ = ipc::WireWriter(/*share_data=*/true);
  out_.out() = std::move(buffer);
  if (out_.out().size() < head.size()) out_.out().resize(head.size());
  std::memcpy(out_.out().data(), head.data(), head.size());
  used_ = head.size();
  shared_bytes_ = 0;
  first_ = first;
  count_ = 0;
}

void StreamFrame::Grow(std::size_t n) {
  std::string& out = out_.out();
  out.resize(std::max(out.size(), used_ + n));
  // The rest of what the string holds is room too (zero-filled once, then reused with it).
  out.resize(out.capacity());
}

void StreamFrame::Add(std::uint32_t id, std::string_view bytes) {
  AddOne(id, ItemKind::kBytes, bytes);
}

void StreamFrame::Add(std::uint32_t id, const std::vector<Item>& items) {
  Settle();
  out_.U32(id);
  out_.U32(static_cast<std::uint32_t>(items.size()));
  for (const Item& item : items) {
    out_.U8(static_cast<std::uint8_t>(item.kind));
    if (item.data) {
      out_.Data(item.bytes(), item.data);  // a large one is kept by reference
    } else {
      out_.Bytes(item.bytes());
    }
  }
  Resume();
  ++count_;
}

StreamFrameBytes StreamFrame::Finish() {
  Settle();
  std::string& out = out_.out();
  StoreU32(out.data(), static_cast<std::uint32_t>(out_.size() - ipc::kFrameHeaderSize));
  StoreU32(out.data() + ipc::kFrameHeaderSize + 16, count_);
  count_ = 0;
  used_ = 0;
  shared_bytes_ = 0;
  StreamFrameBytes frame{std::move(out), std::move(out_.shared())};
  out_ = ipc::WireWriter(/*share_data=*/true);
  return frame;
}

std::optional<StreamFrameView> ParseStreamFrame(std::string_view payload) {
  ipc::WireReader in(payload);
  StreamFrameView view;
  auto writer = in.U64();
  auto first = in.U64();
  auto count = in.U32();
  if (!count || *writer == 0 || *first == 0) return std::nullopt;
  if (*count > in.remaining() / 8) return std::nullopt;
  view.writer = *writer;
  view.first = *first;
  view.messages.reserve(*count);
  for (std::uint32_t i = 0; i < *count; ++i) {
    auto id = in.U32();
    if (!id) return std::nullopt;
    const std::string_view rest = in.rest();
    auto items = in.U32();
    if (!items || *items > in.remaining() / kItemHeaderSize) return std::nullopt;
    for (std::uint32_t j = 0; j < *items; ++j) {
      auto kind = in.U8();
      if (!kind || !IsData(static_cast<ItemKind>(*kind))) return std::nullopt;
      if (!in.BytesView()) return std::nullopt;
    }
    view.messages.push_back({*id, rest.substr(0, rest.size() - in.remaining())});
  }
  if (!in.AtEnd()) return std::nullopt;
  return view;
}

std::optional<StreamRun> ParseStreamRun(std::string_view payload) {
  ipc::WireReader in(payload);
  auto writer = in.U64();
  auto first = in.U64();
  auto count = in.U32();
  if (!count || *writer == 0 || *first == 0) return std::nullopt;
  if (*count > in.remaining() / 8) return std::nullopt;
  const std::string_view messages = in.rest();
  // A message of one data item, the common case, checked inline as TakeStreamMessageFast reads
  // it (the same checks as the general loop below, without a WireReader per field: this runs
  // once a message, before the reader hands it out).
  std::string_view rest = messages;
  std::uint32_t checked = 0;
  while (checked < *count && rest.size() >= kOneItemHead &&
         tern::LoadBigEndian<std::uint32_t>(rest.data() + 4) == 1 &&
         IsData(static_cast<ItemKind>(rest[8]))) {
    const auto length = tern::LoadBigEndian<std::uint32_t>(rest.data() + 9);
    if (length > rest.size() - kOneItemHead) return std::nullopt;
    rest.remove_prefix(kOneItemHead + length);
    ++checked;
  }
  in = ipc::WireReader(rest);
  for (std::uint32_t i = checked; i < *count; ++i) {
    auto id = in.U32();
    auto items = in.U32();
    if (!id || !items || *items > in.remaining() / kItemHeaderSize) return std::nullopt;
    for (std::uint32_t j = 0; j < *items; ++j) {
      auto kind = in.U8();
      if (!kind || !IsData(static_cast<ItemKind>(*kind))) return std::nullopt;
      if (!in.BytesView()) return std::nullopt;
    }
  }
  if (!in.AtEnd()) return std::nullopt;
  return StreamRun{*writer, *first, *count, messages};
}

namespace {

// A message's items: u32 count, then each u8 kind and its bytes.
bool ReadItems(ipc::WireReader& in, std::vector<ItemView>& items) {
  auto count = in.U32();
  if (!count) return false;
  for (std::uint32_t i = 0; i < *count; ++i) {
    auto kind = in.U8();
    auto bytes = in.BytesView();
    if (!bytes) return false;
    ItemView& item = items.emplace_back();
    item.kind = static_cast<ItemKind>(*kind);
    item.bytes = *bytes;
  }
  return true;
}

}  // namespace

bool TakeStreamMessage(std::string_view& messages, std::uint32_t& id,
                       std::vector<ItemView>& items) {
  ipc::WireReader in(messages);
  auto read_id = in.U32();
  if (!read_id || !ReadItems(in, items)) return false;
  id = *read_id;
  messages = in.rest();
  return true;
}

bool ReadStreamItems(std::string_view body, std::vector<ItemView>& items) {
  ipc::WireReader in(body);
  return ReadItems(in, items);
}

}  // namespace tern::libtern
