#include "tern/migrate/archive.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace tern::migrate {
namespace {
namespace fs = std::filesystem;

std::string Read(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

TEST(ArchiveTest, RoundTripKeepsFilesAndSkipsWhatIsAsked) {
  const fs::path root = fs::temp_directory_path() / ("tern-archive-" + std::to_string(getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "in" / "sub");
  std::ofstream(root / "in" / "a.img", std::ios::binary) << std::string("\0\1\2", 3);
  std::ofstream(root / "in" / "sub" / "b") << "hello";
  std::ofstream(root / "in" / "skip.log") << "noise";
  auto packed = PackDirectory((root / "in").string(), {"skip.log"}, 1 << 20);
  ASSERT_TRUE(packed) << packed.error().message;
  auto written = UnpackDirectory(*packed, (root / "out").string());
  ASSERT_TRUE(written) << written.error().message;
  EXPECT_EQ(*written, 8u);
  EXPECT_EQ(Read(root / "out" / "a.img"), std::string("\0\1\2", 3));
  EXPECT_EQ(Read(root / "out" / "sub" / "b"), "hello");
  EXPECT_FALSE(fs::exists(root / "out" / "skip.log"));
  EXPECT_FALSE(PackDirectory((root / "in").string(), {}, 4)) << "over the size limit";
  fs::remove_all(root);
}

TEST(ArchiveTest, HoldsBackSkippedFilesAndReadsOneFile) {
  const fs::path root =
      fs::temp_directory_path() / ("tern-archive-held-" + std::to_string(getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "in");
  std::ofstream(root / "in" / "inventory.img") << "inventory";
  std::ofstream(root / "in" / "pstree.img") << "tree";
  auto packed = PackDirectory((root / "in").string(), {}, 1 << 20);
  ASSERT_TRUE(packed) << packed.error().message;
  auto written = UnpackDirectory(*packed, (root / "out").string(), static_cast<uid_t>(-1),
                                 static_cast<gid_t>(-1), {"inventory.img"});
  ASSERT_TRUE(written) << written.error().message;
  EXPECT_EQ(*written, 4u);
  EXPECT_FALSE(fs::exists(root / "out" / "inventory.img"));
  EXPECT_EQ(Read(root / "out" / "pstree.img"), "tree");
  auto inventory = ArchivedFile(*packed, "inventory.img");
  ASSERT_TRUE(inventory) << inventory.error().message;
  EXPECT_EQ(*inventory, "inventory");
  EXPECT_FALSE(ArchivedFile(*packed, "missing.img"));
  fs::remove_all(root);
}

TEST(ArchiveTest, RefusesPathsOutsideTheDestinationAndTruncation) {
  auto entry = [](const std::string& path) {
    std::string out;
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(char(path.size() >> shift));
    out += path;
    out += std::string(7, '\0') + '\1';    // size 1
    out += std::string(3, '\0') + '\x44';  // mode
    out += "x";
    return out;
  };
  const std::string dir =
      fs::temp_directory_path() / ("tern-archive-bad-" + std::to_string(getpid()));
  EXPECT_FALSE(UnpackDirectory(entry("../escape"), dir));
  EXPECT_FALSE(UnpackDirectory(entry("/etc/passwd-tern"), dir));
  EXPECT_FALSE(UnpackDirectory(entry("ok").substr(0, 9), dir));
  EXPECT_FALSE(fs::exists(fs::path(dir).parent_path() / "escape"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tern::migrate
