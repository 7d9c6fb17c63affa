// Records: a fuzz input read as a sequence of [u8 tag][u16 big-endian length][bytes] records,
// so that a target can play several events (requests, timers, frames) from one input and a
// seed can be written (tests/fuzz/make_seeds.cpp). A record cut short takes what is
// left.
//
// Thread-safety: a plain value over the input it views.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace tern::fuzz {

struct Record {
  std::uint8_t tag = 0;
  std::string_view bytes;
};

class Records {
 public:
  Records(const std::uint8_t* data, std::size_t size)
      : in_(reinterpret_cast<const char*>(data), size) {}

  std::optional<Record> Next() {
    if (in_.size() < 3) return std::nullopt;
    Record record;
    record.tag = static_cast<std::uint8_t>(in_[0]);
    const std::size_t length =
        static_cast<std::uint8_t>(in_[1]) << 8 | static_cast<std::uint8_t>(in_[2]);
    in_.remove_prefix(3);
    record.bytes = in_.substr(0, length);
    in_.remove_prefix(record.bytes.size());
    return record;
  }

 private:
  std::string_view in_;
};

}  // namespace tern::fuzz
