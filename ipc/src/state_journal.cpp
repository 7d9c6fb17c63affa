#include <array>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/state_journal.hpp>

namespace tern::ipc {

namespace {

constexpr std::size_t kRecordHeader = 8;

// The reflected Castagnoli polynomial's table, made once at compile time.
constexpr std::array<std::uint32_t, 256> MakeCrcTable() {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) ? (crc >> 1) ^ 0x82f63b78u : crc >> 1;
    table[i] = crc;
  }
  return table;
}
constexpr auto kCrcTable = MakeCrcTable();

}  // namespace

std::uint32_t Crc32c(std::string_view bytes) {
  std::uint32_t crc = 0xffffffffu;
  for (const char c : bytes) {
    crc = kCrcTable[(crc ^ static_cast<unsigned char>(c)) & 0xffu] ^ (crc >> 8);
  }
  return crc ^ 0xffffffffu;
}

std::string StateRecordHeader(std::string_view payload) {
  std::string header;
  AppendBigEndian(header, static_cast<std::uint32_t>(payload.size()));
  AppendBigEndian(header, Crc32c(payload));
  return header;
}

void AppendStateRecord(std::string& out, std::string_view payload) {
  out.append(StateRecordHeader(payload));
  out.append(payload);
}

Expected<StateRecords> ReadStateRecords(std::string_view file, std::string_view magic) {
  StateRecords read;
  if (file.empty()) return read;
  if (file.size() < magic.size() || file.substr(0, magic.size()) != magic) {
    return Fail("not a tern IPC state file (its first bytes are not " + std::string(magic) + ")");
  }
  std::string_view rest = file.substr(magic.size());
  while (!rest.empty()) {
    if (rest.size() < kRecordHeader) break;
    const std::uint32_t length = LoadBigEndian<std::uint32_t>(rest.data());
    const std::uint32_t crc = LoadBigEndian<std::uint32_t>(rest.data() + 4);
    if (length > kMaxStateRecord) {
      return Fail("a record of " + std::to_string(length) + " bytes at byte " +
                  std::to_string(file.size() - rest.size()) + " is over the limit");
    }
    if (rest.size() - kRecordHeader < length) break;
    const std::string_view payload = rest.substr(kRecordHeader, length);
    if (Crc32c(payload) != crc) break;
    read.records.push_back(payload);
    rest.remove_prefix(kRecordHeader + length);
  }
  read.dropped_tail = rest.size();
  return read;
}

}  // namespace tern::ipc
