#include "wire.hpp"

#include <algorithm>

namespace tern::ipc::router {

void WriteId(WireWriter& w, ObjectId id) {
  w.U64(id.home);
  w.U64(id.serial);
}

std::optional<ObjectId> ReadId(WireReader& r) {
  auto home = r.U64();
  auto serial = r.U64();
  if (!serial) return std::nullopt;
  return ObjectId{*home, *serial};
}

namespace {

void WriteRight(WireWriter& w, const TransitRight& right) {
  w.U8(static_cast<std::uint8_t>(right.type));
  WriteId(w, right.id);
}

std::optional<TransitRight> ReadRight(WireReader& r) {
  auto type = r.U8();
  auto id = ReadId(r);
  if (!id || *type > static_cast<std::uint8_t>(RightType::kRegion)) return std::nullopt;
  return TransitRight{static_cast<RightType>(*type), *id};
}

void WriteTransit(WireWriter& w, const TransitMessage& m) {
  WriteId(w, m.destination);
  WriteRight(w, m.reply);
  w.U32(m.id);
  w.U32(static_cast<std::uint32_t>(m.items.size()));
  for (const TransitItem& item : m.items) {
    w.U8(static_cast<std::uint8_t>(item.kind));
    if (item.kind == ItemKind::kBytes || item.kind == ItemKind::kOutOfLine) {
      w.Bytes(item.bytes);
    } else {
      WriteRight(w, item.right);
    }
  }
}

// Data items are views into `owner`, which `r` reads.
std::optional<TransitMessage> ReadTransit(WireReader& r,
                                          const std::shared_ptr<const std::string>& owner) {
  TransitMessage m;
  auto destination = ReadId(r);
  auto reply = ReadRight(r);
  auto id = r.U32();
  auto count = r.U32();
  if (!destination || !reply || !count || *count > (1u << 20)) return std::nullopt;
  m.destination = *destination;
  m.reply = *reply;
  m.id = *id;
  m.items.reserve(std::min<std::size_t>(*count, r.remaining() / 5));  // >= 5 bytes an item
  for (std::uint32_t i = 0; i < *count; ++i) {
    auto item_kind = r.U8();
    if (!item_kind || *item_kind < 1 || *item_kind > 5) return std::nullopt;
    TransitItem item;
    item.kind = static_cast<ItemKind>(*item_kind);
    if (item.kind == ItemKind::kBytes || item.kind == ItemKind::kOutOfLine) {
      auto bytes = r.BytesView();
      if (!bytes) return std::nullopt;
      item.owner = owner;
      item.bytes = *bytes;
    } else {
      auto right = ReadRight(r);
      if (!right) return std::nullopt;
      item.right = *right;
    }
    m.items.push_back(std::move(item));
  }
  return m;
}

}  // namespace

TransitItem TransitItem::Data(ItemKind kind, std::shared_ptr<const std::string> data) {
  TransitItem item;
  item.kind = kind;
  if (data) item.bytes = *data;
  item.owner = std::move(data);
  return item;
}

TransitItem TransitItem::Of(const Item& item) {
  TransitItem transit;
  transit.kind = item.kind;
  transit.owner = item.data;
  transit.bytes = item.bytes();
  return transit;
}

std::string EncodeEnvelope(const Envelope& e) {
  WireWriter w;
  w.U8(static_cast<std::uint8_t>(e.kind));
  w.U64(e.ticket);
  w.U64(e.origin);
  w.Bytes(e.job);
  WriteId(w, e.object);
  WriteId(w, e.object2);
  w.U32(e.a);
  w.U32(e.b);
  w.U32(e.c);
  w.U64(static_cast<std::uint64_t>(e.delta));
  w.U16(static_cast<std::uint16_t>(e.status));
  w.Bytes(e.text);
  // 0: no message, 1: one message, 2: a batch.
  w.U8(e.message ? 1 : (e.batch.empty() ? 0 : 2));
  if (e.message) WriteTransit(w, *e.message);
  if (!e.message && !e.batch.empty()) {
    w.U32(e.batch.count);
    w.out().append(e.batch.bytes);  // as the sending job wrote it
  }
  return w.Take();
}

std::optional<Envelope> DecodeEnvelope(std::shared_ptr<const std::string> payload) {
  WireReader r(*payload);
  Envelope e;
  auto kind = r.U8();
  auto ticket = r.U64();
  auto origin = r.U64();
  auto job = r.Bytes();
  auto object = ReadId(r);
  auto object2 = ReadId(r);
  auto a = r.U32();
  auto b = r.U32();
  auto c = r.U32();
  auto delta = r.U64();
  auto status = r.U16();
  auto text = r.Bytes();
  auto has_message = r.U8();
  if (!has_message || !job || !object || !object2 || !text) return std::nullopt;
  e.kind = static_cast<Remote>(*kind);
  e.ticket = *ticket;
  e.origin = *origin;
  e.job = std::move(*job);
  e.object = *object;
  e.object2 = *object2;
  e.a = *a;
  e.b = *b;
  e.c = *c;
  e.delta = static_cast<std::int64_t>(*delta);
  e.status = static_cast<JobStatus>(*status);
  e.text = std::move(*text);
  if (*has_message == 0) {
    if (!r.AtEnd()) return std::nullopt;
    return e;
  }
  if (*has_message > 2) return std::nullopt;
  const auto owner = std::move(payload);
  WireReader body(r.rest());
  if (*has_message == 1) {
    auto m = ReadTransit(body, owner);
    if (!m) return std::nullopt;
    e.message = std::move(*m);
    if (!body.AtEnd()) return std::nullopt;
    return e;
  }
  auto count = body.U32();
  if (!count || *count == 0 || *count > (1u << 24)) return std::nullopt;
  std::string why;
  const std::string_view run = body.rest();
  if (!CheckTrain(run, *count, why)) return std::nullopt;
  e.batch = TrainRun{owner, run, *count};
  return e;
}

}  // namespace tern::ipc::router
