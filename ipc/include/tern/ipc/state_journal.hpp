// The file a port router's durable state is kept in (docs/ipc.md "Port homes that survive
// their agent"): a magic header and then records of `[u32 length][u32 CRC-32C of the
// payload][payload]` (big-endian), appended. A record cut short or whose checksum does not
// match ends the file: it is what a kill in the middle of a write leaves (the journal lives on
// tmpfs, which has no torn pages, only short writes), and everything before it stands.
//
// The readers take hostile input: a file of any bytes gives records or a clear error, never a
// crash, and no length is trusted past kMaxStateRecord or the bytes that are there.
//
// Thread-safety: free functions on values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <vector>

namespace tern::ipc {

// A queued message of the largest size, its envelope and some room.
inline constexpr std::size_t kMaxStateRecord = (std::size_t{256} << 20) + (std::size_t{1} << 20);
inline constexpr std::string_view kJournalMagic{"TERNIPJ1", 8};

// CRC-32C (Castagnoli) of `bytes`.
std::uint32_t Crc32c(std::string_view bytes);

// Appends `payload` to `out` as one record.
void AppendStateRecord(std::string& out, std::string_view payload);
// The record's header alone (length and checksum), for a writer that gathers the payload from
// where it is.
std::string StateRecordHeader(std::string_view payload);

struct StateRecords {
  std::vector<std::string_view> records;  // views into the file's bytes
  // Bytes after the last whole record (a write cut short by a kill), 0 if none.
  std::size_t dropped_tail = 0;
};
// The records of a file that starts with `magic`. An empty file has none; a file with another
// magic is an error.
Expected<StateRecords> ReadStateRecords(std::string_view file, std::string_view magic);

}  // namespace tern::ipc
