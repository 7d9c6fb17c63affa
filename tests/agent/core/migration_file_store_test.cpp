// MigrationFileStore: what the migration machines persist, as files a crash leaves whole.
#include "tern/agent/migration_file_store.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace tern::agent {
namespace {

namespace fs = std::filesystem;

constexpr char kId[] = "node1.7-0badc0de";

class MigrationFileStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/tern-migration-store-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    root_ = pattern;
    dir_ = root_ + "/migrations";  // made by the first Save
  }
  void TearDown() override { fs::remove_all(root_); }

  std::string root_, dir_;
};

TEST_F(MigrationFileStoreTest, ASavedRecordReadsBackAfterARestartAndForgetRemovesIt) {
  migrate::SourceRecord committed{kId,
                                  "node1.7",
                                  "node2",
                                  migrate::MoveMode::kPostCopy,
                                  migrate::SourceStage::kCommitted,
                                  std::string("IPC\0state\n", 10)};
  {
    MigrationFileStore store(dir_);
    ASSERT_TRUE(store.Save(committed).has_value());
  }
  MigrationFileStore restarted(dir_);
  auto loaded = restarted.LoadAll();
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(std::get<migrate::SourceRecord>(loaded[0]), committed);
  // The directory and the record are root's alone; no temporary file is left beside it.
  struct stat info {};
  ASSERT_EQ(::stat((dir_ + "/" + kId).c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0700u);
  ASSERT_EQ(::stat((dir_ + "/" + kId + "/record").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir_ + "/" + kId)) {
    ++files;
    EXPECT_EQ(entry.path().filename(), "record");
  }
  EXPECT_EQ(files, 1);

  // A newer stage replaces the record whole.
  migrate::DestinationRecord restored{kId,     R"({"id":"node1.7"})",
                                      "node1", migrate::MoveMode::kPreCopy,
                                      true,    migrate::DestinationStage::kRestored,
                                      4242};
  ASSERT_TRUE(restarted.Save(restored).has_value());
  auto again = restarted.Load(kId);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(std::get<migrate::DestinationRecord>(*again), restored);

  restarted.Forget(kId);
  EXPECT_FALSE(restarted.Load(kId).has_value());
  EXPECT_TRUE(restarted.LoadAll().empty());
}

TEST_F(MigrationFileStoreTest, BadIdsAndUnreadableRecordsAreRefusedNotTrusted) {
  MigrationFileStore store(dir_);
  migrate::SourceRecord bad{"../../etc", "x", "node2"};
  EXPECT_FALSE(store.Save(bad).has_value()) << "an id names a directory: only its shape passes";
  EXPECT_FALSE(fs::exists(root_ + "/etc"));

  ASSERT_TRUE(store.Save(migrate::SourceRecord{kId, "node1.7", "node2"}).has_value());
  // Cut short (a disk that lied), and one that names another move: neither is believed.
  const std::string other = "node1.8-00000001";
  fs::create_directories(dir_ + "/" + other);
  std::ofstream(dir_ + "/" + other + "/record") << R"({"side":"source","id":"node1.7-0badc0de")";
  const std::string third = "node1.9-00000002";
  fs::create_directories(dir_ + "/" + third);
  fs::copy_file(dir_ + "/" + kId + "/record", dir_ + "/" + third + "/record");
  fs::create_directories(dir_ + "/not-a-move");
  const auto loaded = store.LoadAll();
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(std::get<migrate::SourceRecord>(loaded[0]).id, kId);
  EXPECT_FALSE(store.Load(other).has_value());
  EXPECT_FALSE(store.Load(third).has_value());
}

}  // namespace
}  // namespace tern::agent
