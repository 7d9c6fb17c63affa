// tern::Expected<T> — a value or an Error, in the shape of C++23 std::expected.
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

template <typename T>
class [[nodiscard]] Expected {
 public:
  Expected(T value) : state_(std::in_place_index<0>, std::move(value)) {}  // NOLINT implicit
  Expected(Unexpected<Error> failure)                                      // NOLINT implicit
      : state_(std::in_place_index<1>, std::move(failure.error)) {}

  bool has_value() const { return state_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & { return std::get<0>(state_); }
  const T& value() const& { return std::get<0>(state_); }
  T&& value() && { return std::get<0>(std::move(state_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const { return std::get<1>(state_); }

 private:
  std::variant<T, Error> state_;
};

template <>
class [[nodiscard]] Expected<void> {
 public:
  Expected() = default;
  Expected(Unexpected<Error> failure) : error_(std::move(failure.error)), ok_(false) {}  // NOLINT

  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { return error_; }

 private:
  Error error_;
  bool ok_ = true;
};

}  // namespace tern
