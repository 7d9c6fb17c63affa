// tern::PortReader and MessageView: a stream's messages read in place from receive_many's
// answers.
#include <tern/ipc.hpp>

#include "channel_impl.hpp"

namespace tern {

namespace {

using ipc::JobOp;
using ipc::WireReader;
using ipc::WireWriter;

bool IsData(ItemKind kind) { return kind == ItemKind::kBytes || kind == ItemKind::kOutOfLine; }

// One message in WireWriter::WriteMessage's layout, its data items as views into `in`'s input.
bool ReadView(WireReader& in, MessageView& out) {
  auto header = in.ReadMessageHeader();
  if (!header) return false;
  out.destination = header->destination;
  out.reply = header->reply;
  out.reply_disposition = header->reply_disposition;
  out.id = header->id;
  out.items.clear();
  for (std::uint32_t i = 0; i < header->item_count; ++i) {
    auto kind = in.U8();
    if (!kind || *kind < 1 || *kind > 5) return false;
    ItemView& item = out.items.emplace_back();
    item.kind = static_cast<ItemKind>(*kind);
    if (IsData(item.kind)) {
      auto bytes = in.BytesView();
      if (!bytes) return false;
      item.bytes = *bytes;
    } else {
      auto name = in.U32();
      auto item_disposition = in.U8();
      if (!item_disposition) return false;
      item.name = *name;
      item.disposition = static_cast<Disposition>(*item_disposition);
    }
  }
  return true;
}

}  // namespace

std::string_view MessageView::bytes() const {
  for (const ItemView& item : items) {
    if (IsData(item.kind)) return item.bytes;
  }
  return {};
}

Message MessageView::ToMessage() const {
  Message message;
  message.destination = destination;
  message.reply = reply;
  message.reply_disposition = reply_disposition;
  message.id = id;
  for (const ItemView& item : items) {
    if (item.kind == ItemKind::kBytes) {
      message.items.push_back(Item::Bytes(std::string(item.bytes)));
    } else if (item.kind == ItemKind::kOutOfLine) {
      message.items.push_back(Item::OutOfLine(std::string(item.bytes)));
    } else {
      Item right;
      right.kind = item.kind;
      right.name = item.name;
      right.disposition = item.disposition;
      message.items.push_back(std::move(right));
    }
  }
  return message;
}

PortReader::PortReader(Channel channel, std::uint32_t port, std::uint32_t batch)
    : channel_(std::move(channel)), port_(port), batch_(batch == 0 ? 1 : batch) {}

IpcResult<void> PortReader::next(MessageView& out, Timeout timeout) {
  if (left_ == 0) {
    WireWriter request;
    request.U32(port_);
    request.U32(libtern::TimeoutMs(timeout));
    request.U32(batch_);
    auto reply = channel_.impl_->Request(JobOp::kReceiveMany, request.Take());
    if (!reply) return reply.error();
    buffer_ = std::move(reply->payload);  // the answer's frame, read in place
    WireReader reader(std::string_view(buffer_).substr(reply->body_at));
    auto count = reader.U32();
    if (!count || *count == 0) {
      buffer_.clear();
      return IpcError{JobStatus::kBadRequest, "malformed receive_many answer from the agent"};
    }
    left_ = *count;
    offset_ = reply->body_at + 4;
  }
  WireReader reader(std::string_view(buffer_).substr(offset_));
  if (!ReadView(reader, out)) {
    left_ = 0;
    return IpcError{JobStatus::kBadRequest, "malformed message in a receive_many answer"};
  }
  offset_ = buffer_.size() - reader.remaining();
  --left_;
  return {};
}

}  // namespace tern
