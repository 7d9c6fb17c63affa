#include "tern/remove_tree.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <tern/unique_fd.hpp>
#include <vector>

namespace tern {
namespace {

constexpr int kMaxDepth = 256;  // deeper than any job writes; bounds the recursion

// Empties the directory open as `dir_fd` (the fd is consumed). `where` names it for errors.
void EmptyDirectory(UniqueFd dir_fd, const std::string& where, dev_t device, int depth,
                    std::string& problem) {
  auto note = [&problem](const std::string& text) {
    if (problem.empty()) problem = text;
  };
  if (depth > kMaxDepth) {
    note("cannot remove " + where + ": nested too deeply");
    return;
  }
  // fdopendir takes the fd; a duplicate stays ours for the *at calls.
  UniqueFd listing(::fcntl(dir_fd.get(), F_DUPFD_CLOEXEC, 0));
  if (!listing.valid()) {
    note("cannot list " + where + ": " + std::strerror(errno));
    return;
  }
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::fdopendir(listing.get()), ::closedir);
  if (!dir) {
    note("cannot list " + where + ": " + std::strerror(errno));
    return;
  }
  listing.Release();
  std::vector<std::string> names;
  while (dirent* entry = ::readdir(dir.get())) {
    const std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  for (const std::string& name : names) {
    const std::string path = where + "/" + name;
    struct stat info {};
    if (::fstatat(dir_fd.get(), name.c_str(), &info, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno != ENOENT) note("cannot stat " + path + ": " + std::strerror(errno));
      continue;
    }
    if (S_ISDIR(info.st_mode)) {
      if (info.st_dev != device) {
        note("cannot remove " + path + ": a mount point");
        continue;
      }
      UniqueFd child(
          ::openat(dir_fd.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (child.valid()) {
        struct stat opened {};
        // The entry may have been swapped between fstatat and openat: only the directory we
        // opened is walked, and only if it is on the same file system.
        if (::fstat(child.get(), &opened) == 0 && opened.st_dev == device) {
          EmptyDirectory(std::move(child), path, device, depth + 1, problem);
        }
      }
      if (::unlinkat(dir_fd.get(), name.c_str(), AT_REMOVEDIR) == 0 || errno == ENOENT) continue;
      // A directory swapped for a link or a file since fstatat: remove it as what it is now.
      if ((errno == ENOTDIR || errno == ELOOP) && ::unlinkat(dir_fd.get(), name.c_str(), 0) == 0) {
        continue;
      }
      note("cannot remove " + path + ": " + std::strerror(errno));
      continue;
    }
    if (::unlinkat(dir_fd.get(), name.c_str(), 0) == 0 || errno == ENOENT) continue;
    if (errno == EISDIR) {  // a file swapped for a directory since fstatat: walk it next time
      UniqueFd child(
          ::openat(dir_fd.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      struct stat opened {};
      if (child.valid() && ::fstat(child.get(), &opened) == 0 && opened.st_dev == device) {
        EmptyDirectory(std::move(child), path, device, depth + 1, problem);
        if (::unlinkat(dir_fd.get(), name.c_str(), AT_REMOVEDIR) == 0) continue;
      }
    }
    note("cannot remove " + path + ": " + std::strerror(errno));
  }
}

}  // namespace

Expected<void> RemoveTreeNoFollow(const std::string& path) {
  std::string trimmed = path;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  if (trimmed.empty() || trimmed == "/") return Fail("refusing to remove '" + path + "'");
  const auto slash = trimmed.rfind('/');
  const std::string parent =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : trimmed.substr(0, slash));
  const std::string name = slash == std::string::npos ? trimmed : trimmed.substr(slash + 1);
  if (name == "." || name == "..") return Fail("refusing to remove '" + path + "'");
  UniqueFd parent_fd(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!parent_fd.valid()) {
    if (errno == ENOENT) return {};
    return Fail("cannot open " + parent + ": " + std::strerror(errno));
  }
  struct stat info {};
  if (::fstatat(parent_fd.get(), name.c_str(), &info, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return {};
    return Fail("cannot stat " + trimmed + ": " + std::strerror(errno));
  }
  std::string problem;
  if (S_ISDIR(info.st_mode)) {
    UniqueFd dir(
        ::openat(parent_fd.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    struct stat opened {};
    if (dir.valid() && ::fstat(dir.get(), &opened) == 0) {
      EmptyDirectory(std::move(dir), trimmed, opened.st_dev, 0, problem);
    }
    if (::unlinkat(parent_fd.get(), name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT &&
        problem.empty()) {
      problem = "cannot remove " + trimmed + ": " + std::strerror(errno);
    }
  } else if (::unlinkat(parent_fd.get(), name.c_str(), 0) != 0 && errno != ENOENT) {
    problem = "cannot remove " + trimmed + ": " + std::strerror(errno);
  }
  if (!problem.empty()) return Fail(problem);
  return {};
}

}  // namespace tern
