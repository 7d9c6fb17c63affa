#include <tern/remove_tree.hpp>

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "tern/migrate/archive.hpp"
#include "tern/migrate/fresh_directory.hpp"

namespace tern::migrate {
namespace {

namespace fs = std::filesystem;

class RemoveTreeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("tern-rm-" + std::to_string(getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_ / "outside");
    std::ofstream(root_ / "outside" / "passwd") << "keep me";
  }
  void TearDown() override { fs::remove_all(root_); }
  fs::path root_;
};

// A job user plants symlinks to a directory and a file elsewhere before the agent removes the
// job directory: the links go, what they point to stays.
TEST_F(RemoveTreeTest, RemovesLinksAsLinks) {
  const fs::path job = root_ / "job";
  fs::create_directories(job / "a" / "b");
  std::ofstream(job / "a" / "b" / "file") << "x";
  std::ofstream(job / "stdout") << "out";
  fs::create_directory_symlink(root_ / "outside", job / "etc");
  fs::create_directory_symlink(root_ / "outside", job / "a" / "deep");
  fs::create_symlink(root_ / "outside" / "passwd", job / "a" / "passwd");
  ASSERT_TRUE(RemoveTreeNoFollow(job.string()));
  EXPECT_FALSE(fs::exists(fs::symlink_status(job)));
  EXPECT_TRUE(fs::exists(root_ / "outside" / "passwd"));
  std::ifstream kept(root_ / "outside" / "passwd");
  std::string text;
  std::getline(kept, text);
  EXPECT_EQ(text, "keep me");
}

TEST_F(RemoveTreeTest, ASymlinkAsTheTreeItselfIsRemovedNotFollowed) {
  const fs::path link = root_ / "job";
  fs::create_directory_symlink(root_ / "outside", link);
  ASSERT_TRUE(RemoveTreeNoFollow(link.string()));
  EXPECT_FALSE(fs::exists(fs::symlink_status(link)));
  EXPECT_TRUE(fs::exists(root_ / "outside" / "passwd"));
}

TEST_F(RemoveTreeTest, MissingIsFineAndTheRootIsRefused) {
  EXPECT_TRUE(RemoveTreeNoFollow((root_ / "nothing").string()));
  EXPECT_FALSE(RemoveTreeNoFollow("/"));
  EXPECT_FALSE(RemoveTreeNoFollow(""));
}

// An existing job directory holding a symlink where the archive has a file: unpacking into a
// fresh directory leaves the link's target alone and replaces the whole directory.
TEST_F(RemoveTreeTest, UnpackingGoesIntoAFreshDirectory) {
  const fs::path source = root_ / "source";
  fs::create_directories(source);
  std::ofstream(source / "stdout") << "from the source";
  auto archive = PackDirectory(source.string(), {}, 1 << 20);
  ASSERT_TRUE(archive) << archive.error().message;
  const fs::path job = root_ / "jobs" / "n.1";
  fs::create_directories(job);
  fs::create_symlink(root_ / "outside" / "passwd", job / "stdout");
  std::ofstream(job / "leftover") << "old";
  auto unpacked = UnpackIntoFreshDirectory(*archive, job.string(), getuid(), getgid());
  ASSERT_TRUE(unpacked) << unpacked.error().message;
  EXPECT_FALSE(fs::is_symlink(job / "stdout"));
  std::ifstream out(job / "stdout");
  std::string text;
  std::getline(out, text);
  EXPECT_EQ(text, "from the source");
  EXPECT_FALSE(fs::exists(job / "leftover"));
  std::ifstream kept(root_ / "outside" / "passwd");
  std::getline(kept, text);
  EXPECT_EQ(text, "keep me");
  // The launcher's 0700, which CRIU checks the restored working directory against.
  EXPECT_EQ(fs::status(job).permissions() & fs::perms::all, fs::perms::owner_all);
  // Nothing of the fresh directory is left beside it.
  int entries = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(root_ / "jobs")) ++entries;
  EXPECT_EQ(entries, 1);
}

}  // namespace
}  // namespace tern::migrate
