#include "train_run.hpp"

#include <utility>

#include "wire.hpp"

namespace tern::ipc::router {

namespace {

bool IsData(std::uint8_t kind) {
  return kind == static_cast<std::uint8_t>(ItemKind::kBytes) ||
         kind == static_cast<std::uint8_t>(ItemKind::kOutOfLine);
}

// The first message of a run: its header, its items as written, and the bytes it takes.
struct RunMessage {
  MessageHeader header;
  std::string_view items;
  std::size_t size = 0;
  std::size_t data_bytes = 0;
};

// Reads the first message of `bytes`; nullopt, with `why`, unless it is data only.
std::optional<RunMessage> FirstMessage(std::string_view bytes, std::string& why) {
  WireReader in(bytes);
  auto header = in.ReadMessageHeader();
  if (!header) {
    why = "a message is cut short";
    return std::nullopt;
  }
  RunMessage message{*header, in.rest(), 0, 0};
  for (std::uint32_t i = 0; i < header->item_count; ++i) {
    auto kind = in.U8();
    if (!kind || !IsData(*kind)) {
      why = "messages carry data only (bytes, out-of-line); send rights with send";
      return std::nullopt;
    }
    auto data = in.BytesView();
    if (!data) {
      why = "a message is cut short";
      return std::nullopt;
    }
    message.data_bytes += data->size();
  }
  message.items = message.items.substr(0, message.items.size() - in.remaining());
  message.size = bytes.size() - in.remaining();
  return message;
}

// The first message of a run that CheckTrain has accepted.
RunMessage First(std::string_view bytes) {
  std::string why;
  return FirstMessage(bytes, why).value_or(RunMessage{{}, {}, bytes.size(), 0});
}

}  // namespace

std::optional<TrainCheck> CheckTrain(std::string_view bytes, std::uint32_t count,
                                     std::string& why) {
  TrainCheck check;
  for (std::uint32_t i = 0; i < count; ++i) {
    auto message = FirstMessage(bytes, why);
    if (!message) return std::nullopt;
    if (i == 0) check.destination = message->header.destination;
    if (message->header.destination != check.destination) {
      why = "every message goes to one port";
      return std::nullopt;
    }
    if (message->header.destination_disposition != Disposition::kCopySend ||
        message->header.reply != 0) {
      why = "messages are sent copy-send, without a reply right";
      return std::nullopt;
    }
    check.data_bytes += message->data_bytes;
    bytes.remove_prefix(message->size);
  }
  if (!bytes.empty()) {
    why = "trailing bytes after the messages";
    return std::nullopt;
  }
  return check;
}

TrainRun TakeFront(TrainRun& run, std::uint32_t n) {
  if (n >= run.count) return std::exchange(run, TrainRun{});
  std::size_t size = 0;
  for (std::uint32_t i = 0; i < n; ++i) size += First(run.bytes.substr(size)).size;
  TrainRun front{run.owner, run.bytes.substr(0, size), n};
  run.bytes.remove_prefix(size);
  run.count -= n;
  return front;
}

TransitMessage PopMessage(TrainRun& run, ObjectId destination) {
  const RunMessage first = First(run.bytes);
  TransitMessage message;
  message.destination = destination;
  message.id = first.header.id;
  WireReader in(first.items);
  for (std::uint32_t i = 0; i < first.header.item_count; ++i) {
    TransitItem& item = message.items.emplace_back();
    item.kind = static_cast<ItemKind>(in.U8().value_or(1));
    item.owner = run.owner;
    item.bytes = in.BytesView().value_or(std::string_view());
  }
  run.bytes.remove_prefix(first.size);
  if (--run.count == 0) run.owner.reset();
  return message;
}

void WriteRun(WireWriter& out, TrainRun& run, std::uint32_t n, std::uint32_t receive_name) {
  if (n > run.count) n = run.count;
  for (std::uint32_t i = 0; i < n; ++i) {
    const RunMessage first = First(run.bytes);
    // As the receiver sees it: its own name, no reply right; the items as the sender wrote them.
    out.WriteMessageHeader({.destination = receive_name,
                            .id = first.header.id,
                            .item_count = first.header.item_count});
    out.Raw(first.items, run.owner);
    run.bytes.remove_prefix(first.size);
  }
  run.count -= n;
  if (run.count == 0) run.owner.reset();
}

}  // namespace tern::ipc::router
