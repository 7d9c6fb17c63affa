// ParkedCriu with a stand-in for criu: a shell that reads inventory.img (a FIFO until released)
// and reports on its status fd, as criu does.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "tern/migrate/criu.hpp"

namespace tern::migrate {
namespace {
namespace fs = std::filesystem;

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("tern-parked-" + std::to_string(getpid()));
  TempDir() {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::string Read(const fs::path& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

TEST(ParkedCriuTest, WaitsForTheInventoryThenGoesOn) {
  TempDir dir;
  const std::string script = "cat \"$0/inventory.img\" > \"$0/seen\" && printf x >&9";
  auto parked = ParkedCriu::Start({"sh", "-c", script, dir.path.string()}, dir.path.string(),
                                  (dir.path / "out").string(), {}, 9);
  ASSERT_TRUE(parked) << parked.error().message;
  EXPECT_TRUE(parked->parked());
  EXPECT_TRUE(parked->process().Running()) << "it waits for its inventory";
  ASSERT_TRUE(parked->Release("the inventory"));
  ASSERT_TRUE(parked->AwaitStatus(std::chrono::seconds(10)));
  EXPECT_EQ(parked->process().Wait(std::chrono::seconds(10)), std::optional<int>(0));
  EXPECT_EQ(Read(dir.path / "seen"), "the inventory");
}

TEST(ParkedCriuTest, TwoParkedProcessesEachGetTheirOwnFifo) {
  TempDir dir;
  const std::string script = "cat \"$0/inventory.img\" > \"$0/$1\"";
  auto first = ParkedCriu::Start({"sh", "-c", script, dir.path.string(), "first"},
                                 dir.path.string(), (dir.path / "out").string());
  ASSERT_TRUE(first) << first.error().message;
  auto second = ParkedCriu::Start({"sh", "-c", script, dir.path.string(), "second"},
                                  dir.path.string(), (dir.path / "out").string());
  ASSERT_TRUE(second) << second.error().message;
  ASSERT_TRUE(second->Release("2"));
  ASSERT_TRUE(first->Release("1"));
  EXPECT_EQ(first->process().Wait(std::chrono::seconds(10)), std::optional<int>(0));
  EXPECT_EQ(second->process().Wait(std::chrono::seconds(10)), std::optional<int>(0));
  EXPECT_EQ(Read(dir.path / "first"), "1");
  EXPECT_EQ(Read(dir.path / "second"), "2");
}

TEST(ParkedCriuTest, AReleasedInventoryIsARealFileForLaterReaders) {
  TempDir dir;
  // Reads its inventory, then opens it again (criu may): the second read must not block on a
  // FIFO nor take bytes meant for anyone else.
  const std::string script =
      "cat \"$0/inventory.img\" > \"$0/first\" && printf x >&9 && "
      "cat \"$0/inventory.img\" > \"$0/again\"";
  auto parked = ParkedCriu::Start({"sh", "-c", script, dir.path.string()}, dir.path.string(),
                                  (dir.path / "out").string(), {}, 9);
  ASSERT_TRUE(parked) << parked.error().message;
  ASSERT_TRUE(parked->Release("inv"));
  EXPECT_TRUE(fs::is_regular_file(dir.path / "inventory.img"));
  ASSERT_TRUE(parked->AwaitStatus(std::chrono::seconds(10)));
  EXPECT_EQ(parked->process().Wait(std::chrono::seconds(10)), std::optional<int>(0));
  EXPECT_EQ(Read(dir.path / "first"), "inv");
  EXPECT_EQ(Read(dir.path / "again"), "inv");
}

TEST(ParkedCriuTest, LosingTheWriterEndsTheWaitWithEndOfFile) {
  TempDir dir;
  // Like criu, the stand-in fails on an empty inventory.
  const std::string script = "test -n \"$(cat \"$0/inventory.img\")\"";
  auto parked = ParkedCriu::Start({"sh", "-c", script, dir.path.string()}, dir.path.string(),
                                  (dir.path / "out").string(), {}, 9);
  ASSERT_TRUE(parked) << parked.error().message;
  ParkedCriu dropped = std::move(*parked);
  ASSERT_TRUE(dropped.Release(""));
  EXPECT_FALSE(dropped.AwaitStatus(std::chrono::seconds(10))) << "it ended without its status";
  EXPECT_EQ(dropped.process().Wait(std::chrono::seconds(10)), std::optional<int>(1));
}

TEST(ParkedCriuTest, AProgramThatNeverReadsItsImagesIsReported) {
  TempDir dir;
  auto parked = ParkedCriu::Start({"true"}, dir.path.string(), (dir.path / "out").string());
  EXPECT_FALSE(parked);
}

}  // namespace
}  // namespace tern::migrate
