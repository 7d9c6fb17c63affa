// WriteFileAtomically (the one helper for files the agent must not lose) and the job store's
// file modes.
#include "tern/jobs/job_store.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace tern::jobs {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const fs::path& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

mode_t ModeOf(const fs::path& path) {
  struct stat info {};
  EXPECT_EQ(::lstat(path.c_str(), &info), 0) << path;
  return info.st_mode & 07777;
}

class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("tern-store-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path dir_;
};

TEST_F(AtomicFileTest, WriteFileAtomicallyReplacesTheFilePrivatelyAndLeavesNoTemporary) {
  const fs::path path = dir_ / "record.json";
  ASSERT_TRUE(WriteFileAtomically(path.string(), "first\n"));
  ASSERT_TRUE(WriteFileAtomically(path.string(), "second\n"));
  EXPECT_EQ(ReadFile(path), "second\n");
  EXPECT_EQ(ModeOf(path), 0600u) << "records are root's alone unless asked otherwise";
  EXPECT_EQ(Entries(), std::vector<std::string>{"record.json"});
  ASSERT_TRUE(WriteFileAtomically(path.string(), "third\n", 0644));
  EXPECT_EQ(ModeOf(path), 0644u);
}

TEST_F(AtomicFileTest, WriteFileAtomicallyIsNotRedirectedOrBlockedByWhatSitsAtATemporaryName) {
  // The old helper wrote through "<path>.tmp": a symlink there redirected root's write, a
  // directory there made every later save fail.
  const fs::path victim = dir_ / "victim";
  std::ofstream(victim) << "untouched";
  const fs::path path = dir_ / "status";
  fs::create_symlink(victim, dir_ / "status.tmp");
  ASSERT_TRUE(WriteFileAtomically(path.string(), "new"));
  EXPECT_EQ(ReadFile(victim), "untouched");
  EXPECT_EQ(ReadFile(path), "new");
  fs::remove(dir_ / "status.tmp");
  fs::create_directory(dir_ / "status.tmp");
  EXPECT_TRUE(WriteFileAtomically(path.string(), "newer"));
  EXPECT_EQ(ReadFile(path), "newer");
}

TEST_F(AtomicFileTest, WriteFileAtomicallyFailsClearlyAndLeavesTheOldContent) {
  const fs::path path = dir_ / "kept";
  ASSERT_TRUE(WriteFileAtomically(path.string(), "old"));
  // A directory where the file should go: the rename fails, the temporary file is removed.
  const fs::path blocked = dir_ / "blocked";
  fs::create_directories(blocked / "inside");
  auto failed = WriteFileAtomically(blocked.string(), "x");
  ASSERT_FALSE(failed);
  EXPECT_NE(failed.error().message.find("cannot rename"), std::string::npos)
      << failed.error().message;
  EXPECT_EQ(Entries(), (std::vector<std::string>{"blocked", "kept"}));
  EXPECT_FALSE(WriteFileAtomically((dir_ / "missing" / "f").string(), "x"));
  EXPECT_EQ(ReadFile(path), "old");
}

TEST_F(AtomicFileTest, RecordsArePrivateEvenInADirectoryAnOlderAgentMadeOpen) {
  fs::create_directories(dir_ / "records");
  ::chmod((dir_ / "records").c_str(), 0755);
  JobStore store(dir_.string(), (dir_ / "jobs").string(), "n1");
  JobRecord record;
  record.id = "n1.1";
  record.name = "x";
  record.argv = {"true"};
  record.env = {{"SECRET", "s3cret"}};
  ASSERT_TRUE(store.Save(record));
  EXPECT_EQ(ModeOf(dir_ / "records"), 0700u);
  EXPECT_EQ(ModeOf(dir_ / "records" / "n1.1.json"), 0600u);
  ASSERT_EQ(store.LoadAll().size(), 1u);
}

}  // namespace
}  // namespace tern::jobs
