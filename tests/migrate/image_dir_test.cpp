// The pre-copy image directory on a tmpfs: mounted, then removed with its mount. Needs root for
// mount(2); it runs in a child with a private mount namespace, so nothing leaks to the host.
#include "tern/migrate/image_dir.hpp"

#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

namespace tern::migrate {
namespace {
namespace fs = std::filesystem;

// Runs `body` in a child in its own mount namespace; its exit code: 0 passed, 77 no namespace.
int InPrivateMountNamespace(const std::function<int()>& body) {
  const pid_t child = ::fork();
  if (child == 0) {
    if (::unshare(CLONE_NEWNS) != 0 ||
        ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr)) {
      ::_exit(77);
    }
    ::_exit(body());
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

TEST(ImageDirTest, MountsATmpfsAndRemovesItWithTheTree) {
  const fs::path root = fs::temp_directory_path() / ("tern-images-" + std::to_string(getpid()));
  const int result = InPrivateMountNamespace([&] {
    const fs::path images = root / "mid" / "images";
    fs::create_directories(images);
    if (!MountImageTmpfs(images.string(), 1 << 20)) return 4;
    if (!OnTmpfs(images.string())) return 2;
    std::ofstream(images / "pages-1.img") << "pages";
    RemoveImageTree(root.string());
    return fs::exists(root) ? 3 : 0;
  });
  // Not a skip: without root (mount(2), unshare) this test cannot run and says so.
  EXPECT_EQ(result, 0) << "77: cannot make a private mount namespace (needs root), 4: cannot "
                          "mount a tmpfs (needs root), 2: not a tmpfs, 3: the tree is still there";
  fs::remove_all(root);
}

TEST(ImageDirTest, NeverRemovesTheRootOrAnEmptyPath) {
  RemoveImageTree("");
  RemoveImageTree("/");
  RemoveImageTree("//");
  EXPECT_TRUE(fs::exists("/proc/self"));
}

TEST(ImageDirTest, RemovesAPlainDirectory) {
  const fs::path root = fs::temp_directory_path() / ("tern-plain-" + std::to_string(getpid()));
  fs::create_directories(root / "images");
  std::ofstream(root / "images" / "pages-1.img") << "pages";
  RemoveImageTree(root.string());
  EXPECT_FALSE(fs::exists(root));
}

}  // namespace
}  // namespace tern::migrate
