#include "tern/safe_open.hpp"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <vector>

namespace tern {
namespace {

Error OpenError(const std::string& relative, int error) {
  return Error{"cannot open " + relative + ": " + std::strerror(error)};
}

// The fallback for kernels before 5.6: every directory component is opened with O_NOFOLLOW,
// so a symlink anywhere on the path fails with ELOOP (or ENOTDIR) instead of being followed.
Expected<UniqueFd> OpenStepByStep(int dir_fd, const std::string& relative, int flags, mode_t mode) {
  std::vector<std::string> parts;
  std::stringstream path(relative);
  for (std::string part; std::getline(path, part, '/');) {
    if (part.empty() || part == ".") continue;
    if (part == "..") return Unexpected<Error>{OpenError(relative, EXDEV)};
    parts.push_back(part);
  }
  if (parts.empty()) return Unexpected<Error>{OpenError(relative, EINVAL)};
  UniqueFd current;
  int base = dir_fd;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    UniqueFd next(
        ::openat(base, parts[i].c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!next.valid() && errno == ENOENT && (flags & O_CREAT) == 0) return UniqueFd();
    if (!next.valid()) return Unexpected<Error>{OpenError(relative, errno)};
    current = std::move(next);
    base = current.get();
  }
  UniqueFd last(::openat(base, parts.back().c_str(), flags, mode));
  if (!last.valid() && errno == ENOENT && (flags & O_CREAT) == 0) return UniqueFd();
  if (!last.valid()) return Unexpected<Error>{OpenError(relative, errno)};
  return last;
}

}  // namespace

Expected<UniqueFd> OpenDirectoryNoFollow(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return Fail("cannot open directory " + path + ": " + std::strerror(errno));
  return fd;
}

Expected<UniqueFd> OpenBeneath(int dir_fd, const std::string& relative, int flags, mode_t mode) {
  if (relative.empty() || relative.front() == '/') {
    return Unexpected<Error>{OpenError(relative, EXDEV)};
  }
  // O_PATH takes no other flags under openat2 (EINVAL); it opens nothing that could block.
  flags |= O_CLOEXEC | O_NOFOLLOW | ((flags & O_PATH) != 0 ? 0 : O_NONBLOCK);
  open_how how{};
  how.flags = static_cast<std::uint64_t>(flags);
  how.mode = (flags & (O_CREAT | O_TMPFILE)) != 0 ? mode : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  long fd;
  do {
    fd = ::syscall(SYS_openat2, dir_fd, relative.c_str(), &how, sizeof how);
  } while (fd < 0 && (errno == EINTR || errno == EAGAIN));
  if (fd >= 0) return UniqueFd(static_cast<int>(fd));
  if (errno == ENOSYS) return OpenStepByStep(dir_fd, relative, flags, mode);
  if (errno == ENOENT && (flags & O_CREAT) == 0) return UniqueFd();
  return Unexpected<Error>{OpenError(relative, errno)};
}

Expected<UniqueFd> OpenRegularBeneath(int dir_fd, const std::string& relative, int flags,
                                      mode_t mode) {
  auto fd = OpenBeneath(dir_fd, relative, flags, mode);
  if (!fd || !fd->valid()) return fd;
  struct stat info {};
  if (::fstat(fd->get(), &info) != 0) return Unexpected<Error>{OpenError(relative, errno)};
  if (!S_ISREG(info.st_mode)) return Fail("cannot open " + relative + ": not a regular file");
  const int status = ::fcntl(fd->get(), F_GETFL);
  if (status >= 0) ::fcntl(fd->get(), F_SETFL, status & ~O_NONBLOCK);
  return fd;
}

}  // namespace tern
