#include "tern/migrate/image_dir.hpp"

#include <sys/mount.h>
#include <sys/vfs.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tern/remove_tree.hpp>
#include <vector>

namespace tern::migrate {
namespace {

// A path as /proc/self/mountinfo writes it: space, tab, newline and backslash as \ooo.
std::string Unescape(const std::string& field) {
  std::string path;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size()) {
      path += static_cast<char>(std::stoi(field.substr(i + 1, 3), nullptr, 8));
      i += 3;
    } else {
      path += field[i];
    }
  }
  return path;
}

// The mount points at or under `dir`, deepest first.
std::vector<std::string> MountsUnder(const std::string& dir) {
  std::vector<std::string> found;
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mountinfo, line)) {
    std::istringstream fields(line);
    std::string id, parent, device, root, point;
    if (!(fields >> id >> parent >> device >> root >> point)) continue;
    const std::string path = Unescape(point);
    if (path == dir || path.rfind(dir + "/", 0) == 0) found.push_back(path);
  }
  std::sort(found.begin(), found.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  return found;
}

}  // namespace

Expected<void> MountImageTmpfs(const std::string& dir, std::uint64_t bytes) {
  // mode=0700: the images hold the job's memory; only root (CRIU, the agent) reads them.
  const std::string options = "mode=0700,size=" + std::to_string(bytes);
  if (::mount("tern-images", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              options.c_str()) != 0) {
    return Fail("cannot mount a tmpfs on " + dir + ": " + std::strerror(errno));
  }
  return {};
}

void RemoveImageTree(const std::string& dir) {
  if (dir.empty()) return;
  // mountinfo names mount points by absolute paths with symbolic links resolved.
  std::error_code error;
  std::string normal = std::filesystem::weakly_canonical(dir, error).string();
  while (normal.size() > 1 && normal.back() == '/') normal.pop_back();
  // Never the root (every mount is under it), nor a path we cannot name as mountinfo does.
  if (error || normal.size() <= 1 || normal.front() != '/') return;
  for (const auto& point : MountsUnder(normal)) ::umount2(point.c_str(), MNT_DETACH);
  (void)RemoveTreeNoFollow(normal);
}

}  // namespace tern::migrate
