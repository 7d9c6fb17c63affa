// CriuLogErrors: what a failed CRIU run's log says went wrong, the cause included.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "tern/migrate/criu.hpp"

namespace tern::migrate {
namespace {
namespace fs = std::filesystem;

class CriuLogTest : public ::testing::Test {
 protected:
  fs::path log = fs::temp_directory_path() / ("tern-criu-log-" + std::to_string(getpid()));
  void Write(const std::string& text) { std::ofstream(log) << text; }
  void TearDown() override { fs::remove(log); }
};

// A job holding a file lock (SQLite inside a transaction): the cause comes before CRIU's last
// line, and the agent tries such a dump again only if it reads the cause.
TEST_F(CriuLogTest, KeepsTheCauseBeforeDumpingFailed) {
  Write(
      "(00.012) Warn  (criu/kerndat.c:1103): Can't set RLIMIT_NOFILE: Operation not permitted\n"
      "(00.051) Seizing task 812\n"
      "(00.086) Error (criu/file-lock.c:176): Some file locks are hold by dumping tasks! You can "
      "try --file-locks to dump them.\n"
      "(00.087) Unlock network\n"
      "(00.099) Error (criu/cr-dump.c:1975): Dumping FAILED.\n");
  const std::string errors = CriuLogErrors(log.string(), "none");
  EXPECT_NE(errors.find("Some file locks are hold by dumping tasks"), std::string::npos) << errors;
  EXPECT_NE(errors.find("Dumping FAILED"), std::string::npos) << errors;
  EXPECT_EQ(errors.find("RLIMIT_NOFILE"), std::string::npos) << "a harmless warning, every run";
}

TEST_F(CriuLogTest, KeepsTheLastThreeErrors) {
  Write("Error one\nError two\nError three\nError four\n");
  EXPECT_EQ(CriuLogErrors(log.string(), "none"), "Error two | Error three | Error four");
}

TEST_F(CriuLogTest, FallsBackWhenTheLogSaysNothingOrIsMissing) {
  Write("(00.001) Dumping finished successfully\n");
  EXPECT_EQ(CriuLogErrors(log.string(), "exit code 1"), "exit code 1");
  EXPECT_EQ(CriuLogErrors((log.string() + ".missing"), "no log"), "no log");
}

}  // namespace
}  // namespace tern::migrate
