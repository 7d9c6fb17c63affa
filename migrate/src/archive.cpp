#include "tern/migrate/archive.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <optional>
#include <string_view>
#include <tern/unique_fd.hpp>
#include <vector>

namespace tern::migrate {
namespace fs = std::filesystem;
using tern::UniqueFd;
namespace {

void PutU32(std::string& out, std::uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(value >> shift));
}
void PutU64(std::string& out, std::uint64_t value) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>(value >> shift));
}
bool GetUint(const std::string& in, size_t& offset, int bytes, std::uint64_t& value) {
  if (in.size() - offset < static_cast<size_t>(bytes)) return false;
  value = 0;
  for (int i = 0; i < bytes; ++i) value = value << 8 | static_cast<unsigned char>(in[offset++]);
  return true;
}

// Appends what fd holds (`expected` bytes, unless it changes meanwhile) to out, stopping once
// out is longer than `cap`; false on a read error.
bool AppendAll(int fd, std::string& out, std::uint64_t expected, std::uint64_t cap) {
  const size_t start = out.size();
  out.resize(start + expected);
  size_t have = 0;
  while (start + have <= cap) {
    if (have == out.size() - start) out.resize(out.size() + 65536);  // it grew meanwhile
    const ssize_t n = ::read(fd, out.data() + start + have, out.size() - start - have);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) break;
    have += static_cast<size_t>(n);
  }
  out.resize(start + have);
  return true;
}

bool WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

Expected<std::string> PackDirectory(const std::string& dir, const std::set<std::string>& skip,
                                    std::uint64_t max_bytes) {
  // Checkpoint images are megabytes and sit in the job's freeze: read each file once, straight
  // into the archive.
  struct Entry {
    std::string path, relative;
    std::uint64_t size;
  };
  std::vector<Entry> entries;
  std::uint64_t total = 0;
  std::error_code error;
  std::string prefix = fs::path(dir).string();
  if (!prefix.empty() && prefix.back() != '/') prefix += '/';
  for (const auto& entry : fs::recursive_directory_iterator(dir, error)) {
    if (!entry.is_regular_file()) continue;
    std::string path = entry.path().string();
    std::string relative = path.compare(0, prefix.size(), prefix) == 0
                               ? path.substr(prefix.size())
                               : fs::relative(entry.path(), dir).string();
    if (skip.count(relative) != 0) continue;
    std::error_code size_error;
    const std::uint64_t size = entry.file_size(size_error);
    total += (size_error ? 0 : size) + relative.size() + 16;
    entries.push_back({std::move(path), std::move(relative), size_error ? 0 : size});
  }
  if (error) return Fail("cannot list " + dir + ": " + error.message());
  std::string out;
  out.reserve(std::min<std::uint64_t>(total, max_bytes) + 4096);
  for (const auto& entry : entries) {
    const UniqueFd fd(::open(entry.path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return Fail("cannot read " + entry.path);
    struct stat info {};
    ::fstat(fd.get(), &info);
    if (out.size() + static_cast<std::uint64_t>(info.st_size) > max_bytes) {
      return Fail(dir + " holds more than " + std::to_string(max_bytes >> 20) +
                  " MiB to carry with the job");
    }
    PutU32(out, static_cast<std::uint32_t>(entry.relative.size()));
    out += entry.relative;
    const size_t size_at = out.size();
    PutU64(out, 0);
    PutU32(out, info.st_mode & 07777);
    const size_t data_at = out.size();
    if (!AppendAll(fd.get(), out, static_cast<std::uint64_t>(info.st_size), max_bytes))
      return Fail("cannot read " + entry.path);
    const std::uint64_t size = out.size() - data_at;
    if (out.size() > max_bytes) {
      return Fail(dir + " holds more than " + std::to_string(max_bytes >> 20) +
                  " MiB to carry with the job");
    }
    for (int i = 0; i < 8; ++i) out[size_at + i] = static_cast<char>(size >> (56 - 8 * i));
  }
  return out;
}

namespace {

struct ArchiveEntry {
  std::string relative;
  std::uint64_t mode = 0;
  std::string_view bytes;
};

// Calls visit(entry) for each file of the archive in order; stops at the first error, from
// the archive or from visit.
template <typename Visit>
Expected<void> ForEachEntry(const std::string& archive, Visit visit) {
  size_t offset = 0;
  while (offset < archive.size()) {
    std::uint64_t path_length = 0, size = 0;
    ArchiveEntry entry;
    if (!GetUint(archive, offset, 4, path_length) || archive.size() - offset < path_length) {
      return Fail("archive truncated");
    }
    entry.relative = archive.substr(offset, path_length);
    offset += path_length;
    if (!GetUint(archive, offset, 8, size) || !GetUint(archive, offset, 4, entry.mode) ||
        archive.size() - offset < size) {
      return Fail("archive truncated");
    }
    entry.bytes = std::string_view(archive).substr(offset, size);
    offset += size;
    if (auto visited = visit(entry); !visited) return visited;
  }
  return {};
}

}  // namespace

Expected<std::uint64_t> UnpackDirectory(const std::string& archive, const std::string& dir,
                                        uid_t uid, gid_t gid, const std::set<std::string>& skip) {
  std::uint64_t written = 0;
  std::string made;  // the last directory known to exist
  auto unpacked = ForEachEntry(archive, [&](const ArchiveEntry& entry) -> Expected<void> {
    const fs::path path(entry.relative);
    if (entry.relative.empty() || path.is_absolute() ||
        std::any_of(path.begin(), path.end(), [](const fs::path& part) { return part == ".."; })) {
      return Fail("archive holds an unsafe path: " + entry.relative);
    }
    if (skip.count(entry.relative) != 0) return {};
    const fs::path target = fs::path(dir) / path;
    if (target.parent_path().string() != made) {
      std::error_code error;
      fs::create_directories(target.parent_path(), error);
      made = target.parent_path().string();
    }
    const UniqueFd fd(::open(target.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd.valid()) return Fail("cannot write " + target.string());
    const bool ok = WriteAll(fd.get(), entry.bytes.data(), entry.bytes.size()) &&
                    ::fchmod(fd.get(), static_cast<mode_t>(entry.mode)) == 0;
    const bool owned = uid == static_cast<uid_t>(-1) || ::fchown(fd.get(), uid, gid) == 0;
    if (!ok) return Fail("cannot write " + target.string());
    if (!owned) return Fail("cannot chown " + target.string());
    written += entry.bytes.size();
    return {};
  });
  if (!unpacked) return Unexpected<Error>{unpacked.error()};
  return written;
}

Expected<std::string> ArchivedFile(const std::string& archive, const std::string& relative) {
  std::optional<std::string> found;
  auto scanned = ForEachEntry(archive, [&](const ArchiveEntry& entry) -> Expected<void> {
    if (entry.relative == relative) found = std::string(entry.bytes);
    return {};
  });
  if (!scanned) return Unexpected<Error>{scanned.error()};
  if (!found) return Fail("the archive holds no " + relative);
  return std::move(*found);
}

}  // namespace tern::migrate
