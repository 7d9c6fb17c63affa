#include "tern/migrate/protocol_messages.hpp"

#include <array>
#include <type_traits>
#include <utility>

#include "tern/migrate/request_names.hpp"

namespace tern::migrate {

std::string_view ToString(MoveMode mode) {
  return mode == MoveMode::kPostCopy ? "postcopy" : "precopy";
}

std::string_view ToString(Outcome outcome) {
  switch (outcome) {
    case Outcome::kUnknown:
      return "unknown";
    case Outcome::kPending:
      return "pending";
    case Outcome::kCommitted:
      return "committed";
    case Outcome::kAborted:
      return "aborted";
  }
  return "unknown";
}

namespace {

template <typename T>
constexpr std::string_view TypeName() {
  if constexpr (std::is_same_v<T, PrepareRequest>) return "PrepareRequest";
  if constexpr (std::is_same_v<T, RestoreRequest>) return "RestoreRequest";
  if constexpr (std::is_same_v<T, CommitRequest>) return "CommitRequest";
  if constexpr (std::is_same_v<T, AbortRequest>) return "AbortRequest";
  if constexpr (std::is_same_v<T, OutcomeQuery>) return "OutcomeQuery";
  if constexpr (std::is_same_v<T, IpcStateQuery>) return "IpcStateQuery";
  if constexpr (std::is_same_v<T, PrepareReply>) return "PrepareReply";
  if constexpr (std::is_same_v<T, RestoreReply>) return "RestoreReply";
  if constexpr (std::is_same_v<T, CommitReply>) return "CommitReply";
  if constexpr (std::is_same_v<T, AbortReply>) return "AbortReply";
  if constexpr (std::is_same_v<T, OutcomeReply>) return "OutcomeReply";
  if constexpr (std::is_same_v<T, IpcStateReply>) return "IpcStateReply";
  return "?";
}

}  // namespace

std::span<const std::string_view> RequestNames() {
  static constexpr auto kNames = []<std::size_t... I>(std::index_sequence<I...>) {
    return std::array<std::string_view, sizeof...(I)>{
        TypeName<std::variant_alternative_t<I, Request>>()...};
  }
  (std::make_index_sequence<std::variant_size_v<Request>>{});
  return kNames;
}

std::string_view NameOf(const Message& message) {
  return std::visit([](const auto& m) { return TypeName<std::decay_t<decltype(m)>>(); }, message);
}

const std::string& IdOf(const Message& message) {
  return std::visit([](const auto& m) -> const std::string& { return m.id; }, message);
}

bool IsRequest(const Message& message) { return message.index() < std::variant_size_v<Request>; }

Message ToMessage(const Request& request) {
  return std::visit([](const auto& m) { return Message{m}; }, request);
}

Message ToMessage(const Reply& reply) {
  return std::visit([](const auto& m) { return Message{m}; }, reply);
}

}  // namespace tern::migrate
