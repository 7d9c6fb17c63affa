#include <algorithm>
#include <tern/ipc/job_wire.hpp>

namespace tern::ipc {

std::string_view JobStatusName(JobStatus status) {
  switch (status) {
    case JobStatus::kOk:
      return "ok";
    case JobStatus::kInvalidName:
      return "invalid_name";
    case JobStatus::kDeadName:
      return "dead_name";
    case JobStatus::kQueueFull:
      return "queue_full";
    case JobStatus::kTimedOut:
      return "timed_out";
    case JobStatus::kAlreadyMatched:
      return "already_matched";
    case JobStatus::kLinkBroken:
      return "link_broken";
    case JobStatus::kNotFound:
      return "not_found";
    case JobStatus::kBadRequest:
      return "bad_request";
    case JobStatus::kUnavailable:
      return "unavailable";
    case JobStatus::kTooLarge:
      return "too_large";
    case JobStatus::kCancelled:
      return "cancelled";
    case JobStatus::kExists:
      return "exists";
    case JobStatus::kOverQuota:
      return "over_quota";
  }
  return "unknown";
}

Item Item::Bytes(std::string bytes) {
  auto owner = std::make_shared<const std::string>(std::move(bytes));
  return Shared(ItemKind::kBytes, owner, *owner);
}

Item Item::OutOfLine(std::string bytes) {
  auto owner = std::make_shared<const std::string>(std::move(bytes));
  return Shared(ItemKind::kOutOfLine, owner, *owner);
}

Item Item::Shared(ItemKind kind, std::shared_ptr<const std::string> owner, std::string_view bytes) {
  Item item;
  item.kind = kind;
  item.data = std::move(owner);
  item.view = bytes;
  return item;
}

Item Item::Port(std::uint32_t name, Disposition disposition) {
  Item item;
  item.kind = disposition == Disposition::kMoveLinkEnd ? ItemKind::kLinkEnd
              : (disposition == Disposition::kCopyRegion || disposition == Disposition::kMoveRegion)
                  ? ItemKind::kRegion
                  : ItemKind::kPort;
  item.name = name;
  item.disposition = disposition;
  return item;
}

std::size_t Message::ByteSize() const {
  std::size_t size = 0;
  for (const Item& item : items) size += item.bytes().size();
  return size;
}

void WireWriter::Bytes(std::string_view v) {
  U32(static_cast<std::uint32_t>(v.size()));
  out_.append(v);
}

void WireWriter::Data(std::string_view v, const std::shared_ptr<const std::string>& owner) {
  U32(static_cast<std::uint32_t>(v.size()));
  Raw(v, owner);
}

void WireWriter::Keep(std::string_view v, std::shared_ptr<const std::string> owner) {
  if (!share_data_ || v.size() < kShareMin) return static_cast<void>(out_.append(v));
  shared_.push_back({out_.size(), std::move(owner), v});
  shared_bytes_ += v.size();
}

void WireWriter::Raw(std::string_view v, const std::shared_ptr<const std::string>& owner) {
  // Nothing would keep it alive, or it is copied anyway: no copy of `owner` (a reference count
  // taken and dropped per small item was 5% of a 64 B stream's writer).
  if (!owner || !share_data_ || v.size() < kShareMin) return static_cast<void>(out_.append(v));
  Keep(v, owner);
}

void WireWriter::Borrowed(std::string_view v) {
  U32(static_cast<std::uint32_t>(v.size()));
  Keep(v, nullptr);
}

void WireWriter::WriteMessage(const Message& message) {
  WriteMessageHeader({message.destination, message.destination_disposition, message.reply,
                      message.reply_disposition, message.id,
                      static_cast<std::uint32_t>(message.items.size())});
  WriteItems(message.items);
}

void WireWriter::WriteItems(const std::vector<Item>& items) {
  for (const Item& item : items) {
    U8(static_cast<std::uint8_t>(item.kind));
    if (item.kind == ItemKind::kBytes || item.kind == ItemKind::kOutOfLine) {
      Data(item.bytes(), item.data);
    } else {
      U32(item.name);
      U8(static_cast<std::uint8_t>(item.disposition));
    }
  }
}

void WireWriter::WriteOpResult(const OpResult& result) {
  U8(result.is_receive ? 1 : 0);
  U32(result.end);
  if (result.is_receive) WriteMessage(result.message);
}

std::optional<std::string> WireReader::Bytes() {
  auto view = BytesView();
  if (!view) return std::nullopt;
  return std::string(*view);
}

std::optional<Message> WireReader::ReadMessage() {
  auto header = ReadMessageHeader();
  if (!header) return std::nullopt;
  Message message;
  message.destination = header->destination;
  message.destination_disposition = header->destination_disposition;
  message.reply = header->reply;
  message.reply_disposition = header->reply_disposition;
  message.id = header->id;
  // Each item takes at least 5 bytes on the wire: the count reserves no more than could follow.
  message.items.reserve(std::min<std::size_t>(header->item_count, remaining() / 5));
  for (std::uint32_t i = 0; i < header->item_count; ++i) {
    auto kind = U8();
    if (!kind || *kind < 1 || *kind > 5) return std::nullopt;
    Item item;
    item.kind = static_cast<ItemKind>(*kind);
    if (item.kind == ItemKind::kBytes || item.kind == ItemKind::kOutOfLine) {
      auto bytes = BytesView();
      if (!bytes) return std::nullopt;
      if (owner_) {
        item = Item::Shared(item.kind, owner_, *bytes);
      } else {
        auto copy = std::make_shared<const std::string>(*bytes);
        item = Item::Shared(item.kind, copy, *copy);
      }
    } else {
      auto name = U32();
      auto disposition = U8();
      if (!disposition) return std::nullopt;
      item.name = *name;
      item.disposition = static_cast<Disposition>(*disposition);
    }
    message.items.push_back(std::move(item));
  }
  return message;
}

std::optional<OpResult> WireReader::ReadOpResult() {
  OpResult result;
  auto is_receive = U8();
  auto end = U32();
  if (!end) return std::nullopt;
  result.is_receive = *is_receive != 0;
  result.end = *end;
  if (result.is_receive) {
    auto message = ReadMessage();
    if (!message) return std::nullopt;
    result.message = std::move(*message);
  }
  return result;
}

std::string EncodeJobRequest(std::uint32_t id, JobOp op, std::string_view body) {
  WireWriter writer;
  writer.U32(id);
  writer.U16(static_cast<std::uint16_t>(op));
  writer.out().append(body);
  return writer.Take();
}

Expected<JobRequest> DecodeJobRequest(std::shared_ptr<const std::string> payload) {
  WireReader reader(*payload);
  auto id = reader.U32();
  auto op = reader.U16();
  if (!op) return Fail("IPC request shorter than its header");
  return JobRequest{*id, static_cast<JobOp>(*op), reader.rest(), std::move(payload)};
}

std::string EncodeJobReply(std::uint32_t id, JobStatus status, std::string_view body) {
  WireWriter writer;
  writer.U32(id);
  writer.U16(static_cast<std::uint16_t>(status));
  if (status == JobStatus::kOk) {
    writer.out().append(body);
  } else {
    writer.Bytes(body);
  }
  return writer.Take();
}

std::optional<JobReplyHeader> ReadJobReplyHeader(std::string_view payload) {
  WireReader reader(payload);
  auto id = reader.U32();
  auto status = reader.U16();
  if (!status) return std::nullopt;
  return JobReplyHeader{*id, static_cast<JobStatus>(*status)};
}

std::string JobReplyErrorText(JobStatus status, std::string_view body) {
  WireReader text(body);
  auto message = text.Bytes();
  return message ? *message : std::string(JobStatusName(status));
}

Expected<JobReply> DecodeJobReply(std::string_view payload) {
  auto header = ReadJobReplyHeader(payload);
  if (!header) return Fail("IPC reply shorter than its header");
  const std::string_view body = payload.substr(kJobReplyHeaderSize);
  return JobReply{header->id, header->status,
                  header->status == JobStatus::kOk ? std::string(body)
                                                   : JobReplyErrorText(header->status, body)};
}

std::string EncodeSendRequest(const SendRequest& request) {
  WireWriter writer;
  writer.WriteMessage(request.message);
  writer.U8(static_cast<std::uint8_t>(request.policy));
  writer.U32(request.timeout_ms);
  writer.U32(request.notify_port);
  return writer.Take();
}

std::optional<SendRequest> DecodeSendRequest(std::string_view body,
                                             std::shared_ptr<const std::string> owner) {
  WireReader reader(body, std::move(owner));
  SendRequest request;
  auto message = reader.ReadMessage();
  auto policy = reader.U8();
  auto timeout = reader.U32();
  auto notify = reader.U32();
  if (!message || !notify || *policy > 2) return std::nullopt;
  request.message = std::move(*message);
  request.policy = static_cast<FullPolicy>(*policy);
  request.timeout_ms = *timeout;
  request.notify_port = *notify;
  return request;
}

}  // namespace tern::ipc
