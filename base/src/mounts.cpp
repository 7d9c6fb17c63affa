#include "tern/mounts.hpp"

#include <linux/magic.h>
#include <sys/vfs.h>

namespace tern {

bool OnTmpfs(const std::string& path) {
  struct statfs info {};
  return ::statfs(path.c_str(), &info) == 0 && info.f_type == TMPFS_MAGIC;
}

}  // namespace tern
