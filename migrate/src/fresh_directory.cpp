#include "tern/migrate/fresh_directory.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "tern/migrate/archive.hpp"
#include <tern/remove_tree.hpp>

namespace tern::migrate {

Expected<void> UnpackIntoFreshDirectory(const std::string& archive, const std::string& dir,
                                        uid_t uid, gid_t gid, mode_t mode) {
  std::string trimmed = dir;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  const auto slash = trimmed.rfind('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == trimmed.size()) {
    return Fail("bad job directory '" + dir + "'");
  }
  const std::string parent = trimmed.substr(0, slash);
  std::error_code error;
  std::filesystem::create_directories(parent, error);
  std::string fresh = parent + "/." + trimmed.substr(slash + 1) + ".incoming-XXXXXX";
  if (::mkdtemp(fresh.data()) == nullptr) {
    return Fail("cannot create a directory in " + parent + ": " + std::strerror(errno));
  }
  auto fail = [&fresh](const std::string& message) -> Expected<void> {
    (void)RemoveTreeNoFollow(fresh);
    return Fail(message);
  };
  auto files = UnpackDirectory(archive, fresh, uid, gid);
  if (!files) return fail(files.error().message);
  if (::chown(fresh.c_str(), uid, gid) != 0 || ::chmod(fresh.c_str(), mode) != 0) {
    return fail("cannot prepare " + trimmed + ": " + std::strerror(errno));
  }
  if (auto removed = RemoveTreeNoFollow(trimmed); !removed) {
    return fail("cannot replace the old " + trimmed + ": " + removed.error().message);
  }
  if (::renameat2(AT_FDCWD, fresh.c_str(), AT_FDCWD, trimmed.c_str(), RENAME_NOREPLACE) != 0) {
    return fail("cannot move the unpacked directory to " + trimmed + ": " + std::strerror(errno));
  }
  return {};
}

}  // namespace tern::migrate
