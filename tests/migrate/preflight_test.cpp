#include "tern/migrate/preflight.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace tern::migrate {
namespace {

TEST(PreflightTest, ClassifiesWhatAJobHoldsOpen) {
  const std::string dir = "/var/lib/tern/jobs/n.1";
  EXPECT_EQ(ClassifyOpenFile("/dev/null", dir), OpenFileKind::kFine);
  EXPECT_EQ(ClassifyOpenFile("pipe:[123]", dir), OpenFileKind::kFine);
  EXPECT_EQ(ClassifyOpenFile("anon_inode:[eventfd]", dir), OpenFileKind::kFine);
  EXPECT_EQ(ClassifyOpenFile("/dev/pts/3", dir), OpenFileKind::kTerminal);
  EXPECT_EQ(ClassifyOpenFile("/dev/tty", dir), OpenFileKind::kTerminal);
  EXPECT_EQ(ClassifyOpenFile("socket:[99]", dir), OpenFileKind::kSocket);
  EXPECT_EQ(ClassifyOpenFile("/dev/sda", dir), OpenFileKind::kDevice);
  EXPECT_EQ(ClassifyOpenFile(dir + "/stdout", dir), OpenFileKind::kInsideJob);
  EXPECT_EQ(ClassifyOpenFile("/var/lib/tern/jobs/n.10/stdout", dir), OpenFileKind::kOutsideJob)
      << "a sibling job's directory is not ours";
  EXPECT_EQ(ClassifyOpenFile("/etc/hosts", dir), OpenFileKind::kOutsideJob);
}

TEST(PreflightTest, ComparesFilesAtTheDestination) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("tern-pf-" + std::to_string(getpid()))).string();
  std::ofstream(path) << "12345";
  struct stat info {};
  ASSERT_EQ(::stat(path.c_str(), &info), 0);
  OutsideFile same{path, 5, static_cast<std::int64_t>(info.st_mtime)};
  EXPECT_TRUE(CompareFiles({same}, "node2").empty());
  OutsideFile bigger{path, 6, same.mtime};
  auto problems = CompareFiles({bigger}, "node2");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("differs"), std::string::npos);
  OutsideFile missing{path + ".gone", 1, 0};
  problems = CompareFiles({missing}, "node2");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("no such file"), std::string::npos);
  std::filesystem::remove(path);
}

TEST(PreflightTest, ScanOfAVanishedJobSaysSo) {
  auto scan = ScanJob(999999, "/nonexistent");
  ASSERT_FALSE(scan.blockers.empty());
  EXPECT_NE(scan.blockers[0].find("no running process"), std::string::npos);
}

}  // namespace
}  // namespace tern::migrate
