// tern::Expected<T, E> — a value or an Error (or a part's own error type E), in the shape of C++23
// std::expected.
//
// GCC 12 (Debian 12) has no <expected>; this is the small subset tern uses. When the
// toolchain moves on, replace it with std::expected<T, tern::Error> and nothing else changes.
//
// Thread-safety: a plain value type; no internal synchronisation.
#pragma once

#include <string>
#include <type_traits>
#include <utility>
#include <variant>

namespace tern {

// A human-readable failure: one line that can be shown to an operator as it is.
struct Error {
  std::string message;
};

template <typename E = Error>
struct Unexpected {
  E error;
};

inline Unexpected<Error> Fail(std::string message) { return {Error{std::move(message)}}; }

// `E` is the failure's type: Error by default. A part whose callers need more than one line
// (libtern's IpcResult carries the agent's status) names its own, and may then return an E as
// it is (`return IpcError{...}`), since it cannot be mistaken for a value.
template <typename T, typename E = Error>
class [[nodiscard]] Expected {
 public:
  Expected(T value) : state_(std::in_place_index<0>, std::move(value)) {}  // NOLINT implicit
  Expected(Unexpected<E> failure)                                          // NOLINT implicit
      : state_(std::in_place_index<1>, std::move(failure.error)) {}
  Expected(E failure)  // NOLINT implicit
      requires(!std::is_same_v<E, Error> && !std::is_convertible_v<E, T>)
      : state_(std::in_place_index<1>, std::move(failure)) {}

  bool has_value() const { return state_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & { return std::get<0>(state_); }
  const T& value() const& { return std::get<0>(state_); }
  T&& value() && { return std::get<0>(std::move(state_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const E& error() const { return std::get<1>(state_); }

 private:
  std::variant<T, E> state_;
};

template <typename E>
class [[nodiscard]] Expected<void, E> {
 public:
  Expected() = default;
  Expected(Unexpected<E> failure) : error_(std::move(failure.error)), ok_(false) {}  // NOLINT
  Expected(E failure)  // NOLINT implicit
      requires(!std::is_same_v<E, Error>)
      : error_(std::move(failure)), ok_(false) {}

  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const E& error() const { return error_; }

 private:
  E error_;
  bool ok_ = true;
};

}  // namespace tern
