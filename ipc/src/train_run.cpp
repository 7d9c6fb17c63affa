#include "train_run.hpp"

#include <utility>

#include "port_router_wire.hpp"

namespace tern::ipc::router {

namespace {

// [u32 destination][u8 disposition][u32 reply][u8 reply disposition][u32 id][u32 item count]
constexpr std::size_t kHeaderSize = 4 + 1 + 4 + 1 + 4 + 4;
constexpr std::size_t kIdOffset = 10;
// The receiver's view begins with its own name, copy-send, no reply right.
constexpr std::size_t kRewritten = kIdOffset;

bool IsData(std::uint8_t kind) {
  return kind == static_cast<std::uint8_t>(ItemKind::kBytes) ||
         kind == static_cast<std::uint8_t>(ItemKind::kOutOfLine);
}

// The size of the first message of `bytes`, which CheckTrain has accepted.
std::size_t FirstSize(std::string_view bytes) {
  WireReader in(bytes.substr(kHeaderSize - 4));
  const std::uint32_t items = in.U32().value_or(0);
  for (std::uint32_t i = 0; i < items; ++i) {
    (void)in.U8();
    (void)in.BytesView();
  }
  return bytes.size() - in.remaining();
}

}  // namespace

std::optional<TrainCheck> CheckTrain(std::string_view bytes, std::uint32_t count,
                                     std::string& why) {
  WireReader in(bytes);
  TrainCheck check;
  for (std::uint32_t i = 0; i < count; ++i) {
    auto destination = in.U32();
    auto disposition = in.U8();
    auto reply = in.U32();
    auto reply_disposition = in.U8();
    auto id = in.U32();
    auto items = in.U32();
    if (!items) {
      why = "a message is cut short";
      return std::nullopt;
    }
    (void)reply_disposition;
    (void)id;
    if (i == 0) check.destination = *destination;
    if (*destination != check.destination) {
      why = "every message goes to one port";
      return std::nullopt;
    }
    if (*disposition != static_cast<std::uint8_t>(Disposition::kCopySend) || *reply != 0) {
      why = "messages are sent copy-send, without a reply right";
      return std::nullopt;
    }
    for (std::uint32_t j = 0; j < *items; ++j) {
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
      check.data_bytes += data->size();
    }
  }
  if (!in.AtEnd()) {
    why = "trailing bytes after the messages";
    return std::nullopt;
  }
  return check;
}

TrainRun TakeFront(TrainRun& run, std::uint32_t n) {
  if (n >= run.count) return std::exchange(run, TrainRun{});
  std::size_t size = 0;
  for (std::uint32_t i = 0; i < n; ++i) size += FirstSize(run.bytes.substr(size));
  TrainRun front{run.owner, run.bytes.substr(0, size), n};
  run.bytes.remove_prefix(size);
  run.count -= n;
  return front;
}

TransitMessage PopMessage(TrainRun& run) {
  TransitMessage message;
  const std::size_t size = FirstSize(run.bytes);
  WireReader in(run.bytes.substr(kIdOffset, size - kIdOffset));
  message.id = in.U32().value_or(0);
  const std::uint32_t items = in.U32().value_or(0);
  for (std::uint32_t i = 0; i < items; ++i) {
    TransitItem& item = message.items.emplace_back();
    item.kind = static_cast<ItemKind>(in.U8().value_or(1));
    item.owner = run.owner;
    item.bytes = in.BytesView().value_or(std::string_view());
  }
  run.bytes.remove_prefix(size);
  --run.count;
  return message;
}

void WriteRun(WireWriter& out, TrainRun& run, std::uint32_t n, std::uint32_t receive_name) {
  if (n > run.count) n = run.count;
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::size_t size = FirstSize(run.bytes);
    out.U32(receive_name);
    out.U8(static_cast<std::uint8_t>(Disposition::kCopySend));
    out.U32(0);
    out.U8(static_cast<std::uint8_t>(Disposition::kNone));
    out.out().append(run.bytes.substr(kRewritten, size - kRewritten));
    run.bytes.remove_prefix(size);
  }
  run.count -= n;
  if (run.count == 0) run.owner.reset();
}

}  // namespace tern::ipc::router
