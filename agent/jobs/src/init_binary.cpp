#include "tern/jobs/init_binary.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <tern/errno_text.hpp>
#include <tern/unique_fd.hpp>

namespace tern::jobs {
namespace {

std::string Mode(mode_t mode) {
  std::array<char, 8> text{};
  std::snprintf(text.data(), text.size(), "%04o", static_cast<unsigned>(mode & 07777));
  return text.data();
}

// Writable by someone other than root: by its owner when that is not root, by its group when
// that is not root's, by others. A sticky directory (/tmp) lets nobody replace root's entries.
bool WritableByNonRoot(const struct stat& info) {
  if (info.st_uid != 0 && (info.st_mode & S_IWUSR) != 0) return true;
  const bool sticky_dir = S_ISDIR(info.st_mode) && (info.st_mode & S_ISVTX) != 0;
  if (sticky_dir) return false;
  if (info.st_gid != 0 && (info.st_mode & S_IWGRP) != 0) return true;
  return (info.st_mode & S_IWOTH) != 0;
}

bool SameBytes(int a, int b, off_t size) {
  std::array<char, 65536> left{};
  std::array<char, 65536> right{};
  off_t done = 0;
  while (done < size) {
    const auto want = static_cast<std::size_t>(std::min<off_t>(size - done, left.size()));
    if (::pread(a, left.data(), want, done) != static_cast<ssize_t>(want)) return false;
    if (::pread(b, right.data(), want, done) != static_cast<ssize_t>(want)) return false;
    if (std::memcmp(left.data(), right.data(), want) != 0) return false;
    done += static_cast<off_t>(want);
  }
  return true;
}

Expected<void> WriteAll(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t wrote = ::write(fd, data, size);
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote <= 0) return Fail(Errno("write"));
    data += wrote;
    size -= static_cast<std::size_t>(wrote);
  }
  return {};
}

// Copies `source` (open, described by `info`) to `dir`/tern-init through a temporary file.
Expected<void> CopyInto(int source, const struct stat& info, const std::string& dir) {
  const std::string final_path = dir + "/tern-init";
  const std::string temporary = dir + "/.tern-init." + std::to_string(::getpid());
  ::unlink(temporary.c_str());
  UniqueFd out(
      ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0700));
  if (!out.valid()) return Fail(Errno("cannot create " + temporary));
  std::array<char, 65536> buffer{};
  off_t offset = 0;
  while (offset < info.st_size) {
    const ssize_t got = ::pread(source, buffer.data(), buffer.size(), offset);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      ::unlink(temporary.c_str());
      return Fail(Errno("cannot read tern-init"));
    }
    if (auto wrote = WriteAll(out.get(), buffer.data(), static_cast<std::size_t>(got)); !wrote) {
      ::unlink(temporary.c_str());
      return Fail("cannot write " + temporary + ": " + wrote.error().message);
    }
    offset += got;
  }
  const std::array<timespec, 2> times = {info.st_atim, info.st_mtim};
  if (::fchown(out.get(), 0, 0) != 0 || ::fchmod(out.get(), 0755) != 0 ||
      ::futimens(out.get(), times.data()) != 0 || ::fsync(out.get()) != 0) {
    const std::string why = Errno("cannot finish " + temporary);
    ::unlink(temporary.c_str());
    return Fail(why);
  }
  out.Reset();
  if (::rename(temporary.c_str(), final_path.c_str()) != 0) {
    const std::string why = Errno("cannot rename " + temporary + " to " + final_path);
    ::unlink(temporary.c_str());
    return Fail(why);
  }
  UniqueFd directory(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (directory.valid()) ::fsync(directory.get());
  return {};
}

}  // namespace

std::string WhyOthersCannotRun(const std::string& path) {
  std::array<char, PATH_MAX> resolved{};
  if (::realpath(path.c_str(), resolved.data()) == nullptr) return Errno(path);
  const std::string real = resolved.data();
  struct stat info {};
  // Every directory from / down to the file's own.
  for (std::size_t slash = 0; slash != std::string::npos; slash = real.find('/', slash + 1)) {
    const std::string dir = slash == 0 ? "/" : real.substr(0, slash);
    if (::stat(dir.c_str(), &info) != 0) return Errno(dir);
    if ((info.st_mode & S_IXOTH) == 0) {
      return dir + " is mode " + Mode(info.st_mode) + ": other users cannot enter it";
    }
    if (WritableByNonRoot(info)) {
      return dir + " (mode " + Mode(info.st_mode) + ", owner uid " + std::to_string(info.st_uid) +
             ") can be written by users other than root";
    }
  }
  if (::stat(real.c_str(), &info) != 0) return Errno(real);
  if (!S_ISREG(info.st_mode)) return real + " is not a regular file";
  if ((info.st_mode & S_IXOTH) == 0) {
    return real + " is mode " + Mode(info.st_mode) + ": other users cannot execute it";
  }
  if (WritableByNonRoot(info)) {
    return real + " (mode " + Mode(info.st_mode) + ", owner uid " + std::to_string(info.st_uid) +
           ") can be written by users other than root";
  }
  return "";
}

Expected<InitPlacement> PlaceInit(const std::string& source, const std::string& state_dir) {
  UniqueFd in(::open(source.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in.valid())
    return Fail(Errno("tern-init not found at " + source + " (set [jobs] init_path)"));
  struct stat info {};
  if (::fstat(in.get(), &info) != 0 || !S_ISREG(info.st_mode)) {
    return Fail("tern-init at " + source + " is not a regular file");
  }
  InitPlacement placement;
  const std::string why_not_source = WhyOthersCannotRun(source);
  if (why_not_source.empty()) {
    placement.path = source;
    return placement;
  }

  const std::string dir = state_dir + "/libexec";
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return Fail(
        Errno("cannot create " + dir + " for a copy of tern-init (" + why_not_source + ")"));
  }
  struct stat dir_info {};
  if (::lstat(dir.c_str(), &dir_info) != 0 || !S_ISDIR(dir_info.st_mode)) {
    return Fail(dir + " is not a directory; tern-init cannot be copied there");
  }
  if ((dir_info.st_uid != 0 && ::chown(dir.c_str(), 0, 0) != 0) ||
      ::chmod(dir.c_str(), 0755) != 0) {
    return Fail(Errno("cannot make " + dir + " root's with mode 0755"));
  }
  placement.path = dir + "/tern-init";
  placement.copied = true;
  placement.why_copied = why_not_source;

  UniqueFd existing(::open(placement.path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
  struct stat existing_info {};
  const bool identical = existing.valid() && ::fstat(existing.get(), &existing_info) == 0 &&
                         S_ISREG(existing_info.st_mode) && existing_info.st_uid == 0 &&
                         (existing_info.st_mode & 07777) == 0755 &&
                         existing_info.st_size == info.st_size &&
                         existing_info.st_mtim.tv_sec == info.st_mtim.tv_sec &&
                         SameBytes(existing.get(), in.get(), info.st_size);
  existing.Reset();
  if (!identical) {
    if (auto copied = CopyInto(in.get(), info, dir); !copied) {
      return Fail("tern-init at " + source + " cannot be run by other users (" + why_not_source +
                  ") and copying it failed: " + copied.error().message);
    }
  }
  placement.problem = WhyOthersCannotRun(placement.path);
  placement.others_can_run = placement.problem.empty();
  return placement;
}

}  // namespace tern::jobs
