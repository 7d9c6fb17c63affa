// Integers read from JSON that a peer, a job's user or a file wrote. nlohmann's get<T>() casts
// whatever number is there: a float out of T's range is undefined behaviour (found by the
// fuzz targets: {"uid":1e300}), 0.9 becomes 0 (uid 0), and -1 becomes UINT_MAX. These accept
// only an integer (no fraction, no exponent) that T holds.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

namespace tern {

// The value as a T, or nullopt when it is not an integer T can hold.
template <typename T>
std::optional<T> JsonInteger(const nlohmann::json& value) {
  if (value.is_number_unsigned()) {
    const auto v = value.get<std::uint64_t>();
    if (std::in_range<T>(v)) return static_cast<T>(v);
  } else if (value.is_number_integer()) {
    const auto v = value.get<std::int64_t>();
    if (std::in_range<T>(v)) return static_cast<T>(v);
  }
  return std::nullopt;
}

// object[key] as a T; `fallback` when the key is absent, not an integer T holds, or object is no
// object (peer data where a bad field reads as absent rather than failing the whole).
template <typename T>
T JsonIntegerOr(const nlohmann::json& object, const char* key, T fallback) {
  if (!object.is_object()) return fallback;
  const auto found = object.find(key);
  return found == object.end() ? fallback : JsonInteger<T>(*found).value_or(fallback);
}

// object[key] as a T; `fallback` when the key is absent (or, without one, throws
// std::invalid_argument); throws std::invalid_argument when it is not an integer T can hold.
template <typename T>
T JsonIntegerAt(const nlohmann::json& object, const char* key,
                std::optional<T> fallback = std::nullopt) {
  const auto found = object.find(key);
  if (found == object.end()) {
    if (fallback) return *fallback;
    throw std::invalid_argument(std::string("no \"") + key + "\"");
  }
  if (auto value = JsonInteger<T>(*found)) return *value;
  throw std::invalid_argument(std::string("\"") + key +
                              "\" is not an integer in range: " + found->dump());
}

}  // namespace tern
