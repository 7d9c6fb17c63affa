#include <tern/ipc.hpp>
#include <tern/ipc/job_wire.hpp>

namespace tern {

MessageBuilder::MessageBuilder(std::uint32_t destination, Disposition disposition) {
  message_.destination = destination;
  message_.destination_disposition = disposition;
}

MessageBuilder& MessageBuilder::id(std::uint32_t id) {
  message_.id = id;
  return *this;
}

MessageBuilder& MessageBuilder::reply(std::uint32_t name, Disposition disposition) {
  message_.reply = name;
  message_.reply_disposition = disposition;
  return *this;
}

MessageBuilder& MessageBuilder::bytes(std::string data) {
  return item(Item::Bytes(std::move(data)));
}

MessageBuilder& MessageBuilder::out_of_line(std::string data) {
  return item(Item::OutOfLine(std::move(data)));
}

MessageBuilder& MessageBuilder::port(std::uint32_t name, Disposition disposition) {
  return item(Item::Port(name, disposition));
}

MessageBuilder& MessageBuilder::link_end(std::uint32_t end) {
  return item(Item::Port(end, Disposition::kMoveLinkEnd));
}

MessageBuilder& MessageBuilder::region(std::uint32_t name, bool move) {
  return item(Item::Port(name, move ? Disposition::kMoveRegion : Disposition::kCopyRegion));
}

MessageBuilder& MessageBuilder::item(Item item) {
  message_.items.push_back(std::move(item));
  return *this;
}

Message BytesMessage(std::uint32_t destination, std::string data, std::uint32_t id) {
  return MessageBuilder(destination).id(id).bytes(std::move(data)).build();
}

std::string_view FirstBytes(const Message& message) {
  for (const Item& item : message.items) {
    if (item.kind == ItemKind::kBytes || item.kind == ItemKind::kOutOfLine) return item.bytes();
  }
  return {};
}

std::optional<std::uint32_t> NotificationName(const Message& message) {
  const std::string_view bytes = FirstBytes(message);
  if (bytes.size() < 4) return std::nullopt;
  ipc::WireReader reader(bytes);
  return reader.U32();
}

}  // namespace tern
