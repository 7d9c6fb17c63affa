// Big-endian fixed-width numbers: the byte order of every tern wire format (docs/wire.md).
// One codec for all of them (ipc::WireWriter and WireReader, the peer frame header, the API
// frame, the migration bodies, the image archive), so that none writes its own shifts.
//
// Thread-safety: pure functions.
#pragma once

#include <bit>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace tern {

// Big-endian <-> host order.
template <std::unsigned_integral T>
constexpr T BigEndian(T v) {
  if constexpr (sizeof(T) > 1 && std::endian::native == std::endian::little) {
    // std::byteswap is C++23; these builtins are what it compiles to.
    if constexpr (sizeof(T) == 2) return __builtin_bswap16(v);
    if constexpr (sizeof(T) == 4) return __builtin_bswap32(v);
    if constexpr (sizeof(T) == 8) return __builtin_bswap64(v);
  }
  return v;
}

// Appends `v` as sizeof(T) big-endian bytes.
template <std::unsigned_integral T>
void AppendBigEndian(std::string& out, T v) {
  v = BigEndian(v);
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));
  out.append(bytes, sizeof(T));
}

// The T in the first sizeof(T) bytes at `bytes` (the caller has checked they are there).
template <std::unsigned_integral T>
T LoadBigEndian(const char* bytes) {
  T value;
  std::memcpy(&value, bytes, sizeof(T));
  return BigEndian(value);
}

// The T at the front of `in`, which it removes; false, and `in` left alone, if it is short.
template <std::unsigned_integral T>
bool TakeBigEndian(std::string_view& in, T& value) {
  if (in.size() < sizeof(T)) return false;
  value = LoadBigEndian<T>(in.data());
  in.remove_prefix(sizeof(T));
  return true;
}

}  // namespace tern
