#include "tern/migrate/archive.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string_view>
#include <tern/big_endian.hpp>
#include <tern/safe_open.hpp>
#include <tern/unique_fd.hpp>
#include <vector>

namespace tern::migrate {
namespace fs = std::filesystem;
using tern::UniqueFd;
namespace {

void PutU32(std::string& out, std::uint32_t value) { AppendBigEndian(out, value); }
void PutU64(std::string& out, std::uint64_t value) { AppendBigEndian(out, value); }
// A u32 (bytes 4) or u64 (bytes 8) at `offset`, which it advances.
bool GetUint(const std::string& in, size_t& offset, int bytes, std::uint64_t& value) {
  if (in.size() - offset < static_cast<size_t>(bytes)) return false;
  value = bytes == 4 ? LoadBigEndian<std::uint32_t>(in.data() + offset)
                     : LoadBigEndian<std::uint64_t>(in.data() + offset);
  offset += static_cast<size_t>(bytes);
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
  // into the archive. A job directory is its user's: a symlink there is carried as a symlink
  // (root never reads through it) and files are opened below `dir` without following links.
  struct Entry {
    std::string relative;
    bool link;
  };
  auto root = OpenDirectoryNoFollow(dir);
  if (!root) return Unexpected<Error>{root.error()};
  std::vector<Entry> entries;
  std::uint64_t total = 0;
  std::error_code error;
  std::string prefix = fs::path(dir).string();
  if (!prefix.empty() && prefix.back() != '/') prefix += '/';
  for (const auto& entry : fs::recursive_directory_iterator(dir, error)) {
    std::error_code status_error;
    const auto status = entry.symlink_status(status_error);
    const bool link = fs::is_symlink(status);
    if (status_error || (!link && !fs::is_regular_file(status))) continue;
    std::string path = entry.path().string();
    std::string relative = path.compare(0, prefix.size(), prefix) == 0
                               ? path.substr(prefix.size())
                               : fs::relative(entry.path(), dir).string();
    if (skip.count(relative) != 0) continue;
    std::error_code size_error;
    const std::uint64_t size = link ? 0 : entry.file_size(size_error);
    total += (size_error ? 0 : size) + relative.size() + 16;
    entries.push_back({std::move(relative), link});
  }
  if (error) return Fail("cannot list " + dir + ": " + error.message());
  std::string out;
  out.reserve(std::min<std::uint64_t>(total, max_bytes) + 4096);
  auto too_big = [&] {
    return Fail(dir + " holds more than " + std::to_string(max_bytes >> 20) +
                " MiB to carry with the job");
  };
  for (const auto& entry : entries) {
    if (entry.link) {
      auto fd = OpenBeneath(root->get(), entry.relative, O_PATH);
      if (!fd) return Fail("cannot pack " + dir + ": " + fd.error().message);
      if (!fd->valid()) continue;  // removed meanwhile
      std::string target(PATH_MAX, '\0');
      const ssize_t n = ::readlinkat(fd->get(), "", target.data(), target.size());
      if (n < 0) continue;  // no longer a symlink: it changed meanwhile
      target.resize(static_cast<size_t>(n));
      if (out.size() + target.size() + entry.relative.size() + 16 > max_bytes) return too_big();
      PutU32(out, static_cast<std::uint32_t>(entry.relative.size()));
      out += entry.relative;
      PutU64(out, target.size());
      PutU32(out, S_IFLNK | 0777);
      out += target;
      continue;
    }
    auto fd = OpenRegularBeneath(root->get(), entry.relative, O_RDONLY);
    if (!fd) return Fail("cannot pack " + dir + ": " + fd.error().message);
    if (!fd->valid()) continue;  // removed meanwhile
    struct stat info {};
    ::fstat(fd->get(), &info);
    if (out.size() + static_cast<std::uint64_t>(info.st_size) > max_bytes) return too_big();
    PutU32(out, static_cast<std::uint32_t>(entry.relative.size()));
    out += entry.relative;
    const size_t size_at = out.size();
    PutU64(out, 0);
    PutU32(out, info.st_mode & 07777);
    const size_t data_at = out.size();
    if (!AppendAll(fd->get(), out, static_cast<std::uint64_t>(info.st_size), max_bytes))
      return Fail("cannot read " + dir + "/" + entry.relative);
    const std::uint64_t size = out.size() - data_at;
    if (out.size() > max_bytes) return too_big();
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

namespace {

// `name` as it can go into a message: bytes outside printable ASCII as \xNN (an archive's names
// are the job's user's choice, NULs and terminal escapes included).
std::string Printable(std::string_view name) {
  std::string out;
  for (const unsigned char c : name.substr(0, 256)) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      constexpr char kHex[] = "0123456789abcdef";
      out += {'\\', 'x', kHex[c >> 4], kHex[c & 15]};
    }
  }
  return out;
}

// Opens (creating what is missing) the directory `relative` below `root` one component at a
// time with O_NOFOLLOW: a symlink or a non-directory in the way is refused, never followed.
Expected<UniqueFd> MakeDirectoriesBeneath(int root, const fs::path& relative, uid_t uid,
                                          gid_t gid) {
  UniqueFd current(::fcntl(root, F_DUPFD_CLOEXEC, 0));
  for (const auto& part : relative) {
    if (part.empty() || part == ".") continue;
    const bool made = ::mkdirat(current.get(), part.c_str(), 0700) == 0;
    UniqueFd next(
        ::openat(current.get(), part.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!next.valid()) {
      return Fail("cannot enter " + relative.string() + ": " + std::strerror(errno) +
                  " (a symlink or a file is in the way)");
    }
    if (made && uid != static_cast<uid_t>(-1) && ::fchown(next.get(), uid, gid) != 0) {
      return Fail("cannot chown " + relative.string() + ": " + std::strerror(errno));
    }
    current = std::move(next);
  }
  return current;
}

Expected<void> WriteLink(int parent, const std::string& name, const std::string& target,
                         const std::string& relative, uid_t uid, gid_t gid) {
  if (::symlinkat(target.c_str(), parent, name.c_str()) != 0) {
    struct stat info {};
    // Replacing a symlink by a symlink writes through nothing; anything else stays.
    if (errno != EEXIST || ::fstatat(parent, name.c_str(), &info, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISLNK(info.st_mode) || ::unlinkat(parent, name.c_str(), 0) != 0 ||
        ::symlinkat(target.c_str(), parent, name.c_str()) != 0) {
      return Fail("cannot create the symlink " + relative + ": " + std::strerror(errno));
    }
  }
  if (uid != static_cast<uid_t>(-1) &&
      ::fchownat(parent, name.c_str(), uid, gid, AT_SYMLINK_NOFOLLOW) != 0) {
    return Fail("cannot chown the symlink " + relative + ": " + std::strerror(errno));
  }
  return {};
}

Expected<void> WriteFile(int parent, const std::string& name, const ArchiveEntry& entry, uid_t uid,
                         gid_t gid) {
  // No O_TRUNC before the checks: what is in the way must be a plain file with one name.
  UniqueFd fd(::openat(parent, name.c_str(),
                       O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    return Fail("cannot write " + entry.relative + ": " + std::strerror(errno) +
                (errno == ELOOP ? " (a symlink is in the way)" : ""));
  }
  struct stat info {};
  if (::fstat(fd.get(), &info) != 0 || !S_ISREG(info.st_mode) || info.st_nlink != 1) {
    return Fail("cannot write " + entry.relative +
                ": something other than a plain file is in "
                "the way");
  }
  const bool ok = ::ftruncate(fd.get(), 0) == 0 &&
                  WriteAll(fd.get(), entry.bytes.data(), entry.bytes.size()) &&
                  ::fchmod(fd.get(), static_cast<mode_t>(entry.mode & 07777)) == 0;
  if (!ok) return Fail("cannot write " + entry.relative + ": " + std::strerror(errno));
  if (uid != static_cast<uid_t>(-1) && ::fchown(fd.get(), uid, gid) != 0) {
    return Fail("cannot chown " + entry.relative + ": " + std::strerror(errno));
  }
  return {};
}

}  // namespace

Expected<std::uint64_t> UnpackDirectory(const std::string& archive, const std::string& dir,
                                        uid_t uid, gid_t gid, const std::set<std::string>& skip) {
  std::error_code ignored;
  fs::create_directories(dir, ignored);
  auto root = OpenDirectoryNoFollow(dir);
  if (!root) return Unexpected<Error>{root.error()};
  std::uint64_t written = 0;
  fs::path parent_path;  // of the last entry, open as parent_fd
  UniqueFd parent_fd;
  auto unpacked = ForEachEntry(archive, [&](const ArchiveEntry& entry) -> Expected<void> {
    const fs::path path(entry.relative);
    // A NUL would end the name for the kernel after the checks below saw the whole string.
    if (entry.relative.empty() || entry.relative.find('\0') != std::string::npos ||
        path.is_absolute() || !path.has_filename() ||
        std::any_of(path.begin(), path.end(),
                    [](const fs::path& part) { return part == ".." || part == "."; })) {
      return Fail("archive holds an unsafe path: " + Printable(entry.relative));
    }
    if (skip.count(entry.relative) != 0) return {};
    if (!parent_fd.valid() || path.parent_path() != parent_path) {
      auto opened = MakeDirectoriesBeneath(root->get(), path.parent_path(), uid, gid);
      if (!opened) return Unexpected<Error>{opened.error()};
      parent_fd = std::move(*opened);
      parent_path = path.parent_path();
    }
    const std::string name = path.filename().string();
    if ((entry.mode & S_IFMT) == S_IFLNK) {
      if (entry.bytes.find('\0') != std::string_view::npos) {
        return Fail("archive holds a symlink whose target has a NUL: " + Printable(entry.relative));
      }
      return WriteLink(parent_fd.get(), name, std::string(entry.bytes), entry.relative, uid, gid);
    }
    if (auto done = WriteFile(parent_fd.get(), name, entry, uid, gid); !done) return done;
    written += entry.bytes.size();
    return {};
  });
  if (!unpacked) return Fail("cannot unpack into " + dir + ": " + unpacked.error().message);
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
