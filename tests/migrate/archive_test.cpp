#include "tern/migrate/archive.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
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
  // A NUL ends the name for the kernel: "..\0x/escaped" is "../escaped" to openat, though no
  // component of it compares equal to "..". Found by the archive fuzzer.
  const std::string escaped = "tern-archive-nul-" + std::to_string(getpid());
  EXPECT_FALSE(UnpackDirectory(entry(std::string("..\0x/", 5) + escaped), dir));
  EXPECT_FALSE(fs::exists(fs::path(dir).parent_path() / escaped));
  fs::remove(fs::path(dir).parent_path() / escaped);
  fs::remove_all(dir);
}

// A job directory is its user's: `ln -s /etc/shadow x` there must travel as a symlink, not as
// the shadow file read by root (issue 14, item 2).
TEST(ArchiveTest, SymlinksTravelAsSymlinks) {
  const fs::path root =
      fs::temp_directory_path() / ("tern-archive-links-" + std::to_string(getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "in");
  fs::create_directories(root / "elsewhere");
  std::ofstream(root / "secret") << "root only";
  std::ofstream(root / "elsewhere" / "f") << "not in the job";
  std::ofstream(root / "in" / "real") << "data";
  fs::create_symlink(root / "secret", root / "in" / "stdout");
  fs::create_symlink("real", root / "in" / "relative");
  fs::create_directory_symlink(root / "elsewhere", root / "in" / "dirlink");
  auto packed = PackDirectory((root / "in").string(), {}, 1 << 20);
  ASSERT_TRUE(packed) << packed.error().message;
  EXPECT_EQ(packed->find("root only"), std::string::npos) << "packed the symlink's target";
  EXPECT_EQ(packed->find("not in the job"), std::string::npos) << "followed a directory link";
  auto written = UnpackDirectory(*packed, (root / "out").string());
  ASSERT_TRUE(written) << written.error().message;
  EXPECT_EQ(*written, 4u);
  ASSERT_TRUE(fs::is_symlink(root / "out" / "stdout"));
  EXPECT_EQ(fs::read_symlink(root / "out" / "stdout"), root / "secret");
  EXPECT_EQ(fs::read_symlink(root / "out" / "relative"), "real");
  EXPECT_EQ(fs::read_symlink(root / "out" / "dirlink"), root / "elsewhere");
  EXPECT_EQ(Read(root / "out" / "real"), "data");
  // Unpacking again over what it made replaces the links, never writes through them.
  ASSERT_TRUE(UnpackDirectory(*packed, (root / "out").string()));
  EXPECT_EQ(Read(root / "secret"), "root only");
  fs::remove_all(root);
}

// The destination directory may already exist and hold what the job's user left there: a
// symlink in the way of a file or of a directory is refused, nothing is written or chowned
// through it.
TEST(ArchiveTest, UnpackingRefusesASymlinkInTheWay) {
  const fs::path root =
      fs::temp_directory_path() / ("tern-archive-inway-" + std::to_string(getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "in" / "sub");
  std::ofstream(root / "in" / "stdout") << "job output";
  std::ofstream(root / "in" / "sub" / "f") << "nested";
  std::ofstream(root / "victim") << "untouched";
  fs::create_directories(root / "victimdir");
  auto packed = PackDirectory((root / "in").string(), {}, 1 << 20);
  ASSERT_TRUE(packed) << packed.error().message;

  fs::create_directories(root / "out1");
  fs::create_symlink(root / "victim", root / "out1" / "stdout");
  auto first = UnpackDirectory(*packed, (root / "out1").string(), 65534, 65534);
  ASSERT_FALSE(first) << "wrote through a symlink";
  EXPECT_NE(first.error().message.find("stdout"), std::string::npos) << first.error().message;
  EXPECT_EQ(Read(root / "victim"), "untouched");
  struct stat info {};
  ASSERT_EQ(::stat((root / "victim").c_str(), &info), 0);
  EXPECT_EQ(info.st_uid, geteuid()) << "chowned through a symlink";

  fs::create_directories(root / "out2");
  fs::create_directory_symlink(root / "victimdir", root / "out2" / "sub");
  EXPECT_FALSE(UnpackDirectory(*packed, (root / "out2").string()));
  EXPECT_FALSE(fs::exists(root / "victimdir" / "f")) << "wrote through a directory symlink";

  fs::create_directory_symlink(root / "victimdir", root / "out3");
  EXPECT_FALSE(UnpackDirectory(*packed, (root / "out3").string()));
  EXPECT_FALSE(fs::exists(root / "victimdir" / "stdout"));

  fs::create_directories(root / "out4");
  ASSERT_EQ(::mkfifo((root / "out4" / "stdout").c_str(), 0666), 0);
  EXPECT_FALSE(UnpackDirectory(*packed, (root / "out4").string())) << "a FIFO in the way";
  fs::remove_all(root);
}

}  // namespace
}  // namespace tern::migrate
